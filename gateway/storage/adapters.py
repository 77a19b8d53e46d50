"""Per-identity LoRA adapters: training jobs in the database, weights in encrypted files.

The weights are sealed under the identity's data key (``TemplateVault.seal_bytes``, context = the
adapter id) in ``<adapters_dir>/<adapter_id>.lora.enc``; the database holds the job's state and
the SHA-256 of the encrypted file, never the weights. Plaintext weights exist only in memory:
``finish`` takes them as bytes, ``open_weights`` returns them as bytes. Erasing the identity
destroys the data key, so every copy of the file (backups included) is unreadable.

Who removes files: ``AdapterFiles`` owns the layout. ``Subjects`` gets the same directory and
removes the files of the adapters its erase/revoke deleted, after its commit; a crash between a
commit and a removal leaves an orphan that ``mark_interrupted`` (run when a gate opens) sweeps.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from sqlalchemy import delete as sql_delete
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database, affected_rows
from consentry.gateway.storage.principals import new_id
from consentry.gateway.storage.tables import Adapter, Grant, Identity
from consentry.gateway.storage.vault import TemplateVault
from consentry.policies import codes
from consentry.policies.consent import Purpose
from consentry.policies.errors import (
    BadInputError,
    ConfigurationError,
    ConflictError,
    ConsentryError,
    NotFoundError,
    RefusedError,
    StageError,
)
from consentry.provenance.audit import ChainedEvent

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


def _view(r: Adapter) -> AdapterView:
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


class _Abort(Exception):
    """Rolls back a unit of work. ``error`` reaches the caller; ``reason``, when set, marks the
    row failed; ``keep_file`` spares the file of an adapter that is (already) ready."""

    def __init__(self, error: ConsentryError, reason: str | None = None, keep_file: bool = False) -> None:
        super().__init__(error.detail)
        self.error, self.reason, self.keep_file = error, reason, keep_file


class _Skip(Exception):
    """The row changed before the write took its lock: roll the audit event back, do nothing."""


def _grant_problem(g: Grant | None, identity_id: str, principal_id: str, now: datetime) -> _Abort | None:
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
    return _Abort(RefusedError(why, code=code), reason=why)


def _identity_problem(identity: Identity | None, identity_id: str) -> _Abort | None:
    if identity is None:
        return _Abort(NotFoundError(f"no identity {identity_id}", code=codes.IDENTITY_NOT_FOUND))
    if identity.status != "active" or identity.data_key is None:
        why = f"identity {identity_id} is {identity.status}"
        return _Abort(ConflictError(why, code=codes.IDENTITY_ERASED), reason=why)
    return None


def _finish_problem(
    adapter_id: str, r: Adapter | None, i: Identity | None, g: Grant | None, now: datetime
) -> _Abort | None:
    if r is None:
        why = f"adapter {adapter_id} no longer exists (deleted, grant revoked or identity erased)"
        return _Abort(ConflictError(why, code=codes.ADAPTER_TRAINING_FAILED))
    if r.status != TRAINING:
        code = codes.CONFLICT if r.status == READY else r.error_code or codes.ADAPTER_TRAINING_FAILED
        why = f"adapter {adapter_id} is {r.status}, not training"
        return _Abort(ConflictError(why, code=code), keep_file=r.status == READY)
    return _identity_problem(i, r.identity_id) or _grant_problem(g, r.identity_id, r.principal_id, now)


class Adapters:
    def __init__(self, db: Database, vault: TemplateVault, audit: AuditLog, adapters_dir: Path) -> None:
        self.db, self.vault, self.audit = db, vault, audit
        self.files = AdapterFiles(adapters_dir)

    async def start(
        self,
        *,
        identity_id: str,
        grant_id: str,
        principal_id: str,
        steps: int,
        rank: int,
        prior_images: int,
        photos_source: str,
        photos: int,
        actor: str,
        stale_after_s: float,
    ) -> AdapterView:
        if photos_source not in SOURCES or min(steps, rank, photos) < 1 or prior_images < 0:
            raise BadInputError("invalid adapter training parameters", code=codes.ADAPTER_INVALID_PARAMS)
        job = {
            "identity_id": identity_id,
            "grant_id": grant_id,
            "principal_id": principal_id,
            "steps": steps,
            "rank": rank,
            "prior_images": prior_images,
            "photos_source": photos_source,
            "photos": photos,
        }
        now = datetime.now(UTC)
        row = Adapter(id=new_id("adp"), status=TRAINING, steps_done=0, created_at=now, updated_at=now, **job)

        async def write(session: AsyncSession, _event: ChainedEvent) -> None:
            # The row lock (and the audit lock every audited write takes) makes check-then-insert
            # atomic: two starts for one identity cannot both pass the busy check.
            identity = await session.get(Identity, identity_id, with_for_update=True)
            grant = await session.get(Grant, grant_id)
            problem = _identity_problem(identity, identity_id) or _grant_problem(
                grant, identity_id, principal_id, now
            )
            if problem is not None:
                raise problem.error
            assert grant is not None
            if photos_source == "enrollment" and not grant.use_enrollment_photos:
                raise RefusedError(
                    f"grant {grant_id} does not allow the enrollment photos",
                    code=codes.ADAPTER_PHOTOS_REQUIRED,
                )
            cutoff = now - timedelta(seconds=stale_after_s)
            busy = await session.scalar(
                select(Adapter.id).where(
                    Adapter.identity_id == identity_id,
                    Adapter.status == TRAINING,
                    Adapter.updated_at > cutoff,
                )
            )
            if busy is not None:
                raise ConflictError(
                    f"adapter {busy} of this identity is training", code=codes.ADAPTER_TRAINING_BUSY
                )
            session.add(row)

        body = {"adapter_id": row.id, **job, "actor": actor}
        await self.audit.append("adapter.training_started", body, also=write)
        return _view(row)

    async def progress(self, adapter_id: str, steps_done: int, loss: float | None) -> bool:
        """Heartbeat. False when the job should stop: the adapter is gone or no longer training."""
        async with self.db.session() as session, session.begin():
            changed = await affected_rows(
                session,
                update(Adapter)
                .where(Adapter.id == adapter_id, Adapter.status == TRAINING)
                .values(steps_done=steps_done, loss=loss, updated_at=datetime.now(UTC)),
            )
        return changed == 1

    @staticmethod
    async def _load(
        session: AsyncSession, adapter_id: str, lock: bool
    ) -> tuple[Adapter | None, Identity | None, Grant | None]:
        row = await session.get(Adapter, adapter_id, with_for_update=lock)
        if row is None:
            return None, None, None
        identity = await session.get(Identity, row.identity_id, with_for_update=lock)
        return row, identity, await session.get(Grant, row.grant_id)

    async def finish(self, adapter_id: str, weights: bytes, details: dict[str, Any]) -> AdapterView:
        async with self.db.session() as session:
            row, identity, grant = await self._load(session, adapter_id, lock=False)
        abort = _finish_problem(adapter_id, row, identity, grant, datetime.now(UTC))
        if abort is None:
            assert row is not None and identity is not None and identity.data_key is not None
            sealed = self.vault.seal_bytes(row.identity_id, identity.data_key, weights, adapter_id)
            digest = hashlib.sha256(sealed).hexdigest()
            await asyncio.to_thread(self.files.write, adapter_id, sealed)
            done: builtins.list[AdapterView] = []

            async def write(session: AsyncSession, _event: ChainedEvent) -> None:
                # Re-checked under the locks: erase, revoke or mark_interrupted may have won the race.
                now = datetime.now(UTC)
                r, i, g = await self._load(session, adapter_id, lock=True)
                if (problem := _finish_problem(adapter_id, r, i, g, now)) is not None:
                    raise problem
                assert r is not None
                r.status, r.weights_sha256, r.finished_at, r.updated_at = READY, digest, now, now
                await session.flush()
                done.append(_view(r))

            body = {
                **details,
                "adapter_id": adapter_id,
                "identity_id": row.identity_id,
                "grant_id": row.grant_id,
                "weights_sha256": digest,
            }
            try:
                await self.audit.append("adapter.trained", body, also=write)
                return done[0]
            except _Abort as exc:
                abort = exc
            except BaseException:
                self.files.remove([adapter_id])  # not committed: no file without a ready row
                raise
        if not abort.keep_file:
            self.files.remove([adapter_id])
        if abort.reason is not None:
            await self._mark_failed(
                adapter_id, codes.ADAPTER_TRAINING_FAILED, f"{abort.reason} during training"
            )
        raise abort.error

    async def _mark_failed(
        self, adapter_id: str, code: str, reason: str, stale_before: datetime | None = None
    ) -> bool:
        """Training -> failed, audited, file removed. False when the row was not (or no longer)
        training, or its heartbeat came back (``stale_before``)."""
        async with self.db.session() as session:
            identity_id = await session.scalar(select(Adapter.identity_id).where(Adapter.id == adapter_id))
        if identity_id is None:
            return False

        async def write(session: AsyncSession, _event: ChainedEvent) -> None:
            now = datetime.now(UTC)
            where = [Adapter.id == adapter_id, Adapter.status == TRAINING]
            if stale_before is not None:
                where.append(Adapter.updated_at <= stale_before)
            values = {
                "status": FAILED,
                "error_code": code,
                "error": reason,
                "finished_at": now,
                "updated_at": now,
            }
            if await affected_rows(session, update(Adapter).where(*where).values(**values)) == 0:
                raise _Skip

        body = {"adapter_id": adapter_id, "identity_id": identity_id, "code": code, "reason": reason}
        try:
            await self.audit.append("adapter.training_failed", body, also=write)
        except _Skip:
            return False
        self.files.remove([adapter_id])
        return True

    async def fail(self, adapter_id: str, code: str, reason: str) -> AdapterView:
        """Record a failed training job (idempotent for one already failed)."""
        if code not in codes.ALL:
            raise ValueError(f"{code!r} is not a registered code")
        if not await self._mark_failed(adapter_id, code, reason):
            view = await self.get(adapter_id)
            if view.status == READY:
                raise ConflictError(f"adapter {adapter_id} is ready; delete it instead", code=codes.CONFLICT)
            return view
        return await self.get(adapter_id)

    async def mark_interrupted(self, stale_after_s: float) -> int:
        """Fail the training jobs whose heartbeat stopped (their process died), and sweep files no
        live row owns. Returns how many jobs were failed."""
        cutoff = datetime.now(UTC) - timedelta(seconds=stale_after_s)
        async with self.db.session() as session:
            stale = (
                await session.scalars(
                    select(Adapter.id).where(Adapter.status == TRAINING, Adapter.updated_at <= cutoff)
                )
            ).all()
        reason = f"no training heartbeat for {stale_after_s:g} s: the process training it stopped"
        failed = 0
        for adapter_id in stale:
            failed += await self._mark_failed(adapter_id, codes.ADAPTER_INTERRUPTED, reason, cutoff)
        # Files first, rows second: a file written just now already has its (training) row.
        on_disk = await asyncio.to_thread(self.files.on_disk)
        if on_disk:
            async with self.db.session() as session:
                live = await session.scalars(
                    select(Adapter.id).where(Adapter.id.in_(on_disk), Adapter.status.in_((TRAINING, READY)))
                )
                self.files.remove(set(on_disk) - set(live.all()))
        self.files.remove_temps(older_than=time.time() - stale_after_s)
        return failed

    async def get(self, adapter_id: str) -> AdapterView:
        async with self.db.session() as session:
            row = await session.get(Adapter, adapter_id)
        if row is None:
            raise NotFoundError(f"no adapter {adapter_id}", code=codes.ADAPTER_NOT_FOUND)
        return _view(row)

    async def latest_ready(self, identity_id: str) -> AdapterView | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(Adapter)
                .where(Adapter.identity_id == identity_id, Adapter.status == READY)
                .order_by(Adapter.finished_at.desc(), Adapter.id)
                .limit(1)
            )
        return _view(row) if row else None

    async def open_weights(self, adapter_id: str) -> bytes:
        """The plaintext weights, in memory only. Any storage problem fails closed."""
        async with self.db.session() as session:
            row, identity, _ = await self._load(session, adapter_id, lock=False)
        if row is None:
            raise NotFoundError(f"no adapter {adapter_id}", code=codes.ADAPTER_NOT_FOUND)
        if row.status != READY:
            raise ConflictError(
                f"adapter {adapter_id} is {row.status}, not ready", code=codes.ADAPTER_MISSING
            )

        def unreadable(why: str) -> StageError:
            return StageError(f"adapter {adapter_id} cannot be opened: {why}", code=codes.ADAPTER_UNREADABLE)

        if identity is None or identity.status != "active" or identity.data_key is None:
            raise unreadable("its identity is erased")
        try:
            sealed = await asyncio.to_thread(self.files.path(adapter_id).read_bytes)
        except OSError as exc:
            raise unreadable("its file is missing or unreadable") from exc
        if hashlib.sha256(sealed).hexdigest() != row.weights_sha256:
            raise unreadable("its file does not match the recorded hash")
        try:
            return self.vault.open_bytes(row.identity_id, identity.data_key, sealed, adapter_id)
        except (InvalidTag, ConfigurationError) as exc:
            raise unreadable("it does not decrypt under the identity's key") from exc

    async def delete(self, adapter_id: str, actor: str) -> None:
        view = await self.get(adapter_id)

        async def write(session: AsyncSession, _event: ChainedEvent) -> None:
            if await affected_rows(session, sql_delete(Adapter).where(Adapter.id == adapter_id)) == 0:
                raise NotFoundError(f"no adapter {adapter_id}", code=codes.ADAPTER_NOT_FOUND)

        body = {"adapter_id": adapter_id, "identity_id": view.identity_id, "actor": actor}
        await self.audit.append("adapter.deleted", body, also=write)
        self.files.remove([adapter_id])

    # Last, so that ``list`` in the annotations above still means the builtin.
    async def list(self, identity_id: str | None = None) -> builtins.list[AdapterView]:
        query = select(Adapter).order_by(Adapter.created_at, Adapter.id)
        if identity_id is not None:
            query = query.where(Adapter.identity_id == identity_id)
        async with self.db.session() as session:
            return [_view(r) for r in (await session.scalars(query)).all()]
