"""Reads of the audit log for the console: filtered keyset pages, aggregates, signed points.

Every filter runs on an indexed column (the body copies of :mod:`audit_index`, ``kind``,
``ts``) and every page is a keyset on ``seq`` (``seq < before`` / ``seq > after``), never an
OFFSET, so the hundredth page costs what the first does. A time range is also turned into a
``seq`` range through the ``ts`` index (events are appended in time order under the audit
lock), so a filter on an old range seeks instead of walking the newest events first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import ColumnElement, Select, func, or_, select

from consentry.gateway.storage.audit_log import HEAD
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.tables import AuditCheckpoint, AuditEvent, AuditHead
from consentry.provenance.audit import ChainedEvent
from consentry.provenance.audit_signing import signature_ok

RELEASED_KIND = "generation.released"
REFUSED_KIND = "generation.refused"
GENERATION_KINDS = (RELEASED_KIND, REFUSED_KIND)
DECISION_KINDS = {"released": RELEASED_KIND, "refused": REFUSED_KIND}


def ts_text(moment: datetime) -> str:
    """A time as the audit log writes its ``ts`` (UTC, microseconds), so strings compare as times."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Every given field must match; ``None`` matches anything. ``principal_id`` matches the
    requester/grantee or the actor (as ``consentry audit export --principal`` does)."""

    identity_id: str | None = None
    principal_id: str | None = None
    decision: str | None = None
    """``released`` or ``refused`` (a generation's outcome)."""
    code: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[ChainedEvent]
    newer: int | None
    """``after`` of the page before this one (newer events), None on the newest page."""
    older: int | None
    """``before`` of the next page (older events), None on the oldest page."""


@dataclass(frozen=True, slots=True)
class HeadStatus:
    seq: int
    hash: str
    signed: bool
    """A signed head exists and its signature verifies with the gateway's audit key."""
    matches_log: bool
    """The signed head names the log's last event."""


@dataclass(frozen=True, slots=True)
class CheckpointStatus:
    checked: int
    ok: bool
    problem: str = ""
    first_bad_seq: int | None = None


def _event(row: AuditEvent) -> ChainedEvent:
    return ChainedEvent(row.seq, row.ts, row.kind, row.body, row.prev_hash, row.hash)


class AuditQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _seq_range(self, flt: EventFilter) -> tuple[int | None, int | None] | None:
        """``seq`` bounds of the time range (None: no event in it)."""
        lo = hi = None
        async with self.db.session() as session:
            if flt.since is not None:
                lo = await session.scalar(
                    select(AuditEvent.seq)
                    .where(AuditEvent.ts >= ts_text(flt.since))
                    .order_by(AuditEvent.ts)
                    .limit(1)
                )
                if lo is None:
                    return None
            if flt.until is not None:
                hi = await session.scalar(
                    select(AuditEvent.seq)
                    .where(AuditEvent.ts < ts_text(flt.until))
                    .order_by(AuditEvent.ts.desc())
                    .limit(1)
                )
                if hi is None:
                    return None
        return lo, hi

    async def _conditions(self, flt: EventFilter) -> list[ColumnElement[bool]] | None:
        """The WHERE terms of ``flt``; None when it can match nothing."""
        terms: list[ColumnElement[bool]] = []
        if flt.identity_id:
            terms.append(AuditEvent.identity_id == flt.identity_id)
        if flt.principal_id:
            terms.append(
                or_(AuditEvent.principal_id == flt.principal_id, AuditEvent.actor == flt.principal_id)
            )
        if flt.decision:
            terms.append(AuditEvent.kind == DECISION_KINDS[flt.decision])
        if flt.kind:
            terms.append(AuditEvent.kind == flt.kind)
        if flt.code:
            terms.append(AuditEvent.code == flt.code)
        if flt.since is not None or flt.until is not None:
            bounds = await self._seq_range(flt)
            if bounds is None:
                return None
            lo, hi = bounds
            if lo is not None:
                terms += [AuditEvent.seq >= lo, AuditEvent.ts >= ts_text(flt.since or datetime.min)]
            if hi is not None:
                terms += [AuditEvent.seq <= hi, AuditEvent.ts < ts_text(flt.until or datetime.max)]
        return terms

    async def page(
        self, flt: EventFilter, *, limit: int, before: int | None = None, after: int | None = None
    ) -> EventPage:
        """One page of matching events, newest first: older than ``before``, or the page just
        newer than ``after``, or the newest page."""
        terms = await self._conditions(flt)
        if terms is None:
            return EventPage([], None, None)
        query = select(AuditEvent).where(*terms)
        if after is not None:
            query = query.where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(limit + 1)
        else:
            if before is not None:
                query = query.where(AuditEvent.seq < before)
            query = query.order_by(AuditEvent.seq.desc()).limit(limit + 1)
        async with self.db.session() as session:
            rows = list((await session.scalars(query)).all())
        more = len(rows) > limit
        rows = rows[:limit]
        if after is not None:
            rows.reverse()
            newer, older = (rows[0].seq if more else None), (rows[-1].seq if rows else None)
        else:
            newer = rows[0].seq if rows and before is not None else None
            older = rows[-1].seq if more else None
        return EventPage([_event(r) for r in rows], newer, older)

    async def event(self, seq: int) -> ChainedEvent | None:
        async with self.db.session() as session:
            row = await session.get(AuditEvent, seq)
        return _event(row) if row is not None else None

    async def matching(self, flt: EventFilter, batch: int = 1000) -> AsyncIterator[ChainedEvent]:
        """Every matching event, oldest first, in keyset batches (for exports)."""
        terms = await self._conditions(flt)
        if terms is None:
            return
        after = 0
        while True:
            query = (
                select(AuditEvent).where(*terms, AuditEvent.seq > after).order_by(AuditEvent.seq).limit(batch)
            )
            async with self.db.session() as session:
                rows = (await session.scalars(query)).all()
            if not rows:
                return
            for row in rows:
                yield _event(row)
            after = rows[-1].seq

    async def grouped(
        self, since: datetime, until: datetime, bucket_chars: int = 10
    ) -> list[tuple[str, str, str, int]]:
        """``(bucket, kind, code, count)`` of every event in [since, until)."""
        bucket = func.substr(AuditEvent.ts, 1, bucket_chars).label("bucket")
        query: Select[Any] = (
            select(bucket, AuditEvent.kind, AuditEvent.code, func.count())
            .where(AuditEvent.ts >= ts_text(since), AuditEvent.ts < ts_text(until))
            .group_by(bucket, AuditEvent.kind, AuditEvent.code)
        )
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        return sorted((str(b), str(k), str(c or ""), int(n)) for b, k, c, n in rows)

    async def recent_generations_after(self, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """``(seq, body)`` of the last ``limit`` generation decisions with ``seq > after``, newest first."""
        query = (
            select(AuditEvent.seq, AuditEvent.body)
            .where(AuditEvent.kind.in_(GENERATION_KINDS), AuditEvent.seq > after)
            .order_by(AuditEvent.seq.desc())
            .limit(limit)
        )
        async with self.db.session() as session:
            return [(int(q), b) for q, b in (await session.execute(query)).all()]

    async def of_kinds(
        self, kinds: Sequence[str], since: datetime, until: datetime, limit: int = 1000
    ) -> list[ChainedEvent]:
        """Events of ``kinds`` in [since, until), oldest first (at most ``limit``)."""
        terms = await self._conditions(EventFilter(since=since, until=until))
        if terms is None:
            return []
        query = (
            select(AuditEvent).where(*terms, AuditEvent.kind.in_(kinds)).order_by(AuditEvent.seq).limit(limit)
        )
        async with self.db.session() as session:
            return [_event(r) for r in (await session.scalars(query)).all()]

    async def head(self, public_key: Ed25519PublicKey) -> HeadStatus | None:
        """The signed head, checked as a readiness probe does (constant cost)."""
        async with self.db.session() as session:
            last = (await session.execute(HEAD)).first()
            head = await session.get(AuditHead, 1)
        if head is None:
            return None
        signed = signature_ok(public_key, head.seq, head.hash, head.signature)
        matches = last is not None and (head.seq, head.hash) == (last[0], last[1])
        return HeadStatus(head.seq, head.hash, signed, matches)

    async def checkpoints(
        self, lo: int, hi: int, public_key: Ed25519PublicKey, verified: set[tuple[int, str]] | None = None
    ) -> CheckpointStatus:
        """The signed checkpoints with ``lo <= seq <= hi``: each signature verifies and each names
        the hash stored for its event. ``verified``: points whose signature was already checked
        (skipped; points that pass are added)."""
        known = verified if verified is not None else set()
        query = (
            select(AuditCheckpoint, AuditEvent.hash)
            .outerjoin(AuditEvent, AuditEvent.seq == AuditCheckpoint.seq)
            .where(AuditCheckpoint.seq >= lo, AuditCheckpoint.seq <= hi)
            .order_by(AuditCheckpoint.seq)
        )
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        for point, stored in rows:
            if (point.seq, point.hash) not in known:
                if not signature_ok(public_key, point.seq, point.hash, point.signature):
                    return CheckpointStatus(len(rows), False, "checkpoint signature invalid", point.seq)
                known.add((point.seq, point.hash))
            if stored != point.hash:
                return CheckpointStatus(len(rows), False, "checkpoint does not match the log", point.seq)
        return CheckpointStatus(len(rows), True)

    async def seq_span(self, since: datetime, until: datetime) -> tuple[int, int] | None:
        """First and last ``seq`` of the events in [since, until), or None."""
        bounds = await self._seq_range(EventFilter(since=since, until=until))
        if bounds is None or bounds[0] is None or bounds[1] is None or bounds[0] > bounds[1]:
            return None
        return bounds[0], bounds[1]
