"""Admission control: a bounded queue in front of the generate flow.

At most ``concurrency`` requests run the flow at once (one GPU does one batch at a time); at
most ``depth`` more wait. A request beyond that, or one that would wait longer than
``max_wait_s``, is refused at once with ``gate.busy`` (503 + Retry-After), never left to run
into a late ``stage.timeout`` after minutes in a queue.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from consentry.policies import codes
from consentry.policies.errors import GateBusyError


class Admission:
    def __init__(self, concurrency: int, depth: int, max_wait_s: float) -> None:
        if concurrency < 1 or depth < 0 or max_wait_s <= 0:
            raise ValueError("concurrency >= 1, depth >= 0 and max_wait_s > 0 are required")
        self.concurrency, self.depth, self.max_wait_s = concurrency, depth, max_wait_s
        self._slots = asyncio.Semaphore(concurrency)
        self.running = 0
        self.waiting = 0

    @property
    def queued(self) -> int:
        """Requests admitted and not finished: running plus waiting (the queue-depth metric)."""
        return self.running + self.waiting

    def _busy(self, why: str) -> GateBusyError:
        retry = max(1, math.ceil(self.max_wait_s))
        return GateBusyError(
            f"the gate is busy ({why}); retry later", code=codes.GATE_BUSY, retry_after=retry
        )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.running >= self.concurrency and self.waiting >= self.depth:
            raise self._busy(f"{self.running} running, {self.waiting} waiting")
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.max_wait_s)
        except TimeoutError:
            raise self._busy(f"no slot within {self.max_wait_s:g} s") from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
