"""Generation records: what a watermark payload and a signed manifest resolve to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, select

from consentry.gateway.storage.db import Database
from consentry.gateway.storage.tables import GenerationRecord, Grant, Identity
from consentry.provenance.resolution import ReleaseFacts


@dataclass(frozen=True, slots=True)
class RecordView:
    id: str
    watermark: str
    principal_id: str
    identity_id: str | None
    grant_id: str | None
    model: str
    untrained: bool
    manifest: dict[str, Any]
    outputs: list[str]
    audit_seq: int
    subject_erased: bool
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "watermark": self.watermark,
            "principal_id": self.principal_id,
            "identity_id": self.identity_id,
            "grant_id": self.grant_id,
            "model": self.model,
            "untrained": self.untrained,
            "audit_seq": self.audit_seq,
            "subject_erased": self.subject_erased,
            "created_at": self.created_at.isoformat(),
            "manifest": self.manifest,
        }


def record_view(r: GenerationRecord) -> RecordView:
    return RecordView(
        r.id,
        r.watermark,
        r.principal_id,
        r.identity_id,
        r.grant_id,
        r.model,
        r.untrained,
        r.manifest,
        r.outputs,
        r.audit_seq,
        r.subject_erased,
        r.created_at,
    )


def _facts(row: GenerationRecord, revoked_at: datetime | None, identity_status: str | None) -> ReleaseFacts:
    named = row.identity_id is not None
    return ReleaseFacts(
        record_id=row.id,
        # SQLite hands timestamps back without their zone; they are stored as UTC.
        released_at=row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC),
        outputs=tuple(row.outputs),
        subject_named=named,
        # A named record without its grant row cannot show that consent still stands: it counts
        # as withdrawn (the public answer then withholds the manifest; fail closed).
        consent_withdrawn=named and (row.grant_id is None or revoked_at is not None),
        subject_erased=named and (row.subject_erased or identity_status in (None, "erased")),
    )


class Records:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def by_watermark(self, watermark_hex: str) -> RecordView | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(GenerationRecord).where(GenerationRecord.watermark == watermark_hex)
            )
        return record_view(row) if row else None

    async def get(self, record_id: str) -> RecordView | None:
        async with self.db.session() as session:
            row = await session.get(GenerationRecord, record_id)
        return record_view(row) if row else None

    async def _release_where(self, where: ColumnElement[bool]) -> ReleaseFacts | None:
        # The record with its grant's revocation time and its subject's status (None without one).
        query = (
            select(GenerationRecord, Grant.revoked_at, Identity.status)
            .outerjoin(Grant, Grant.id == GenerationRecord.grant_id)
            .outerjoin(Identity, Identity.id == GenerationRecord.identity_id)
            .where(where)
        )
        async with self.db.session() as session:
            found = (await session.execute(query)).first()
        if found is None:
            return None
        row, revoked_at, identity_status = found
        return _facts(row, revoked_at, identity_status)

    async def release_by_watermark(self, watermark_hex: str) -> ReleaseFacts | None:
        """What the public resolver may know of the record a payload names (no ids of people)."""
        return await self._release_where(GenerationRecord.watermark == watermark_hex)

    async def release(self, record_id: str) -> ReleaseFacts | None:
        return await self._release_where(GenerationRecord.id == record_id)
