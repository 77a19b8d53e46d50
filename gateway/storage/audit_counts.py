"""How many audit events fell in a time range, by day or hour, kind and code, without reading
the events: from the ``audit_counts`` rollup (kept by a trigger at insert, migration 0006).

A range [since, until) is cut into whole UTC days (one rollup row per day, kind and code), the
whole hours at either side of them, and the partial hours at either edge, which alone are
counted from ``audit_events`` (through the ``ts`` index). The cost follows the range's length in
days plus at most two hours of events, never the log's length; all pieces run as one statement.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Select, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.audit_queries import ts_text
from consentry.gateway.storage.tables import AuditCount, AuditEvent

Row = tuple[str, str, str, int]
"""``(bucket, kind, code, events)``; ``code`` is ``''`` where the event has none."""
Source = Literal["day", "hour", "events"]
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
CHARS = {"day": 10, "hour": 13}
"""A bucket is ``ts`` cut to this many characters (``2025-01-31``, ``2025-01-31T23``)."""


def _floor(moment: datetime, step: timedelta) -> datetime:
    moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if step == DAY else moment


def _ceil(moment: datetime, step: timedelta) -> datetime:
    low = _floor(moment, step)
    return low if low == moment else low + step


def plan(since: datetime, until: datetime, days: bool) -> list[tuple[Source, datetime, datetime]]:
    """The pieces of [since, until): rollup days (when ``days``), rollup hours, and events."""
    h_lo, h_hi = _ceil(since, HOUR), _floor(until, HOUR)
    if h_lo >= h_hi:
        return [("events", since, until)] if since < until else []
    pieces: list[tuple[Source, datetime, datetime]] = []
    if since < h_lo:
        pieces.append(("events", since, h_lo))
    d_lo, d_hi = _ceil(since, DAY), _floor(until, DAY)
    if days and d_lo < d_hi:
        if h_lo < d_lo:
            pieces.append(("hour", h_lo, d_lo))
        pieces.append(("day", d_lo, d_hi))
        if d_hi < h_hi:
            pieces.append(("hour", d_hi, h_hi))
    else:
        pieces.append(("hour", h_lo, h_hi))
    if h_hi < until:
        pieces.append(("events", h_hi, until))
    return pieces


def _piece(source: Source, lo: datetime, hi: datetime, chars: int) -> Select[Any]:
    if source == "events":
        bucket = func.substr(AuditEvent.ts, 1, chars)
        return (
            select(bucket, AuditEvent.kind, func.coalesce(AuditEvent.code, ""), func.count())
            .where(AuditEvent.ts >= ts_text(lo), AuditEvent.ts < ts_text(hi))
            .group_by(bucket, AuditEvent.kind, AuditEvent.code)
        )
    bucket = func.substr(AuditCount.bucket, 1, chars)
    cut = CHARS[source]
    return (
        select(bucket, AuditCount.kind, AuditCount.code, func.sum(AuditCount.events))
        .where(
            AuditCount.unit == source,
            AuditCount.bucket >= ts_text(lo)[:cut],
            AuditCount.bucket < ts_text(hi)[:cut],
        )
        .group_by(bucket, AuditCount.kind, AuditCount.code)
    )


async def counts(s: AsyncSession, since: datetime, until: datetime, chars: int) -> list[Row]:
    """``(bucket, kind, code, events)`` of every event in [since, until), sorted; a bucket is a
    UTC day (``chars`` 10) or hour (13)."""
    pieces = [_piece(source, lo, hi, chars) for source, lo, hi in plan(since, until, chars == 10)]
    if not pieces:
        return []
    query = pieces[0] if len(pieces) == 1 else union_all(*pieces)
    total: dict[tuple[str, str, str], int] = defaultdict(int)
    for bucket, kind, code, n in (await s.execute(query)).all():
        total[(str(bucket), str(kind), str(code or ""))] += int(n)
    return sorted((b, k, c, n) for (b, k, c), n in total.items())
