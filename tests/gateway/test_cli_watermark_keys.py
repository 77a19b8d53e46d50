"""``consentry keys init`` / ``keys rotate-watermark`` and the watermark tools use the
deployment's keyring: no default key, --force never replaces it, old marks decode after rotation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consentry.gateway.cli import main
from consentry.provenance.watermark import Watermarker
from consentry.provenance.watermark_keys import KEYRING_DIR, WatermarkKeyring


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CONSENTRY_CONFIG", raising=False)
    monkeypatch.delenv("CONSENTRY_KEYS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    small = np.random.default_rng(7).integers(40, 216, (16, 16, 3))
    path = tmp_path / "photo.png"
    Image.fromarray(np.uint8(small)).resize((256, 256), Image.Resampling.BICUBIC).save(path)
    return path


def _ring_files(keys_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((keys_dir / KEYRING_DIR).iterdir())}


def _decode(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["watermark", "decode", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_keys_init_creates_the_watermark_key_and_force_keeps_it(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_dir = data_dir / "keys"
    assert main(["keys", "init"]) == 0
    ring = WatermarkKeyring.load(keys_dir)
    assert f"watermark key {ring.current.id} created" in capsys.readouterr().out
    rings_before, chain_before = _ring_files(keys_dir), (keys_dir / "signing.chain.pem").read_bytes()

    assert main(["keys", "init"]) == 2  # signing keys exist: refused, as before
    assert "keys.exist" in capsys.readouterr().err

    assert main(["keys", "init", "--force"]) == 0
    out = capsys.readouterr().out
    assert (keys_dir / "signing.chain.pem").read_bytes() != chain_before  # signing keys replaced
    assert _ring_files(keys_dir) == rings_before  # the watermark keyring is not
    assert "watermark keys kept" in out and ring.current.id in out and "--force" in out


def test_keys_init_adds_a_watermark_key_to_a_deployment_that_has_only_signing_keys(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from consentry.provenance.keys import init_dev_keys

    keys_dir = data_dir / "keys"
    init_dev_keys(keys_dir)
    chain = (keys_dir / "signing.chain.pem").read_bytes()
    assert main(["keys", "init"]) == 0  # no --force needed, and the signing keys stay
    out = capsys.readouterr().out
    assert (keys_dir / "signing.chain.pem").read_bytes() == chain
    assert WatermarkKeyring.load(keys_dir).current.id in out and "kept" in out


def test_rotate_watermark_prints_the_new_key_and_old_marks_still_decode(
    data_dir: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init"]) == 0
    capsys.readouterr()
    first = WatermarkKeyring.load(data_dir / "keys").current.id
    old = tmp_path / "old.png"
    assert main(["watermark", "embed", str(photo), str(old), "--payload", "00112233deadbeef"]) == 0
    assert json.loads(capsys.readouterr().out)["key_id"] == first

    assert main(["keys", "rotate-watermark"]) == 0
    out = capsys.readouterr().out
    ring = WatermarkKeyring.load(data_dir / "keys")
    assert ring.current.id != first and [k.id for k in ring.keys] == [ring.current.id, first]
    assert f"current watermark key: {ring.current.id}" in out and "2 key(s) decode" in out

    reading = _decode(old, capsys)
    assert reading["found"] and reading["payload"] == "00112233deadbeef" and reading["key_id"] == first

    new = tmp_path / "new.png"
    assert main(["watermark", "embed", str(photo), str(new), "--payload", "0102030405060708"]) == 0
    assert json.loads(capsys.readouterr().out)["key_id"] == ring.current.id
    assert main(["watermark", "decode", str(new)]) == 0
    text = capsys.readouterr().out
    assert "payload 0102030405060708" in text and f"key {ring.current.id}" in text


def test_decode_reads_nothing_marked_with_another_key(
    data_dir: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init"]) == 0
    capsys.readouterr()
    foreign = tmp_path / "foreign.png"
    Watermarker.with_key(b"another deployment's key").embed(Image.open(photo), bytes(8)).save(foreign)
    assert _decode(foreign, capsys) == {"found": False, "payload": None, "confidence": 0.0, "key_id": None}
    assert main(["watermark", "decode", str(foreign)]) == 0
    assert "no watermark made with this deployment's keys" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["keys", "rotate-watermark"], ["watermark", "decode", "PHOTO"]],
)
def test_without_a_keyring_the_tools_say_to_run_keys_init(
    data_dir: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    argv = [str(photo) if a == "PHOTO" else str(tmp_path / "out.png") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "keys.watermark_missing" in err and "consentry keys init" in err
    assert not (tmp_path / "out.png").exists() and not (data_dir / "keys" / KEYRING_DIR).exists()


def test_a_corrupt_key_file_is_exit_2_with_its_code(
    data_dir: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init"]) == 0
    key_id = WatermarkKeyring.load(data_dir / "keys").current.id
    (data_dir / "keys" / KEYRING_DIR / f"{key_id}.key").write_text("garbage\n")
    capsys.readouterr()
    for argv in (
        ["watermark", "decode", str(photo)],
        ["keys", "rotate-watermark"],
        ["keys", "init", "--force"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "keys.watermark_invalid" in err and "Traceback" not in err


def test_embedding_on_a_fresh_deployment_creates_its_first_key(
    data_dir: Path, photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    assert main(["watermark", "embed", str(photo), str(out), "--payload", "00112233aabbccdd"]) == 0
    assert out.is_file() and len(WatermarkKeyring.load(data_dir / "keys")) == 1
