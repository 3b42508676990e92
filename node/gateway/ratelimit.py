"""Per-key token buckets: bursts up to the per-minute limit, refilled continuously.

A denied call learns how long until one token is back; the gateway sends it as `Retry-After`.
Buckets live in memory (one gateway process); idle full buckets are dropped to bound memory.
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

    def _evict(self, now: float) -> None:
        """Drop buckets that have been idle long enough to be full again (they carry no state)."""
        stale = [k for k, b in self._buckets.items() if now - b.updated > 60.0]
        for k in stale:
            del self._buckets[k]
        if len(self._buckets) >= self._max_buckets:
            self._buckets.clear()


__all__ = ["RateLimiter"]
