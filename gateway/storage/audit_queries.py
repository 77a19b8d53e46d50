"""Reads of the audit log for the console: filtered keyset pages, counts, signed points.

Every filter runs on an indexed column (the body copies of :mod:`audit_index`, ``kind``,
``ts``) and every page is a keyset on ``seq`` (``seq < before`` / ``seq > after``), never an
OFFSET, so the hundredth page costs what the first does. A time range is also turned into a
``seq`` range through the ``ts`` index (events are appended in time order under the audit
lock), so a filter on an old range seeks instead of walking the newest events first. Counts come
from the ``audit_counts`` rollup (:mod:`audit_counts`), not from the events.

Every method takes the caller's session: a console request runs all its reads on one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import ColumnElement, Select, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from consentry.gateway.storage.db import Database
from consentry.gateway.storage.tables import AuditCheckpoint, AuditEvent, AuditHead, Identity, Principal
from consentry.provenance.audit import ChainedEvent
from consentry.provenance.audit_signing import signature_ok

RELEASED_KIND = "generation.released"
REFUSED_KIND = "generation.refused"
GENERATION_KINDS = (RELEASED_KIND, REFUSED_KIND)
DECISION_KINDS = {"released": RELEASED_KIND, "refused": REFUSED_KIND}
EVENT_COLUMNS = (
    AuditEvent.seq,
    AuditEvent.ts,
    AuditEvent.kind,
    AuditEvent.body,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)
"""An event as :class:`ChainedEvent` takes it (plain rows: no ORM objects to build)."""


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
    names: dict[str, str]
    """Principal id -> name, for the principals and actors of the page's events."""
    labels: dict[str, str]
    """Identity id -> label, for the identities of the page's events."""


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


def _event(row: Any) -> ChainedEvent:
    return ChainedEvent(row[0], row[1], row[2], row[3], row[4], row[5])


def _first_seq(since: datetime) -> Select[Any]:
    return select(AuditEvent.seq).where(AuditEvent.ts >= ts_text(since)).order_by(AuditEvent.ts).limit(1)


def _last_seq(until: datetime) -> Select[Any]:
    return (
        select(AuditEvent.seq).where(AuditEvent.ts < ts_text(until)).order_by(AuditEvent.ts.desc()).limit(1)
    )


class AuditQueries:
    def __init__(self, db: Database) -> None:
        self.db = db
        """Only for :meth:`matching`, whose stream outlives the request that started it."""

    async def seq_range(self, s: AsyncSession, flt: EventFilter) -> tuple[int | None, int | None] | None:
        """``seq`` bounds of the time range, in one statement (None: no event in it)."""
        if flt.since is None and flt.until is None:
            return None, None
        lo_q = _first_seq(flt.since).scalar_subquery() if flt.since is not None else None
        hi_q = _last_seq(flt.until).scalar_subquery() if flt.until is not None else None
        row = (await s.execute(select(*[q for q in (lo_q, hi_q) if q is not None]))).one()
        values = iter(row)
        lo = next(values) if lo_q is not None else None
        hi = next(values) if hi_q is not None else None
        if (flt.since is not None and lo is None) or (flt.until is not None and hi is None):
            return None
        return lo, hi

    async def _conditions(self, s: AsyncSession, flt: EventFilter) -> list[ColumnElement[bool]] | None:
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
            bounds = await self.seq_range(s, flt)
            if bounds is None:
                return None
            lo, hi = bounds
            if lo is not None:
                terms += [AuditEvent.seq >= lo, AuditEvent.ts >= ts_text(flt.since or datetime.min)]
            if hi is not None:
                terms += [AuditEvent.seq <= hi, AuditEvent.ts < ts_text(flt.until or datetime.max)]
        return terms

    async def page(
        self,
        s: AsyncSession,
        flt: EventFilter,
        *,
        limit: int,
        before: int | None = None,
        after: int | None = None,
    ) -> EventPage:
        """One page of matching events, newest first: older than ``before``, or the page just
        newer than ``after``, or the newest page; with the names and labels it shows (joined:
        one statement for the page)."""
        terms = await self._conditions(s, flt)
        if terms is None:
            return EventPage([], None, None, {}, {})
        requester, actor = aliased(Principal), aliased(Principal)
        query = (
            select(*EVENT_COLUMNS, AuditEvent.principal_id, requester.name, AuditEvent.actor, actor.name)
            .add_columns(AuditEvent.identity_id, Identity.label)
            .outerjoin(requester, requester.id == AuditEvent.principal_id)
            .outerjoin(actor, actor.id == AuditEvent.actor)
            .outerjoin(Identity, Identity.id == AuditEvent.identity_id)
            .where(*terms)
        )
        if after is not None:
            query = query.where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(limit + 1)
        else:
            if before is not None:
                query = query.where(AuditEvent.seq < before)
            query = query.order_by(AuditEvent.seq.desc()).limit(limit + 1)
        rows = list((await s.execute(query)).all())
        more = len(rows) > limit
        rows = rows[:limit]
        if after is not None:
            rows.reverse()
            newer, older = (rows[0].seq if more else None), (rows[-1].seq if rows else None)
        else:
            newer = rows[0].seq if rows and before is not None else None
            older = rows[-1].seq if more else None
        names = {r[k]: r[k + 1] for r in rows for k in (6, 8) if r[k] is not None and r[k + 1] is not None}
        labels = {r[10]: r[11] for r in rows if r[10] is not None and r[11] is not None}
        return EventPage([_event(r) for r in rows], newer, older, names, labels)

    async def event(self, s: AsyncSession, seq: int) -> ChainedEvent | None:
        row = (await s.execute(select(*EVENT_COLUMNS).where(AuditEvent.seq == seq))).first()
        return _event(row) if row is not None else None

    async def matching(self, flt: EventFilter, batch: int = 1000) -> AsyncIterator[ChainedEvent]:
        """Every matching event, oldest first, in keyset batches (for exports). The stream
        outlives the request that started it and a client may read it slowly: each batch checks
        a connection out only while it reads, so a slow download holds no pooled connection."""
        async with self.db.session() as s:
            terms = await self._conditions(s, flt)
        if terms is None:
            return
        after = 0
        while True:
            query = (
                select(*EVENT_COLUMNS)
                .where(*terms, AuditEvent.seq > after)
                .order_by(AuditEvent.seq)
                .limit(batch)
            )
            async with self.db.session() as s:
                rows = (await s.execute(query)).all()
            if not rows:
                return
            for row in rows:
                yield _event(row)
            after = rows[-1][0]

    async def recent_generations_after(
        self, s: AsyncSession, after: int, limit: int
    ) -> list[tuple[int, dict[str, Any]]]:
        """``(seq, body)`` of the last ``limit`` generation decisions with ``seq > after``, newest first."""
        query = (
            select(AuditEvent.seq, AuditEvent.body)
            .where(AuditEvent.kind.in_(GENERATION_KINDS), AuditEvent.seq > after)
            .order_by(AuditEvent.seq.desc())
            .limit(limit)
        )
        return [(int(q), b) for q, b in (await s.execute(query)).all()]

    async def of_kinds(
        self,
        s: AsyncSession,
        kinds: Sequence[str],
        span: tuple[int, int],
        since: datetime,
        until: datetime,
        limit: int,
    ) -> tuple[list[ChainedEvent], dict[str, str]]:
        """The first ``limit`` events of ``kinds`` in [since, until) (whose ``seq`` range is
        ``span``, from :meth:`seq_span`), oldest first, and the names of their actors. One index
        range per kind (``kind, seq``), merged: rare kinds are not found by walking every event
        of the range."""
        terms = [
            AuditEvent.seq >= span[0],
            AuditEvent.seq <= span[1],
            AuditEvent.ts >= ts_text(since),
            AuditEvent.ts < ts_text(until),
        ]
        parts = [
            select(*EVENT_COLUMNS, AuditEvent.actor)
            .where(AuditEvent.kind == kind, *terms)
            .order_by(AuditEvent.seq)
            .limit(limit)
            .subquery()
            for kind in kinds
        ]
        if not parts:
            return [], {}
        merged = union_all(*[select(*p.c) for p in parts]).subquery()
        actor = aliased(Principal)
        query = (
            select(*merged.c, actor.name)
            .outerjoin(actor, actor.id == merged.c.actor)
            .order_by(merged.c.seq)
            .limit(limit)
        )
        rows = (await s.execute(query)).all()
        names = {r[6]: r[7] for r in rows if r[6] is not None and r[7] is not None}
        return [_event(r) for r in rows], names

    async def head(self, s: AsyncSession, public_key: Ed25519PublicKey) -> HeadStatus | None:
        """The signed head, checked as a readiness probe does (constant cost, one statement)."""
        last = select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1).subquery()
        query = (
            select(AuditHead.seq, AuditHead.hash, AuditHead.signature, last.c.seq, last.c.hash)
            .outerjoin(last, last.c.seq == AuditHead.seq)
            .where(AuditHead.id == 1)
        )
        row = (await s.execute(query)).first()
        if row is None:
            return None
        seq, digest, signature, last_seq, last_hash = row
        signed = signature_ok(public_key, seq, digest, signature)
        # Joined on seq: a head that names anything but the last event finds no row to match.
        return HeadStatus(seq, digest, signed, (seq, digest) == (last_seq, last_hash))

    async def checkpoints(
        self,
        s: AsyncSession,
        lo: int,
        hi: int,
        public_key: Ed25519PublicKey,
        verified: set[tuple[int, str]] | None = None,
    ) -> CheckpointStatus:
        """The signed checkpoints with ``lo <= seq <= hi``: each signature verifies and each names
        the hash stored for its event. ``verified``: points whose signature was already checked
        (skipped; points that pass are added)."""
        known = verified if verified is not None else set()
        query = (
            select(AuditCheckpoint.seq, AuditCheckpoint.hash, AuditCheckpoint.signature, AuditEvent.hash)
            .outerjoin(AuditEvent, AuditEvent.seq == AuditCheckpoint.seq)
            .where(AuditCheckpoint.seq >= lo, AuditCheckpoint.seq <= hi)
            .order_by(AuditCheckpoint.seq)
        )
        rows = (await s.execute(query)).all()
        for seq, digest, signature, stored in rows:
            if (seq, digest) not in known:
                if not signature_ok(public_key, seq, digest, signature):
                    return CheckpointStatus(len(rows), False, "checkpoint signature invalid", seq)
                known.add((seq, digest))
            if stored != digest:
                return CheckpointStatus(len(rows), False, "checkpoint does not match the log", seq)
        return CheckpointStatus(len(rows), True)

    async def seq_span(self, s: AsyncSession, since: datetime, until: datetime) -> tuple[int, int] | None:
        """First and last ``seq`` of the events in [since, until), or None."""
        bounds = await self.seq_range(s, EventFilter(since=since, until=until))
        if bounds is None or bounds[0] is None or bounds[1] is None or bounds[0] > bounds[1]:
            return None
        return bounds[0], bounds[1]
