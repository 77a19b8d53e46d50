"""Per-process caches that keep the overview and the report fast on a large audit log.

The log is append-only and written in time order, so what a closed UTC day holds never changes:
its counts per (kind, code) are read once, in one GROUP BY, and kept. Only the open day (today)
and a range's partial edge days are read live. Stage timings keep the last N decisions and read
only what was appended since. A signed checkpoint verified once is remembered (checkpoints are
immutable; its row hash is still compared on every report).
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from consentry.gateway.storage.audit_queries import AuditQueries

Row = tuple[str, str, str, int]


def _day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


class DayRollup:
    def __init__(self, queries: AuditQueries) -> None:
        self.queries = queries
        self.days: dict[str, list[Row]] = {}
        self._lock = asyncio.Lock()

    async def rows(self, since: datetime, until: datetime) -> list[Row]:
        """``(day, kind, code, count)`` of every event in [since, until), by UTC day."""
        today = _day(datetime.now(UTC))
        lo = _day(since) if _day(since) == since else _day(since) + timedelta(days=1)
        hi = min(_day(until), today)
        if lo >= hi:  # no closed whole day in the range: all of it live
            return await self.queries.grouped(since, until, 10)
        out: list[Row] = []
        async with self._lock:
            wanted = [(lo + timedelta(days=k)).date().isoformat() for k in range((hi - lo).days)]
            missing = [d for d in wanted if d not in self.days]
            if missing:
                first = datetime.fromisoformat(missing[0]).replace(tzinfo=UTC)
                fresh = await self.queries.grouped(first, hi, 10)
                for d in missing:
                    self.days[d] = []
                for row in fresh:
                    if row[0] in self.days:
                        self.days[row[0]].append(row)
            for d in wanted:
                out += self.days[d]
        if since < lo:
            out += await self.queries.grouped(since, lo, 10)
        if hi < until:
            out += await self.queries.grouped(hi, until, 10)
        return out


class RecentTimings:
    """Stage timings of the last ``size`` generation decisions, refreshed incrementally."""

    def __init__(self, queries: AuditQueries, size: int) -> None:
        self.queries = queries
        self.size = size
        self.last_seq = 0
        self.stages: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = asyncio.Lock()

    async def bodies(self) -> list[dict[str, Any]]:
        async with self._lock:
            fresh = await self.queries.recent_generations_after(self.last_seq, self.size)
            for seq, body in reversed(fresh):
                stages = body.get("stages")
                self.stages.append(stages if isinstance(stages, dict) else {})
                self.last_seq = max(self.last_seq, seq)
            return list(self.stages)
