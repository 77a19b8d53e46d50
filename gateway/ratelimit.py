"""Per-principal rate limits for generation: a token bucket per principal, in process memory.

Each gateway process keeps its own buckets, so with W workers a principal may get up to W times
the configured rate; put a shared limiter (e.g. at the proxy) in front when that matters.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from consentry.policies.errors import RateLimitedError


class TokenBuckets:
    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be positive and burst at least 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, principal_id: str) -> None:
        """Spend one token, or raise RateLimitedError saying when the next one is due."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(principal_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[principal_id] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise RateLimitedError(f"rate limit reached; retry in {wait} s", retry_after=wait)
            self._buckets[principal_id] = (tokens - 1.0, now)
