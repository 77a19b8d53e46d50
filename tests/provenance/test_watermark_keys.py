"""The watermark keyring: per-deployment secrets on disk, rotated without orphaning old marks."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consentry.policies.errors import ConfigurationError
from consentry.provenance.watermark import Watermarker
from consentry.provenance.watermark_keys import (
    KEYRING_DIR,
    SECRET_BYTES,
    WatermarkKey,
    WatermarkKeyring,
    key_id_for,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _image(seed: int) -> Image.Image:
    """Smooth colour fields: a marked copy decodes under any key without the strength ladder."""
    small = np.random.default_rng(seed).integers(40, 216, (16, 16, 3))
    return Image.fromarray(np.uint8(small)).resize((256, 256), Image.Resampling.BICUBIC)


def _folder(keys_dir: Path) -> Path:
    return keys_dir / KEYRING_DIR


def test_load_without_a_keyring_tells_the_operator_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        WatermarkKeyring.load(tmp_path / "keys")
    assert info.value.code == "keys.watermark_missing"
    assert "consentry keys init" in info.value.detail
    with pytest.raises(ConfigurationError) as info:
        WatermarkKeyring.rotate(tmp_path / "keys")
    assert info.value.code == "keys.watermark_missing"


def test_load_or_create_makes_one_secret_key_and_then_reuses_it(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = WatermarkKeyring.load_or_create(keys_dir)
    key = ring.current
    assert len(ring) == 1 and ring.keys == (key,)
    assert key.id.startswith("wmk_") and len(key.id) == 12 and key.id == key_id_for(key.secret)
    assert len(key.secret) == SECRET_BYTES
    folder = _folder(keys_dir)
    assert _mode(folder) == 0o700
    assert _mode(folder / f"{key.id}.key") == 0o600
    assert _mode(folder / "keyring") == 0o600
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # atomic writes cleaned up
    assert not [p for p in keys_dir.iterdir() if p.name.endswith(".tmp")]
    assert WatermarkKeyring.load(keys_dir).keys == (key,)
    assert WatermarkKeyring.load_or_create(keys_dir).keys == (key,)  # never a second first key
    # Two deployments never share a key.
    assert WatermarkKeyring.load_or_create(tmp_path / "other").current.secret != key.secret


def test_the_secret_stays_out_of_reprs(tmp_path: Path) -> None:
    key = WatermarkKeyring.load_or_create(tmp_path).current
    assert key.secret.hex() not in repr(key) and key.id in repr(key)
    assert str(key.secret) not in repr(key)


def test_rotation_adds_a_current_key_and_old_marks_still_decode(tmp_path: Path) -> None:
    first = WatermarkKeyring.load_or_create(tmp_path)
    old_mark = Watermarker(first).embed(_image(1), b"old-mark")

    rotated = WatermarkKeyring.rotate(tmp_path)
    assert len(rotated) == 2 and rotated.keys[1] == first.current
    assert rotated.current != first.current
    assert _mode(_folder(tmp_path) / f"{rotated.current.id}.key") == 0o600
    assert WatermarkKeyring.load(tmp_path).keys == rotated.keys  # the order survives on disk

    wm = Watermarker(WatermarkKeyring.load(tmp_path))
    assert wm.current_key_id == rotated.current.id
    reading = wm.decode(old_mark)
    assert reading.found and reading.payload == b"old-mark" and reading.key_id == first.current.id
    new_mark = wm.embed(_image(2), b"new-mark")
    assert wm.decode(new_mark).key_id == rotated.current.id
    # The new key really is new: a gateway still holding only the old ring cannot read it.
    assert not Watermarker(first).decode(new_mark).found

    third = WatermarkKeyring.rotate(tmp_path)
    assert [k.id for k in third.keys[1:]] == [k.id for k in rotated.keys]


def test_a_rotation_that_died_before_listing_its_key_is_ignored(tmp_path: Path) -> None:
    ring = WatermarkKeyring.load_or_create(tmp_path)
    orphan = WatermarkKey.generate()
    (_folder(tmp_path) / f"{orphan.id}.key").write_text(orphan.secret.hex())
    assert WatermarkKeyring.load(tmp_path).keys == ring.keys


Corruption = Callable[[Path, str], object]  # what it returns is not used


def _write(name: str, text: str | bytes) -> Corruption:
    def corrupt(folder: Path, key_id: str) -> None:
        path = folder / name.format(id=key_id)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return corrupt


def _delete(name: str) -> Corruption:
    return lambda folder, key_id: (folder / name.format(id=key_id)).unlink()


CORRUPTIONS: dict[str, Corruption] = {
    "key not hex": _write("{id}.key", "this is not a key\n"),
    "key truncated": _write("{id}.key", "ab" * 16),
    "key not text": _write("{id}.key", b"\xff\xfe" * 32),
    "key replaced by another": _write("{id}.key", WatermarkKey.generate().secret.hex()),
    "key file missing": _delete("{id}.key"),
    "list empty": _write("keyring", "# nothing\n"),
    "list garbled": _write("keyring", "wmk_zz\n"),
    "list names a duplicate": lambda folder, key_id: (folder / "keyring").write_text(f"{key_id}\n{key_id}\n"),
    "list missing": _delete("keyring"),
}


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_a_corrupt_keyring_is_a_clear_configuration_error(tmp_path: Path, damage: str) -> None:
    key_id = WatermarkKeyring.load_or_create(tmp_path).current.id
    CORRUPTIONS[damage](_folder(tmp_path), key_id)
    for use in (WatermarkKeyring.load, WatermarkKeyring.load_or_create, WatermarkKeyring.rotate):
        with pytest.raises(ConfigurationError) as info:
            use(tmp_path)
        assert info.value.code == "keys.watermark_invalid", (damage, use)
        assert str(_folder(tmp_path)) in info.value.detail
    # Nothing was "repaired" by making a new key over the remains.
    assert not [p for p in _folder(tmp_path).glob("*.key") if p.stem != key_id]


def test_a_file_where_the_keyring_belongs_is_not_built_over(tmp_path: Path) -> None:
    (tmp_path / KEYRING_DIR).write_text("a file where the folder should be")
    for use in (WatermarkKeyring.load, WatermarkKeyring.load_or_create):
        with pytest.raises(ConfigurationError) as info:
            use(tmp_path)
        assert info.value.code == "keys.watermark_invalid"
    assert (tmp_path / KEYRING_DIR).read_text() == "a file where the folder should be"
    assert [p.name for p in tmp_path.iterdir()] == [KEYRING_DIR]


def test_an_unwritable_keys_dir_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(ConfigurationError) as info:
        WatermarkKeyring.load_or_create(tmp_path / "not-a-dir" / "keys")
    assert info.value.code == "keys.watermark_unreadable"


def test_in_memory_rings_need_real_secrets_and_distinct_keys() -> None:
    ring = WatermarkKeyring.from_secrets(b"current key, 24 bytes...", b"older key, also long enough")
    assert [k.id for k in ring.keys] == [
        key_id_for(b"current key, 24 bytes..."),
        key_id_for(ring.keys[1].secret),
    ]
    assert Watermarker(list(ring.keys)).current_key_id == ring.current.id  # keys work as well as a ring
    for bad in (lambda: WatermarkKeyring.from_secrets(b"short"), lambda: WatermarkKeyring([])):
        with pytest.raises(ConfigurationError) as info:
            bad()
        assert info.value.code == "keys.watermark_invalid"
    with pytest.raises(ConfigurationError):
        WatermarkKeyring.from_secrets(b"the same key twice", b"the same key twice")
