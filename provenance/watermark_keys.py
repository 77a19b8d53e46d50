"""The deployment's secret watermark keys: whoever holds one can read and forge marks.

A mark is only evidence if nobody outside the deployment can make it, so the key is a per-
deployment secret, never a constant in the source. Keys are only ever added: released images
carry marks made with older keys, and dropping one would make them unverifiable. Rotation adds
a new *current* key (used for embedding) and keeps the rest for decoding.

On disk, under ``keys_dir/watermark/`` (folder 0700, files 0600, every write atomic):

* ``wmk_<8 hex>.key``: one key, 64 hex digits. The id is a fingerprint of the secret, so a file
  whose content no longer matches its name is reported as corrupt rather than silently used.
* ``keyring``: the key ids in use, newest (current) first. A key file not listed there is
  ignored: a rotation that died before updating the list never embedded with its key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError
from consentry.provenance.secret_files import exclusive_lock, write_atomic

__all__ = ["KEYRING_DIR", "SECRET_BYTES", "WatermarkKey", "WatermarkKeyring", "key_id_for"]

KEYRING_DIR = "watermark"
INDEX_FILE = "keyring"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 16  # in-memory keys (tests, benchmarks) may be shorter than 32, never guessable
_ID = re.compile(r"wmk_[0-9a-f]{8}")
_INDEX_HEADER = "# newest (current) first; never delete a key: its images would stop verifying\n"


def key_id_for(secret: bytes) -> str:
    """The public name of a key: a short fingerprint that reveals nothing usable of the secret."""
    return "wmk_" + hashlib.sha256(b"consentry.watermark.key-id:" + secret).digest()[:4].hex()


def _invalid(detail: str) -> ConfigurationError:
    return ConfigurationError(detail, code=codes.KEYS_WATERMARK_INVALID)


def _unusable(path: Path, exc: OSError) -> ConfigurationError:
    return ConfigurationError(
        f"cannot use watermark keys at {path}: {exc.strerror or exc}", code=codes.KEYS_WATERMARK_UNREADABLE
    )


@dataclass(frozen=True, slots=True)
class WatermarkKey:
    """One watermark key; the secret stays out of the repr (and so out of logs)."""

    id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.id or not isinstance(self.secret, bytes) or len(self.secret) < MIN_SECRET_BYTES:
            raise _invalid(f"a watermark key needs an id and a secret of at least {MIN_SECRET_BYTES} bytes")

    @classmethod
    def from_secret(cls, secret: bytes) -> WatermarkKey:
        return cls(key_id_for(secret), secret)

    @classmethod
    def generate(cls) -> WatermarkKey:
        return cls.from_secret(secrets.token_bytes(SECRET_BYTES))


class WatermarkKeyring:
    """The keys a deployment decodes with, current (the one it embeds with) first."""

    def __init__(self, keys: Sequence[WatermarkKey]) -> None:
        ids = [k.id for k in keys]
        if not ids or len(set(ids)) != len(ids):
            raise _invalid("a watermark keyring needs at least one key and distinct key ids")
        self._keys = tuple(keys)

    @classmethod
    def from_secrets(cls, current: bytes, *older: bytes) -> WatermarkKeyring:
        """An in-memory ring (tests, benchmarks): ``current`` embeds, all of them decode."""
        return cls([WatermarkKey.from_secret(s) for s in (current, *older)])

    @property
    def current(self) -> WatermarkKey:
        return self._keys[0]

    @property
    def keys(self) -> tuple[WatermarkKey, ...]:
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @staticmethod
    def exists(keys_dir: Path) -> bool:
        """Whether ``keys_dir`` holds a ring, or what is left of one (never create over that)."""
        folder = Path(keys_dir) / KEYRING_DIR
        if folder.exists() and not folder.is_dir():
            raise _invalid(f"{folder} is not a folder")
        try:
            return folder.is_dir() and any(p.name != ".lock" for p in folder.iterdir())
        except OSError as exc:
            raise _unusable(folder, exc) from exc

    @classmethod
    def load(cls, keys_dir: Path) -> WatermarkKeyring:
        """The deployment's ring; ``keys.watermark_missing`` when there is none yet."""
        folder = Path(keys_dir) / KEYRING_DIR
        if not cls.exists(keys_dir):
            raise ConfigurationError(
                f"no watermark key in {folder}: run `consentry keys init` to create one",
                code=codes.KEYS_WATERMARK_MISSING,
            )
        index = folder / INDEX_FILE
        if not index.is_file():
            raise _invalid(f"{index} is missing: restore {folder} from a backup (new keys read no old marks)")
        ids = [i for i in (line.strip() for line in _read(index).splitlines()) if i and i[0] != "#"]
        bad = [i[:20] for i in ids if not _ID.fullmatch(i)] or [i for i in ids if ids.count(i) > 1]
        if bad or not ids:
            raise _invalid(
                f"{index} is corrupt: want one distinct wmk_<8 hex> id a line, got {bad[:3] or 'none'}"
            )
        return cls([_load_key(folder, key_id) for key_id in ids])

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> WatermarkKeyring:
        """The deployment's ring, made with one fresh key if there is none.

        The first ring is built in a scratch folder and renamed into place, so a crash leaves
        either a complete ring or none, and of two concurrent callers the first rename wins.
        """
        keys_dir = Path(keys_dir)
        if cls.exists(keys_dir):
            return cls.load(keys_dir)
        scratch = keys_dir / f".{KEYRING_DIR}.{secrets.token_hex(4)}.tmp"
        try:
            keys_dir.mkdir(parents=True, exist_ok=True)
            scratch.mkdir(mode=0o700)
            key = WatermarkKey.generate()
            _store_key(scratch, key)
            write_atomic(scratch / INDEX_FILE, (_INDEX_HEADER + key.id + "\n").encode())
            with contextlib.suppress(OSError):  # a non-empty folder is there: another caller won
                os.rename(scratch, keys_dir / KEYRING_DIR)
        except OSError as exc:
            raise _unusable(keys_dir / KEYRING_DIR, exc) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return cls.load(keys_dir)

    @classmethod
    def rotate(cls, keys_dir: Path) -> WatermarkKeyring:
        """Add a new current key; every older key stays and still decodes."""
        folder = Path(keys_dir) / KEYRING_DIR
        cls.load(keys_dir)  # refuse to rotate a missing or corrupt ring
        try:
            with exclusive_lock(folder):
                ids = [k.id for k in cls.load(keys_dir).keys]  # re-read under the lock
                key = WatermarkKey.generate()
                _store_key(folder, key)
                write_atomic(folder / INDEX_FILE, (_INDEX_HEADER + "\n".join([key.id, *ids]) + "\n").encode())
        except OSError as exc:
            raise _unusable(folder, exc) from exc
        return cls.load(keys_dir)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        raise _invalid(f"{path} is corrupt: not text") from exc
    except OSError as exc:
        raise _unusable(path, exc) from exc


def _load_key(folder: Path, key_id: str) -> WatermarkKey:
    path = folder / f"{key_id}.key"
    if not path.is_file():
        raise _invalid(f"{path} is missing but listed in {INDEX_FILE}: restore it from a backup")
    try:
        secret = bytes.fromhex(_read(path).strip())
    except ValueError as exc:
        raise _invalid(f"{path} is corrupt: not hex") from exc
    if len(secret) != SECRET_BYTES or key_id_for(secret) != key_id:
        raise _invalid(f"{path} is corrupt: its content is not the {SECRET_BYTES}-byte key {key_id}")
    return WatermarkKey(key_id, secret)


def _store_key(folder: Path, key: WatermarkKey) -> None:
    path = folder / f"{key.id}.key"
    if path.exists():  # a 32-bit fingerprint collision: never overwrite a key
        raise _invalid(f"{path} already exists; try again")
    write_atomic(path, (key.secret.hex() + "\n").encode("ascii"))
