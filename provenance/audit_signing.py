"""Ed25519 signatures over points of the audit chain: periodic checkpoints and the current head.

A hash chain alone shows edits, deletions, swaps and insertions, but not a tail cut off after the
last event: the shortened chain is still a valid chain. So every append also re-signs the head
(sequence number and hash of the last event), and every N events a checkpoint is kept for good.
Whoever can write the database but not read the key cannot forge either; auditors verify with
the public key alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError

DOMAIN = b"consentry-audit-v1"
KEY_FILE = "audit.ed25519.pem"
PUBLIC_FILE = "audit.ed25519.pub.pem"


def message(seq: int, digest: str) -> bytes:
    return b"|".join([DOMAIN, str(seq).encode(), digest.encode()])


class AuditSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> AuditSigner:
        """The audit key under ``keys_dir`` (created with mode 0600 on first use)."""
        path = keys_dir / KEY_FILE
        if not path.exists():
            keys_dir.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return cls.load_or_create(keys_dir)  # another process created it first
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            public = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            (keys_dir / PUBLIC_FILE).write_bytes(public)
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, OSError) as exc:
            raise ConfigurationError(
                f"cannot read the audit key {path}: {exc}", code=codes.KEYS_AUDIT_INVALID
            ) from exc
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ConfigurationError(f"{path} is not an Ed25519 key", code=codes.KEYS_AUDIT_INVALID)
        return cls(loaded)

    def sign(self, seq: int, digest: str) -> bytes:
        return self._key.sign(message(seq, digest))


def signature_ok(public_key: Ed25519PublicKey, seq: int, digest: str, signature: bytes) -> bool:
    try:
        public_key.verify(signature, message(seq, digest))
    except InvalidSignature:
        return False
    return True
