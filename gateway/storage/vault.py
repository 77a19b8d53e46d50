"""Encryption of face templates at rest.

Two levels of keys: a master key (32 bytes, from ``CONSENTRY_MASTER_KEY`` as base64, or a key
file created on first run with mode 0600) wraps one random data key per identity. Templates are
encrypted under their identity's data key with AES-GCM, the identity id as associated data so a
ciphertext cannot be moved to another identity. Erasing an identity deletes its wrapped data key:
every template of it becomes unreadable even if a backup still holds the ciphertexts.

Other per-identity blobs (kept enrollment photos, LoRA adapter files) are sealed under the same
data key with ``seal_bytes``: their associated data is the identity id, a NUL and a context
string (the adapter id, the photo's role and hash), so a blob cannot be replayed as another
identity's, as another adapter's, or as a template (whose associated data has no NUL).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError

NONCE = 12
TAG = 16


def load_master_key(keys_dir: Path, env: str = "CONSENTRY_MASTER_KEY") -> bytes:
    """The master key from the environment, else ``keys_dir/master.key`` (created if absent)."""
    if raw := os.environ.get(env):
        try:
            key = base64.b64decode(raw, validate=True)
        except binascii.Error as exc:
            raise ConfigurationError(f"{env} is not valid base64", code=codes.KEYS_MASTER_INVALID) from exc
        if len(key) != 32:
            raise ConfigurationError(f"{env} must decode to 32 bytes", code=codes.KEYS_MASTER_INVALID)
        return key
    path = keys_dir / "master.key"
    if path.exists():
        key = base64.b64decode(path.read_bytes())
        if len(key) != 32:
            raise ConfigurationError(f"{path} does not hold a 32-byte key", code=codes.KEYS_MASTER_INVALID)
        return key
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    # O_EXCL: two processes starting at once must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_master_key(keys_dir, env)
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(key))
    return key


class TemplateVault:
    """Wraps per-identity data keys and seals/opens templates."""

    def __init__(self, master_key: bytes) -> None:
        self._master = AESGCM(master_key)

    def new_data_key(self, identity_id: str) -> bytes:
        """A fresh data key for ``identity_id``, returned wrapped (what the database stores)."""
        nonce = secrets.token_bytes(NONCE)
        return nonce + self._master.encrypt(nonce, secrets.token_bytes(32), identity_id.encode())

    def _unwrap(self, identity_id: str, wrapped: bytes) -> AESGCM:
        try:
            key = self._master.decrypt(wrapped[:NONCE], wrapped[NONCE:], identity_id.encode())
        except InvalidTag as exc:
            raise ConfigurationError(
                "an identity's data key does not open with this master key", code=codes.KEYS_MASTER_MISMATCH
            ) from exc
        return AESGCM(key)

    def seal(self, identity_id: str, wrapped_key: bytes, template: np.ndarray) -> bytes:
        nonce = secrets.token_bytes(NONCE)
        data = np.asarray(template, dtype="<f4").tobytes()
        return nonce + self._unwrap(identity_id, wrapped_key).encrypt(nonce, data, identity_id.encode())

    def open(self, identity_id: str, wrapped_key: bytes, sealed: list[bytes]) -> np.ndarray:
        aes = self._unwrap(identity_id, wrapped_key)
        rows = [
            np.frombuffer(aes.decrypt(s[:NONCE], s[NONCE:], identity_id.encode()), dtype="<f4")
            for s in sealed
        ]
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    @staticmethod
    def _aad(identity_id: str, context: str) -> bytes:
        return identity_id.encode() + b"\x00" + context.encode()

    def seal_bytes(self, identity_id: str, wrapped_key: bytes, data: bytes, context: str) -> bytes:
        """``nonce || AES-GCM(data)`` under the identity's data key, bound to ``context``."""
        nonce = secrets.token_bytes(NONCE)
        aes = self._unwrap(identity_id, wrapped_key)
        return nonce + aes.encrypt(nonce, data, self._aad(identity_id, context))

    def open_bytes(self, identity_id: str, wrapped_key: bytes, sealed: bytes, context: str) -> bytes:
        """The plaintext of ``seal_bytes``; raises ``InvalidTag`` for a wrong identity, context or
        a damaged blob (and ConfigurationError when the data key does not open)."""
        if len(sealed) < NONCE + TAG:
            raise InvalidTag()
        aes = self._unwrap(identity_id, wrapped_key)
        return aes.decrypt(sealed[:NONCE], sealed[NONCE:], self._aad(identity_id, context))
