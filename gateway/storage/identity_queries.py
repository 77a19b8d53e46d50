"""Reads of identities and their grants for the console: no templates, no photos, no keys.

An identity is shown by its label, status and dates, and by counts (live grants, adapters, photos
kept for training); a grant by its terms, uses and the hash of its evidence. Pages are keysets on
``(created_at, id)``. Every method takes the caller's session: a console request runs all its
reads on one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, literal, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.adapter_parts import AdapterView, to_view
from consentry.gateway.storage.records import RecordView, record_view
from consentry.gateway.storage.tables import (
    Adapter,
    AuditEvent,
    EnrollmentPhoto,
    GenerationRecord,
    Grant,
    Identity,
    Principal,
)
from consentry.provenance.audit import canonical_json


def aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return moment.replace(tzinfo=moment.tzinfo or UTC) if moment is not None else None


@dataclass(frozen=True, slots=True)
class IdentityRow:
    id: str
    label: str
    status: str
    created_at: datetime
    erased_at: datetime | None
    live_grants: int
    grants: int
    adapters: int
    photos_kept: int


@dataclass(frozen=True, slots=True)
class GrantRow:
    id: str
    principal_id: str
    principal_name: str
    purposes: list[str]
    deny_terms: list[str]
    expires_at: datetime | None
    max_uses: int | None
    uses: int
    created_at: datetime
    revoked_at: datetime | None
    use_enrollment_photos: bool
    evidence: dict[str, Any]
    evidence_sha256: str
    """SHA-256 of the evidence record's canonical JSON (who attested, when, the consent text's hash)."""

    def live(self, now: datetime) -> bool:
        expired = self.expires_at is not None and self.expires_at <= now
        used_up = self.max_uses is not None and self.uses >= self.max_uses
        return self.revoked_at is None and not expired and not used_up


@dataclass(frozen=True, slots=True)
class IdentityPage:
    rows: list[IdentityRow]
    older: str | None
    """Key of the next page (``created_at|id`` of its last row), None on the last page."""


def _count(model: Any, *where: Any) -> Any:
    return select(func.count()).select_from(model).where(*where).correlate(Identity).scalar_subquery()


def _row(r: Any) -> IdentityRow:
    identity, live, total, adapters, photos = r
    return IdentityRow(
        identity.id,
        identity.label,
        identity.status,
        aware(identity.created_at) or identity.created_at,
        aware(identity.erased_at),
        int(live),
        int(total),
        int(adapters),
        int(photos),
    )


def _with_counts() -> Any:
    return select(
        Identity,
        _count(Grant, Grant.identity_id == Identity.id, Grant.revoked_at.is_(None)),
        _count(Grant, Grant.identity_id == Identity.id),
        _count(Adapter, Adapter.identity_id == Identity.id),
        _count(EnrollmentPhoto, EnrollmentPhoto.identity_id == Identity.id),
    )


class IdentityQueries:
    async def page(
        self, s: AsyncSession, *, limit: int, before: str | None = None, status: str | None = None
    ) -> IdentityPage:
        """Newest enrolled first; ``before`` is a page key from :attr:`IdentityPage.older`."""
        query = _with_counts().order_by(Identity.created_at.desc(), Identity.id.desc()).limit(limit + 1)
        if status:
            query = query.where(Identity.status == status)
        if before:
            moment, _, last_id = before.partition("|")
            at = datetime.fromisoformat(moment)
            query = query.where(
                or_(Identity.created_at < at, and_(Identity.created_at == at, Identity.id < last_id))
            )
        rows = [_row(r) for r in (await s.execute(query)).all()]
        more = len(rows) > limit
        rows = rows[:limit]
        older = f"{rows[-1].created_at.isoformat()}|{rows[-1].id}" if more else None
        return IdentityPage(rows, older)

    async def identity(self, s: AsyncSession, identity_id: str) -> IdentityRow | None:
        found = (await s.execute(_with_counts().where(Identity.id == identity_id))).first()
        return _row(found) if found is not None else None

    async def grants(self, s: AsyncSession, identity_id: str) -> list[GrantRow]:
        query = (
            select(Grant, Principal.name)
            .join(Principal, Principal.id == Grant.principal_id)
            .where(Grant.identity_id == identity_id)
            .order_by(Grant.created_at.desc(), Grant.id)
        )
        rows = (await s.execute(query)).all()
        return [
            GrantRow(
                id=g.id,
                principal_id=g.principal_id,
                principal_name=name,
                purposes=list(g.purposes),
                deny_terms=list(g.deny_terms),
                expires_at=aware(g.expires_at),
                max_uses=g.max_uses,
                uses=g.uses,
                created_at=aware(g.created_at) or g.created_at,
                revoked_at=aware(g.revoked_at),
                use_enrollment_photos=g.use_enrollment_photos,
                evidence=dict(g.evidence),
                evidence_sha256=hashlib.sha256(canonical_json(g.evidence).encode()).hexdigest(),
            )
            for g, name in rows
        ]

    async def adapters(self, s: AsyncSession, identity_id: str) -> list[AdapterView]:
        """The identity's adapters (as ``Gate.list_adapters`` lists them), oldest first."""
        query = (
            select(Adapter).where(Adapter.identity_id == identity_id).order_by(Adapter.created_at, Adapter.id)
        )
        return [to_view(r) for r in (await s.scalars(query)).all()]

    async def record(self, s: AsyncSession, record_id: str) -> tuple[RecordView | None, str | None]:
        """A generation record and the identity of its grant (one statement)."""
        query = (
            select(GenerationRecord, Grant.identity_id)
            .outerjoin(Grant, Grant.id == GenerationRecord.grant_id)
            .where(GenerationRecord.id == record_id)
        )
        row = (await s.execute(query)).first()
        if row is None:
            return None, None
        r, grant_identity = row
        view = record_view(r)
        return view, grant_identity

    async def grant_identity(self, s: AsyncSession, grant_id: str) -> str | None:
        return await s.scalar(select(Grant.identity_id).where(Grant.id == grant_id))

    async def names_and_labels(
        self, s: AsyncSession, principal_ids: Sequence[str], identity_ids: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Principal id -> name and identity id -> label, in one statement."""
        parts = []
        if principal_ids:
            parts.append(
                select(literal("p"), Principal.id, Principal.name).where(Principal.id.in_(set(principal_ids)))
            )
        if identity_ids:
            parts.append(
                select(literal("i"), Identity.id, Identity.label).where(Identity.id.in_(set(identity_ids)))
            )
        if not parts:
            return {}, {}
        rows = (await s.execute(parts[0] if len(parts) == 1 else union_all(*parts))).all()
        return {i: n for t, i, n in rows if t == "p"}, {i: n for t, i, n in rows if t == "i"}

    async def principal_by_name(self, s: AsyncSession, name: str) -> str | None:
        return await s.scalar(select(Principal.id).where(Principal.name == name))

    async def erasure_cascades(
        self, s: AsyncSession, identity_ids: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        """What erasing each of ``identity_ids`` took with it, beyond what its audit event counts
        (one statement for all): the grants it revoked (revoked at the erasure's own instant),
        the records it flagged, and the templates it destroyed (as many as were enrolled:
        templates are never added later). Identities not erased are left out."""
        if not identity_ids:
            return {}
        grants = (
            select(func.count())
            .where(Grant.identity_id == Identity.id, Grant.revoked_at == Identity.erased_at)
            .correlate(Identity)
            .scalar_subquery()
        )
        records = (
            select(func.count())
            .where(GenerationRecord.identity_id == Identity.id, GenerationRecord.subject_erased)
            .correlate(Identity)
            .scalar_subquery()
        )
        enrolled = (
            select(AuditEvent.body)
            .where(AuditEvent.identity_id == Identity.id, AuditEvent.kind == "identity.enrolled")
            .order_by(AuditEvent.seq)
            .limit(1)
            .correlate(Identity)
            .scalar_subquery()
        )
        query = select(Identity.id, grants, records, enrolled).where(
            Identity.id.in_(set(identity_ids)), Identity.erased_at.is_not(None)
        )
        out: dict[str, dict[str, int]] = {}
        for identity_id, revoked, flagged, body in (await s.execute(query)).all():
            templates = body.get("templates") if isinstance(body, dict) else None
            out[identity_id] = {"grants_revoked": int(revoked or 0), "records_flagged": int(flagged or 0)}
            if isinstance(templates, int):
                out[identity_id]["templates_destroyed"] = templates
        return out
