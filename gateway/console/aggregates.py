"""Stage timings of the last N generation decisions, kept per process and refreshed
incrementally: each overview reads only the decisions appended since the last one.

(Counts per day and hour need no cache: they come from the ``audit_counts`` rollup, see
:mod:`consentry.gateway.storage.audit_counts`.)
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.audit_queries import AuditQueries


class RecentTimings:
    """Stage timings of the last ``size`` generation decisions, refreshed incrementally."""

    def __init__(self, queries: AuditQueries, size: int) -> None:
        self.queries = queries
        self.size = size
        self.last_seq = 0
        self.stages: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = asyncio.Lock()

    async def bodies(self, s: AsyncSession) -> list[dict[str, Any]]:
        async with self._lock:
            fresh = await self.queries.recent_generations_after(s, self.last_seq, self.size)
            for seq, body in reversed(fresh):
                stages = body.get("stages")
                self.stages.append(stages if isinstance(stages, dict) else {})
                self.last_seq = max(self.last_seq, seq)
            return list(self.stages)
