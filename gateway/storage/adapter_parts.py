"""The parts of adapter storage that hold no session: the view, the encrypted files, and the
checks that decide whether a job may start or finish (used by :mod:`.adapters`)."""

from __future__ import annotations

import builtins
import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consentry.gateway.storage.tables import Adapter, Grant, Identity
from consentry.policies import codes
from consentry.policies.consent import Purpose
from consentry.policies.errors import ConflictError, ConsentryError, NotFoundError, RefusedError

TRAINING, READY, FAILED = "training", "ready", "failed"
SOURCES = ("enrollment", "request")
SUFFIX = ".lora.enc"


def aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AdapterView:
    id: str
    identity_id: str
    grant_id: str
    principal_id: str
    status: str
    steps: int
    rank: int
    prior_images: int
    steps_done: int
    loss: float | None
    photos_source: str
    photos: int
    error_code: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    weights_sha256: str | None = None
    """Of the encrypted file: what a manifest may cite to name the adapter it used."""

    def as_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def to_view(r: Adapter) -> AdapterView:
    values = {f.name: getattr(r, f.name) for f in fields(AdapterView)}
    for name in ("created_at", "updated_at", "finished_at"):
        values[name] = values[name] and aware(values[name])
    return AdapterView(**values)


class AdapterFiles:
    """The encrypted adapter files of one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, adapter_id: str) -> Path:
        return self.root / f"{adapter_id}{SUFFIX}"

    def write(self, adapter_id: str, sealed: bytes) -> None:
        """Atomically: a reader sees the whole file or none (temp file, fsync, rename, fsync dir)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkstemp creates the file with mode 0600, in the same directory so the rename is atomic.
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{adapter_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(sealed)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path(adapter_id))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def remove(self, adapter_ids: Iterable[str]) -> None:
        for adapter_id in adapter_ids:
            self.path(adapter_id).unlink(missing_ok=True)

    def on_disk(self) -> builtins.list[str]:
        if not self.root.is_dir():
            return []
        return [p.name.removesuffix(SUFFIX) for p in self.root.glob(f"*{SUFFIX}")]

    def remove_temps(self, older_than: float) -> None:
        """Temp files of writes that a crash cut short (not ones another process is writing)."""
        if self.root.is_dir():
            for p in self.root.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):  # another sweeper was first
                    if p.stat().st_mtime < older_than:
                        p.unlink()


class Abort(Exception):
    """Rolls back a unit of work. ``error`` reaches the caller; ``reason``, when set, marks the
    row failed; ``keep_file`` spares the file of an adapter that is (already) ready."""

    def __init__(self, error: ConsentryError, reason: str | None = None, keep_file: bool = False) -> None:
        super().__init__(error.detail)
        self.error, self.reason, self.keep_file = error, reason, keep_file


class Skip(Exception):
    """The row changed before the write took its lock: roll the audit event back, do nothing."""


def grant_problem(g: Grant | None, identity_id: str, principal_id: str, now: datetime) -> Abort | None:
    """The gate checks consent first; this is the backstop at the storage boundary."""
    if g is None or g.identity_id != identity_id or g.principal_id != principal_id:
        why, code = "no grant of this identity to this principal", codes.CONSENT_MISSING
    elif Purpose.adapter_training.value not in g.purposes:
        why, code = f"grant {g.id} does not cover adapter_training", codes.CONSENT_PURPOSE
    elif g.revoked_at is not None:
        why, code = f"grant {g.id} was revoked", codes.CONSENT_REVOKED
    elif g.expires_at is not None and aware(g.expires_at) <= now:
        why, code = f"grant {g.id} expired", codes.CONSENT_EXPIRED
    else:
        return None
    return Abort(RefusedError(why, code=code), reason=why)


def identity_problem(identity: Identity | None, identity_id: str) -> Abort | None:
    if identity is None:
        return Abort(NotFoundError(f"no identity {identity_id}", code=codes.IDENTITY_NOT_FOUND))
    if identity.status != "active" or identity.data_key is None:
        why = f"identity {identity_id} is {identity.status}"
        return Abort(ConflictError(why, code=codes.IDENTITY_ERASED), reason=why)
    return None


def finish_problem(
    adapter_id: str, r: Adapter | None, i: Identity | None, g: Grant | None, now: datetime
) -> Abort | None:
    if r is None:
        why = f"adapter {adapter_id} no longer exists (deleted, grant revoked or identity erased)"
        return Abort(ConflictError(why, code=codes.ADAPTER_TRAINING_FAILED))
    if r.status != TRAINING:
        code = codes.CONFLICT if r.status == READY else r.error_code or codes.ADAPTER_TRAINING_FAILED
        why = f"adapter {adapter_id} is {r.status}, not training"
        return Abort(ConflictError(why, code=code), keep_file=r.status == READY)
    return identity_problem(i, r.identity_id) or grant_problem(g, r.identity_id, r.principal_id, now)
