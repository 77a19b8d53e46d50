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
import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from sqlalchemy import delete as sql_delete
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.adapter_parts import (
    FAILED,
    READY,
    SOURCES,
    TRAINING,
    Abort,
    AdapterFiles,
    AdapterView,
    Skip,
    finish_problem,
    grant_problem,
    identity_problem,
    to_view,
)
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database, affected_rows
from consentry.gateway.storage.principals import new_id
from consentry.gateway.storage.tables import Adapter, Grant, Identity
from consentry.gateway.storage.vault import TemplateVault
from consentry.policies import codes
from consentry.policies.errors import (
    BadInputError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    RefusedError,
    StageError,
)
from consentry.provenance.audit import ChainedEvent


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
            problem = identity_problem(identity, identity_id) or grant_problem(
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
        return to_view(row)

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
        abort = finish_problem(adapter_id, row, identity, grant, datetime.now(UTC))
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
                if (problem := finish_problem(adapter_id, r, i, g, now)) is not None:
                    raise problem
                assert r is not None
                r.status, r.weights_sha256, r.finished_at, r.updated_at = READY, digest, now, now
                await session.flush()
                done.append(to_view(r))

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
            except Abort as exc:
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
                raise Skip

        body = {"adapter_id": adapter_id, "identity_id": identity_id, "code": code, "reason": reason}
        try:
            await self.audit.append("adapter.training_failed", body, also=write)
        except Skip:
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
        return to_view(row)

    async def latest_ready(self, identity_id: str) -> AdapterView | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(Adapter)
                .where(Adapter.identity_id == identity_id, Adapter.status == READY)
                .order_by(Adapter.finished_at.desc(), Adapter.id)
                .limit(1)
            )
        return to_view(row) if row else None

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
            return [to_view(r) for r in (await session.scalars(query)).all()]
