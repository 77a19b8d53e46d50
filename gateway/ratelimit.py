"""Per-principal rate limits for generation: token buckets, in process memory or shared.

:class:`TokenBuckets` keeps one process's buckets (a single worker, tests). With several workers
or replicas use :class:`RedisTokenBuckets`: every process spends from the same bucket, refilled
by the Redis server's clock in one atomic script, so N workers together never exceed the rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError, RateLimitedError, StageError


class RateLimiter(Protocol):
    async def take(self, principal_id: str) -> None:
        """Spend one token, or raise RateLimitedError saying when the next one is due."""
        ...

    async def close(self) -> None: ...


def _limited(wait_s: float) -> RateLimitedError:
    wait = max(1, math.ceil(wait_s))
    return RateLimitedError(f"rate limit reached; retry in {wait} s", retry_after=wait)


class TokenBuckets:
    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be positive and burst at least 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, last refill)
        self._lock = threading.Lock()

    def take_now(self, principal_id: str) -> None:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(principal_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[principal_id] = (tokens, now)
                raise _limited((1.0 - tokens) / self.rate)
            self._buckets[principal_id] = (tokens - 1.0, now)

    async def take(self, principal_id: str) -> None:
        self.take_now(principal_id)

    async def close(self) -> None:
        """Nothing to release."""


# KEYS[1] bucket; ARGV: rate per second, burst, ttl seconds. Returns {allowed, wait_ms}.
# The refill uses the Redis server's own clock (TIME), so replicas' clocks never disagree.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[3])
if allowed == 1 then return {1, 0} end
return {0, math.ceil((1 - tokens) / rate * 1000)}
"""


class RedisTokenBuckets:
    """Token buckets shared by every worker and replica through one Redis server."""

    def __init__(self, url: str, per_minute: float, burst: int, *, prefix: str = "consentry:rate:") -> None:
        import redis.asyncio as aioredis

        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be positive and burst at least 1")
        try:
            self._redis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        except ValueError as exc:
            raise ConfigurationError(f"invalid redis_url {url!r}", code=codes.CONFIG_REDIS_URL) from exc
        self._script = self._redis.register_script(_TAKE)
        self.rate = per_minute / 60.0
        self.burst = burst
        self.prefix = prefix
        # A full bucket is the same as no key: let idle buckets expire.
        self.ttl_s = max(60, math.ceil(burst / self.rate) * 2)

    async def take(self, principal_id: str) -> None:
        from redis.exceptions import RedisError

        try:
            allowed, wait_ms = await self._script(
                keys=[self.prefix + principal_id], args=[self.rate, self.burst, self.ttl_s]
            )
        except RedisError as exc:
            # Fail closed: without the shared limiter the gate cannot know the rate is kept.
            raise StageError(f"the rate limiter is unreachable: {exc}", code=codes.RATE_UNAVAILABLE) from exc
        if not int(allowed):
            raise _limited(int(wait_ms) / 1000.0)

    async def close(self) -> None:
        await self._redis.aclose()
