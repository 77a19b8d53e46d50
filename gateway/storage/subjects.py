"""Protected identities, their encrypted templates and kept photos, and their consent grants.

Every change here is audited in the same transaction as the change itself. Revoking an
adapter_training grant and erasing an identity also delete adapters: their rows in that
transaction, their files (``AdapterFiles`` of the ``adapters_dir`` given here) after the commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.adapters import AdapterFiles
from consentry.gateway.storage.audit_log import AuditLog, UnitOfWork
from consentry.gateway.storage.db import Database, affected_rows
from consentry.gateway.storage.principals import new_id
from consentry.gateway.storage.tables import (
    Adapter,
    EnrollmentPhoto,
    GenerationRecord,
    Grant,
    Identity,
    Principal,
    Template,
)
from consentry.gateway.storage.vault import TemplateVault
from consentry.policies import codes
from consentry.policies.consent import Attestation, GrantTerms, Purpose
from consentry.policies.errors import BadInputError, ConflictError, NotFoundError, StageError
from consentry.provenance.audit import ChainedEvent

PHOTO_CONTEXT = "enrollment_photo"
COUNT_RETRIES = 5


@dataclass(frozen=True, slots=True)
class IdentityView:
    id: str
    label: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class IdentityAttestation:
    """How an identity's person was attested at enrollment. With a liveness proof:
    ``self_attested_with_liveness``, the challenge it answered and the SHA-256 of the proof's
    record (the record itself is in the ``identity.enrolled`` audit event)."""

    kind: str = Attestation.operator_attested.value
    challenge_id: str | None = None
    evidence_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class EnrolledTemplates:
    """Decrypted templates of every active identity, row-aligned with ``identity_ids``."""

    identity_ids: tuple[str, ...]
    matrix: np.ndarray


def _terms(g: Grant) -> GrantTerms:
    return GrantTerms(
        id=g.id,
        identity_id=g.identity_id,
        principal_id=g.principal_id,
        purposes=tuple(g.purposes),
        deny_terms=tuple(g.deny_terms),
        expires_at=g.expires_at.replace(tzinfo=g.expires_at.tzinfo or UTC) if g.expires_at else None,
        max_uses=g.max_uses,
        uses=g.uses,
        revoked_at=g.revoked_at,
        use_enrollment_photos=g.use_enrollment_photos,
        attestation=g.attestation,
    )


class _Recount(Exception):
    """The counts an audit event states changed before its transaction took the locks."""


Counted = dict[str, list[Any]]
"""Row ids per audit field (``adapters_deleted``: the adapter ids, ...)."""
Count = Callable[[AsyncSession], Awaitable[Counted]]
Apply = Callable[[AsyncSession], Awaitable[None]]
Append = Callable[[dict[str, int], UnitOfWork], Awaitable[ChainedEvent]]


class Subjects:
    def __init__(
        self, db: Database, vault: TemplateVault, audit: AuditLog, adapters_dir: Path | None = None
    ) -> None:
        self.db = db
        self.vault = vault
        self.audit = audit
        # None: this deployment keeps no adapter files (rows, if any, are still deleted).
        self.adapter_files = AdapterFiles(adapters_dir) if adapters_dir is not None else None

    async def enroll(
        self,
        label: str,
        embeddings: np.ndarray,
        embedder: str,
        actor: str,
        details: dict[str, Any],
        photos: Sequence[bytes] = (),
        attestation: IdentityAttestation | None = None,
        also: UnitOfWork | None = None,
    ) -> IdentityView:
        """``photos``: the photos to keep (sealed) for later adapter training; none by default.
        ``attestation``: how the person was attested (default: by the operator); ``also``
        writes more rows in the enrollment's transaction (spending a liveness challenge)."""
        attested = attestation or IdentityAttestation()
        label = label.strip()
        if not label or len(label) > 200:
            raise BadInputError("a label needs 1-200 characters", code=codes.IDENTITY_LABEL_INVALID)
        now = datetime.now(UTC)
        identity_id = new_id("idn")
        wrapped = self.vault.new_data_key(identity_id)

        async def write(session: AsyncSession, event: ChainedEvent) -> None:
            session.add(
                Identity(
                    id=identity_id,
                    label=label,
                    status="active",
                    data_key=wrapped,
                    created_at=now,
                    attestation=attested.kind,
                    liveness_challenge_id=attested.challenge_id,
                    evidence_sha256=attested.evidence_sha256,
                )
            )
            await session.flush()
            for row in embeddings:
                sealed = self.vault.seal(identity_id, wrapped, row)
                session.add(
                    Template(identity_id=identity_id, embedder=embedder, ciphertext=sealed, created_at=now)
                )
            for photo in photos:
                digest = hashlib.sha256(photo).hexdigest()
                # The hash in the associated data binds each ciphertext to its own row.
                sealed = self.vault.seal_bytes(identity_id, wrapped, photo, f"{PHOTO_CONTEXT}:{digest}")
                session.add(
                    EnrollmentPhoto(identity_id=identity_id, ciphertext=sealed, sha256=digest, created_at=now)
                )
            if also is not None:
                await also(session, event)

        body = {
            "identity_id": identity_id,
            "actor": actor,
            "templates": len(embeddings),
            **details,
            "photos_kept": len(photos),
            "attestation": attested.kind,
        }
        await self.audit.append("identity.enrolled", body, also=write)
        return IdentityView(identity_id, label, "active", now)

    async def get(self, identity_id: str) -> IdentityView:
        async with self.db.session() as session:
            row = await session.get(Identity, identity_id)
        if row is None:
            raise NotFoundError(f"no identity {identity_id}", code=codes.IDENTITY_NOT_FOUND)
        return IdentityView(row.id, row.label, row.status, row.created_at)

    async def attestation_of(self, identity_id: str) -> IdentityAttestation:
        async with self.db.session() as session:
            row = await session.get(Identity, identity_id)
        if row is None:
            raise NotFoundError(f"no identity {identity_id}", code=codes.IDENTITY_NOT_FOUND)
        return IdentityAttestation(row.attestation, row.liveness_challenge_id, row.evidence_sha256)

    async def enrollment_photos(self, identity_id: str) -> list[bytes]:
        """The photos kept at enrollment, decrypted (in memory only), in enrollment order."""
        async with self.db.session() as session:
            identity = await session.get(Identity, identity_id)
            rows = (
                await session.execute(
                    select(EnrollmentPhoto.ciphertext, EnrollmentPhoto.sha256)
                    .where(EnrollmentPhoto.identity_id == identity_id)
                    .order_by(EnrollmentPhoto.id)
                )
            ).all()
        if identity is None:
            raise NotFoundError(f"no identity {identity_id}", code=codes.IDENTITY_NOT_FOUND)
        if identity.status == "erased" or identity.data_key is None:
            raise ConflictError(f"identity {identity_id} is erased", code=codes.IDENTITY_ERASED)
        try:
            return [
                self.vault.open_bytes(identity_id, identity.data_key, c, f"{PHOTO_CONTEXT}:{h}")
                for c, h in rows
            ]
        except InvalidTag as exc:
            # Fail closed: a damaged or swapped photo is never handed to training.
            raise StageError(
                f"a kept photo of {identity_id} does not decrypt", code=codes.STAGE_ERROR
            ) from exc

    async def templates_version(self, embedder: str) -> tuple[int, int]:
        """Cheap fingerprint of the template table, to know when a cached index is stale."""
        async with self.db.session() as session:
            count, top = (
                await session.execute(
                    select(func.count(Template.id), func.coalesce(func.max(Template.id), 0))
                    .join(Identity, Identity.id == Template.identity_id)
                    .where(Template.embedder == embedder, Identity.status == "active")
                )
            ).one()
        return int(count), int(top)

    async def templates(self, embedder: str) -> EnrolledTemplates:
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(Identity.id, Identity.data_key, Template.ciphertext)
                    .join(Template, Template.identity_id == Identity.id)
                    .where(Template.embedder == embedder, Identity.status == "active")
                    .order_by(Identity.id, Template.id)
                )
            ).all()
        by_identity: dict[str, tuple[bytes, list[bytes]]] = {}
        for identity_id, key, sealed in rows:
            assert key is not None  # only erasing clears the key, and it also ends "active"
            by_identity.setdefault(identity_id, (key, []))[1].append(sealed)
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        for identity_id, (key, sealed_rows) in by_identity.items():
            block = self.vault.open(identity_id, key, sealed_rows)
            blocks.append(block)
            ids.extend([identity_id] * len(block))
        matrix = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32)
        return EnrolledTemplates(tuple(ids), matrix)

    async def grant(
        self,
        *,
        identity_id: str,
        principal_id: str,
        purposes: list[str],
        deny_terms: list[str],
        expires_at: datetime | None,
        max_uses: int | None,
        evidence: dict[str, Any],
        actor: str,
        use_enrollment_photos: bool = False,
        attestation: str = Attestation.operator_attested.value,
    ) -> GrantTerms:
        unknown = sorted(set(purposes) - {p.value for p in Purpose})
        if not purposes or unknown:
            raise BadInputError(
                f"purposes must be a non-empty subset of {[p.value for p in Purpose]}; got {unknown}",
                code=codes.GRANT_PURPOSE_INVALID,
            )
        if use_enrollment_photos and Purpose.adapter_training.value not in purposes:
            raise BadInputError(
                "use_enrollment_photos needs the adapter_training purpose", code=codes.GRANT_PURPOSE_INVALID
            )
        if max_uses is not None and max_uses < 1:
            raise BadInputError("max_uses must be at least 1", code=codes.GRANT_MAX_USES_INVALID)
        identity = await self.get(identity_id)
        if identity.status != "active":
            raise BadInputError(f"identity {identity_id} is {identity.status}", code=codes.IDENTITY_INACTIVE)
        async with self.db.session() as session:
            if await session.get(Principal, principal_id) is None:
                raise NotFoundError(f"no principal {principal_id}", code=codes.PRINCIPAL_NOT_FOUND)
        row = Grant(
            id=new_id("gnt"),
            identity_id=identity_id,
            principal_id=principal_id,
            purposes=sorted(set(purposes)),
            deny_terms=list(deny_terms),
            expires_at=expires_at,
            max_uses=max_uses,
            uses=0,
            evidence=evidence,
            created_at=datetime.now(UTC),
            use_enrollment_photos=use_enrollment_photos,
            attestation=attestation,
        )

        async def write(session: AsyncSession, _event: ChainedEvent) -> None:
            session.add(row)

        body = {
            "grant_id": row.id,
            "identity_id": identity_id,
            "principal_id": principal_id,
            "purposes": row.purposes,
            "use_enrollment_photos": use_enrollment_photos,
            "attestation": attestation,
            "actor": actor,
        }
        await self.audit.append("grant.created", body, also=write)
        return _terms(row)

    async def _counted(self, append: Append, count: Count, apply: Apply) -> Counted:
        """``append`` an event stating how many rows ``apply`` deletes, true when it commits:
        counted first, again inside the transaction (before ``apply``), retried if they moved.
        The rows counted change only in audited writes, which the audit lock serialises."""
        for _ in range(COUNT_RETRIES):
            async with self.db.session() as session:
                expected = await count(session)

            async def write(session: AsyncSession, _e: ChainedEvent, expected: Counted = expected) -> None:
                if await count(session) != expected:
                    raise _Recount
                await apply(session)

            counts = {k: len(v) for k, v in expected.items()}
            try:
                await append(counts, write)
            except _Recount:
                continue
            return expected
        raise StageError("the rows to delete kept changing", code=codes.STAGE_ERROR)

    def _remove_adapter_files(self, adapter_ids: list[str]) -> None:
        if self.adapter_files is not None:
            self.adapter_files.remove(adapter_ids)

    async def revoke(self, grant_id: str, actor: str) -> dict[str, int]:
        """Revoke a grant. The adapters trained under it (only adapter_training grants have any)
        go with it: the consent to keep them is gone. Returns and audits ``adapters_deleted``."""

        async def count(session: AsyncSession) -> Counted:
            ids = await session.scalars(
                select(Adapter.id).where(Adapter.grant_id == grant_id).order_by(Adapter.id)
            )
            return {"adapters_deleted": list(ids.all())}

        async def apply(session: AsyncSession) -> None:
            revoked = await affected_rows(
                session,
                update(Grant)
                .where(Grant.id == grant_id, Grant.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC)),
            )
            if revoked == 0:
                # Raising inside the unit of work rolls the audit event back too.
                raise NotFoundError(f"no live grant {grant_id}", code=codes.GRANT_NOT_FOUND)
            await session.execute(delete(Adapter).where(Adapter.grant_id == grant_id))

        def append(counts: dict[str, int], write: UnitOfWork) -> Awaitable[ChainedEvent]:
            body = {"grant_id": grant_id, "actor": actor, **counts}
            return self.audit.append("grant.revoked", body, also=write)

        adapters = (await self._counted(append, count, apply))["adapters_deleted"]
        self._remove_adapter_files(adapters)
        return {"adapters_deleted": len(adapters)}

    async def erase(self, identity_id: str, actor: str) -> dict[str, int]:
        """Erase an identity: destroy its data key (crypto-shredding every template, kept photo
        and adapter file, including copies in backups), delete its templates, kept photos and
        adapters, revoke its grants, drop its label, and flag its past generation records."""
        now = datetime.now(UTC)
        counts: dict[str, int] = {}

        async def count(session: AsyncSession) -> Counted:
            # The identity row lock first: erase and adapter training serialise on it.
            await session.get(Identity, identity_id, with_for_update=True)
            adapters = await session.scalars(select(Adapter.id).where(Adapter.identity_id == identity_id))
            photos = await session.scalars(
                select(EnrollmentPhoto.id).where(EnrollmentPhoto.identity_id == identity_id)
            )
            return {"adapters_deleted": sorted(adapters.all()), "photos_deleted": sorted(photos.all())}

        async def apply(session: AsyncSession) -> None:
            identity = await session.get(Identity, identity_id, with_for_update=True)
            if identity is None:
                raise NotFoundError(f"no identity {identity_id}", code=codes.IDENTITY_NOT_FOUND)
            if identity.status == "erased":
                raise ConflictError(f"identity {identity_id} is already erased", code=codes.IDENTITY_ERASED)
            identity.status, identity.data_key, identity.label, identity.erased_at = "erased", None, "", now
            deleted = await affected_rows(
                session, delete(Template).where(Template.identity_id == identity_id)
            )
            await session.execute(delete(EnrollmentPhoto).where(EnrollmentPhoto.identity_id == identity_id))
            await session.execute(delete(Adapter).where(Adapter.identity_id == identity_id))
            revoked = await affected_rows(
                session,
                update(Grant)
                .where(Grant.identity_id == identity_id, Grant.revoked_at.is_(None))
                .values(revoked_at=now),
            )
            flagged = await affected_rows(
                session,
                update(GenerationRecord)
                .where(GenerationRecord.identity_id == identity_id)
                .values(subject_erased=True),
            )
            counts.update(templates_destroyed=deleted, grants_revoked=revoked, records_flagged=flagged)

        def append(counts: dict[str, int], write: UnitOfWork) -> Awaitable[ChainedEvent]:
            body = {"identity_id": identity_id, "actor": actor, **counts}
            return self.audit.append("identity.erased", body, also=write)

        deleted = await self._counted(append, count, apply)
        # After the commit: the rows are gone, so nothing can open these files any more.
        self._remove_adapter_files(deleted["adapters_deleted"])
        if self.db.is_sqlite:
            # Fold the write-ahead log into the main file so no older page still holds the key.
            async with self.db.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return {**counts, **{k: len(v) for k, v in deleted.items()}}

    async def grants_for(self, identity_id: str, principal_id: str) -> list[GrantTerms]:
        async with self.db.session() as session:
            rows = (
                await session.scalars(
                    select(Grant)
                    .where(Grant.identity_id == identity_id, Grant.principal_id == principal_id)
                    .order_by(Grant.created_at)
                )
            ).all()
        return [_terms(g) for g in rows]

    @staticmethod
    async def consume(session: AsyncSession, grant_id: str) -> bool:
        """Count one use, only if the grant is still live and has uses left (atomic)."""
        used = await affected_rows(
            session,
            update(Grant)
            .where(
                Grant.id == grant_id,
                Grant.revoked_at.is_(None),
                (Grant.max_uses.is_(None)) | (Grant.uses < Grant.max_uses),
            )
            .values(uses=Grant.uses + 1),
        )
        return used == 1
