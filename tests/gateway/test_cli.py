"""The ``consentry`` command in-process: exit codes 0 / 2 / 3 and clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consentry.gateway.cli import main


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Path:
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONSENTRY_MODEL_DIR", str(tiny_model))
    monkeypatch.setenv("CONSENTRY_DEVICE", "cpu")
    monkeypatch.delenv("CONSENTRY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


def lfw(faces_dir: Path, person: str, n: int) -> str:
    return str(faces_dir / "lfw" / person / f"{person}_{n:04d}.jpg")


def test_keys_init_refuses_to_overwrite(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init"]) == 0
    assert (data_dir / "keys" / "ca.cert.pem").is_file()
    assert main(["keys", "init"]) == 2
    assert "keys.exist" in capsys.readouterr().err


def test_models_tiny_refuses_a_foreign_folder(tmp_path: Path, data_dir: Path, capsys) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["models", "tiny", str(foreign)]) == 2
    assert "model.dir_not_empty" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_enroll_grant_generate_verify_audit(data_dir: Path, faces_dir: Path, capsys) -> None:
    assert main(["keys", "init"]) == 0
    assert main(["principal", "add", "studio", "--role", "requester"]) == 0
    capsys.readouterr()
    assert main(["enroll", "--label", "A", *(lfw(faces_dir, "Tony_Blair", n) for n in (2, 3, 4, 5))]) == 0
    identity = json.loads(capsys.readouterr().out)["id"]
    assert (
        main(["grant", identity, "--principal", "studio", "--purpose", "portrait", "--attested-by", "me"])
        == 0
    )
    grant = json.loads(capsys.readouterr().out)["id"]

    ref = lfw(faces_dir, "Tony_Blair", 6)
    argv = [
        "generate",
        "--as",
        "studio",
        "--subject",
        identity,
        "--purpose",
        "portrait",
        "--prompt",
        "a portrait",
    ]
    assert main([*argv, "--reference", ref]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out
    released = Path(out.strip().splitlines()[-1].strip())
    assert released.is_file()

    assert main(["verify", str(released), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["c2pa"]["state"] == "Trusted" and report["record"] is not None

    # A reference of somebody else is refused (exit 3) and audited.
    assert main([*argv, "--reference", lfw(faces_dir, "Hugo_Chavez", 1)]) == 3
    assert "face.unknown" in capsys.readouterr().err
    assert main(["revoke", grant]) == 0
    assert main([*argv, "--reference", ref]) == 3
    assert "consent.revoked" in capsys.readouterr().err

    assert main(["audit", "verify", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    # principal added, enroll, grant, release, refusal, revoke, refusal
    assert chain["ok"] and chain["events"] == 7

    assert main(["audit", "export", "--identity", identity, "--decision", "consent.revoked"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["body"]["decision"] == "consent.revoked"
    assert "prompt" not in json.loads(line)["body"]  # prompts are stored as hashes by default
    out = data_dir.parent / "audit.csv"
    assert main(["audit", "export", "--format", "csv", "--since", "2000-01-01", "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].startswith("seq,ts,kind,decision") and len(rows) == 8
    assert main(["audit", "export", "--until", "2000-01-01"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["verify", "/nonexistent/file.png"], "input.file_unreadable"),
        (["enroll", "--label", "x", "README_MISSING.jpg"], "input.file_unreadable"),
        (
            ["generate", "--as", "nobody", "--subject", "idn_x", "--purpose", "portrait", "--prompt", "p"],
            "principal.not_found",
        ),
        (["revoke", "gnt_nope"], "grant.not_found"),
        (["erase", "idn_nope"], "identity.not_found"),
        (["audit", "export", "--since", "yesterday"], "input.time_invalid"),
        (["audit", "export", "--out", "/nonexistent/dir/x.csv"], "input.file_unwritable"),
        (["principal", "revoke-key", "key_nope"], "key.not_found"),
        (["enroll", "photo.jpg"], "input.invalid"),
        (["enroll", "--library", "/nonexistent", "--pick", "1"], "library.not_a_folder"),
        (
            [
                "grant",
                "idn_x",
                "--principal",
                "x",
                "--purpose",
                "portrait",
                "--attested-by",
                "me",
                "--expires",
                "soon",
            ],
            "input.time_invalid",
        ),
        (
            [
                "grant",
                "idn_x",
                "--principal",
                "x",
                "--purpose",
                "portrait",
                "--attested-by",
                "me",
                "--consent-text",
                "/no",
            ],
            "input.file_unreadable",
        ),
        (
            ["grant", "idn_nope", "--principal", "x", "--purpose", "portrait", "--attested-by", "me"],
            "principal.not_found",
        ),
    ],
)
def test_bad_input_exits_2_with_a_code(data_dir: Path, argv: list[str], code: str, capsys) -> None:
    assert main(argv) == 2
    assert code in capsys.readouterr().err


def test_bad_images_exit_2(data_dir: Path, faces_dir: Path, capsys) -> None:
    for name in ("truncated.jpg", "corrupted.png", "empty.png"):
        assert main(["verify", str(faces_dir / "invalid" / name)]) == 2
        assert "image." in capsys.readouterr().err
    assert main(["enroll", "--label", "x", str(faces_dir / "invalid" / "truncated.jpg")]) == 2


def test_unknown_command_and_bad_purpose_exit_2(data_dir: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["grant", "idn_x", "--principal", "p", "--purpose", "selfie", "--attested-by", "me"])
    assert exc.value.code == 2


def test_watermark_tools(data_dir: Path, faces_dir: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "photo.png"
    from PIL import Image

    Image.open(faces_dir / "lfw" / "Tony_Blair" / "Tony_Blair_0002.jpg").resize((512, 512)).save(src)
    out = tmp_path / "marked.png"
    assert main(["watermark", "embed", str(src), str(out), "--payload", "00112233aabbccdd"]) == 0
    capsys.readouterr()
    assert main(["watermark", "decode", str(out), "--json"]) == 0
    reading = json.loads(capsys.readouterr().out)
    assert (
        reading["found"] is True and reading["payload"] == "00112233aabbccdd" and reading["confidence"] > 0.5
    )
    assert main(["watermark", "decode", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "found": False,
        "payload": None,
        "confidence": 0.0,
        "key_id": None,
    }
    assert main(["watermark", "embed", str(src), str(out), "--payload", "xyz"]) == 2
    assert main(["watermark", "embed", str(src), str(tmp_path / "o.gif")]) == 2
    assert main(["watermark", "decode", str(faces_dir / "invalid" / "truncated.jpg")]) == 2


def test_generate_without_a_subject(data_dir: Path, faces_dir: Path, capsys) -> None:
    assert main(["keys", "init"]) == 0
    assert main(["principal", "add", "studio", "--role", "requester"]) == 0
    assert main(["enroll", "--label", "A", *(lfw(faces_dir, "Tony_Blair", n) for n in (2, 3, 4, 5))]) == 0
    capsys.readouterr()
    assert main(["generate", "--as", "studio", "--prompt", "a lake at dawn"]) == 0
    assert "released" in capsys.readouterr().out
    # An enrolled person's photo as a reference is refused even though no subject is named.
    argv = ["generate", "--as", "studio", "--prompt", "make him smile"]
    assert main([*argv, "--reference", lfw(faces_dir, "Tony_Blair", 6)]) == 3
    assert "face.protected_identity" in capsys.readouterr().err
    # A subject without a purpose is bad input: exit 2, nothing audited.
    assert main([*argv, "--subject", "idn_x"]) == 2
