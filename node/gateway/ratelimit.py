"""Per-key token buckets (requests per minute) and per-key in-flight limits.

A denied call learns how long until one token is back; the gateway sends it as `Retry-After`.
Buckets live in memory (one gateway process); idle full buckets are dropped to bound memory.
Several gateways share theirs in Redis instead (`node.gateway.shared`, chosen by `gateway.redis_url`);
both implement the protocols of `node.gateway.stores`.

A rate limit bounds how often a key may start calls, not how many it holds open: a request waits
for its on-chain result for up to `request_timeout_s`, so a key could otherwise pile up minutes of
open requests (and their pending-registry entries). `ConcurrencyLimiter` caps those per key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by API key id; `take` returns 0 when allowed, else seconds to wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._max_buckets = max_buckets

    def take(self, key: str, per_minute: int, cost: float = 1.0) -> float:
        """Spend `cost` tokens from `key`'s bucket (capacity `per_minute`); seconds to wait if empty."""
        now = self._clock()
        rate = per_minute / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_buckets:
                self._evict(now)
            bucket = self._buckets[key] = _Bucket(tokens=float(per_minute), updated=now)
        else:
            bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / rate

    async def hit(self, key: str, per_minute: int) -> float:
        """`stores.RateLimits`: one call of `key`; 0 when allowed, else seconds to wait."""
        return self.take(key, per_minute)

    async def aclose(self) -> None:
        return None

    def _evict(self, now: float) -> None:
        """Drop buckets that have been idle long enough to be full again (they carry no state)."""
        stale = [k for k, b in self._buckets.items() if now - b.updated > 60.0]
        for k in stale:
            del self._buckets[k]
        if len(self._buckets) >= self._max_buckets:
            self._buckets.clear()


class Slot:
    """One in-flight request of a key; `release` is idempotent (streams release on any exit path)."""

    def __init__(self, owner: ConcurrencyLimiter, key: str) -> None:
        self._owner = owner
        self._key = key
        self._released = False

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._release(self._key)


class ConcurrencyLimiter:
    """Counts in-flight requests per key; `acquire` returns None when the key is at its limit."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    async def acquire(self, key: str, limit: int) -> Slot | None:
        """`stores.InFlightLimits`: a slot, or None when `key` holds `limit` already."""
        count = self._in_flight.get(key, 0)
        if count >= limit:
            return None
        self._in_flight[key] = count + 1
        return Slot(self, key)

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    async def held(self, key: str) -> int:
        return self.in_flight(key)

    async def aclose(self) -> None:
        return None

    def _release(self, key: str) -> None:
        count = self._in_flight.get(key, 0) - 1
        if count > 0:
            self._in_flight[key] = count
        else:
            self._in_flight.pop(key, None)


__all__ = ["ConcurrencyLimiter", "RateLimiter", "Slot"]
