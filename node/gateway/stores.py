"""Where a gateway keeps what several gateways behind one load balancer must agree on.

Four kinds of state decide whether a call may proceed: the key's rate limit, its requests in
flight, the day's spend (per key and for the wallet) with the owner of each request, and the API
keys themselves. Each kind is one protocol here with two implementations, picked by
`gateway.redis_url`:

- `RateLimits`: `ratelimit.RateLimiter` (token buckets in memory), or `shared.RedisRateLimiter`
  (the `limits` library's moving window);
- `InFlightLimits`: `ratelimit.ConcurrencyLimiter` (counters in memory), or `shared.RedisInFlight`
  (leases that expire, so a crashed gateway's slots come back);
- `SpendLedgers`: `budget.SpendLedger` (SQLite), or `shared.RedisSpendLedger` (WATCH/MULTI, exact wei);
- `ApiKeys`: `auth.KeyStore` (a JSON file), or `shared.RedisKeyStore` (a Redis hash).

The request path is async (`hit`, `acquire`, `areserve`, `alookup`, ...); key management (`add`,
`list`, `revoke`) is sync because the CLI and the devnet call it outside any event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from node.config import Settings
from node.gateway.auth import ApiKeyRecord, KeyStore, default_keys_path
from node.gateway.budget import Budget, Reservation, SpendLedger, default_ledger_path
from node.gateway.ratelimit import ConcurrencyLimiter, RateLimiter


class RateLimits(Protocol):
    """How often a key may start calls."""

    async def hit(self, key: str, per_minute: int) -> float:
        """Count one call of `key`; 0 when allowed, else seconds until one is (`Retry-After`)."""
        ...

    async def aclose(self) -> None: ...


class Lease(Protocol):
    """One request in flight; `release` is idempotent (streams release on every exit path)."""

    async def release(self) -> None: ...


class InFlightLimits(Protocol):
    """How many calls a key holds open at once."""

    async def acquire(self, key: str, limit: int) -> Lease | None:
        """A slot for one call of `key`, or None when it already holds `limit`."""
        ...

    async def held(self, key: str) -> int:
        """Slots `key` holds now."""
        ...

    async def aclose(self) -> None: ...


class SpendLedgers(Protocol):
    """The day's spend per key and for the wallet (reserved, then settled), and request owners."""

    async def areserve(self, key_id: str, wei: int, budget: Budget) -> Reservation:
        """Set `wei` aside or raise InsufficientQuota / GatewayBudgetExhausted."""
        ...

    async def asettle(self, reservation: Reservation, actual_wei: int | None) -> None:
        """Replace a reservation by what was really paid (None: unknown, the reservation stands)."""
        ...

    async def aspent(self, key_id: str) -> int:
        """Settled spend today (wei); `budget.TOTAL` for the whole wallet."""
        ...

    async def arecord_owner(self, chain_id: int, request_id: int, key_id: str) -> None: ...

    async def aowner(self, chain_id: int, request_id: int) -> str | None: ...

    def gas_hint(self, chain_id: int) -> int:
        """What a request transaction cost lately on this chain (this process's estimate)."""
        ...

    def observe_gas(self, chain_id: int, gas_wei: int) -> None: ...

    async def aclose(self) -> None: ...


class ApiKeys(Protocol):
    """The API keys a gateway accepts (stored as hashes only)."""

    def add(
        self,
        name: str = "",
        rate_limit_per_minute: int | None = None,
        *,
        max_concurrent: int | None = None,
        daily_budget_wei: int | None = None,
        admin: bool = False,
    ) -> tuple[str, ApiKeyRecord]: ...

    def list(self) -> list[ApiKeyRecord]: ...

    def revoke(self, key_id: str) -> ApiKeyRecord: ...

    async def alookup(self, key: str) -> ApiKeyRecord | None:
        """The active record of a presented key, or None (unknown or revoked)."""
        ...


@dataclass
class GatewayStores:
    """The four stores of one gateway process."""

    limiter: RateLimits
    in_flight: InFlightLimits
    ledger: SpendLedgers
    keys: ApiKeys
    close: Callable[[], Awaitable[None]] | None = None
    """What else to close at shutdown (the shared Redis connection pool)."""

    async def aclose(self) -> None:
        for store in (self.limiter, self.in_flight, self.ledger):
            await store.aclose()
        closer = getattr(self.keys, "aclose", None)
        if closer is not None:
            await closer()
        if self.close is not None:
            await self.close()


def lease_seconds(settings: Settings) -> float:
    """How long a shared in-flight slot or reservation outlives a gateway that crashed holding it:
    longer than any call can last (its body, then its wait for the chain), plus a minute."""
    gw = settings.gateway
    return gw.body_timeout_s + gw.request_timeout_s + 60.0


def open_keys(settings: Settings) -> ApiKeys:
    """The API keys store `settings` name: Redis when `gateway.redis_url` is set, else the file."""
    gw = settings.gateway
    if gw.redis_url is not None:
        from node.gateway.shared import RedisKeyStore

        return RedisKeyStore(gw.redis_url.get_secret_value(), gw.redis_prefix)
    return KeyStore(gw.keys_path or default_keys_path(settings.data_dir))


def open_stores(
    settings: Settings,
    *,
    keys: ApiKeys | None = None,
    limiter: RateLimits | None = None,
    ledger: SpendLedgers | None = None,
) -> GatewayStores:
    """The stores `settings` name, except those given: local ones, or shared ones in Redis when
    `gateway.redis_url` is set (one connection pool per call, connecting on first use)."""
    gw = settings.gateway
    if gw.redis_url is None:
        return GatewayStores(
            limiter=limiter or RateLimiter(),
            in_flight=ConcurrencyLimiter(),
            ledger=ledger or SpendLedger(gw.ledger_path or default_ledger_path(settings.data_dir)),
            keys=keys or open_keys(settings),
        )
    from node.gateway.shared import (
        RedisInFlight,
        RedisKeyStore,
        RedisRateLimiter,
        RedisSpendLedger,
        connect,
    )

    url, prefix, lease = gw.redis_url.get_secret_value(), gw.redis_prefix, lease_seconds(settings)
    client = connect(url)
    return GatewayStores(
        limiter=limiter or RedisRateLimiter(client, prefix),
        in_flight=RedisInFlight(client, prefix, lease),
        ledger=ledger or RedisSpendLedger(client, prefix, lease),
        keys=keys or RedisKeyStore(url, prefix, client),
        close=client.aclose,
    )


__all__ = [
    "ApiKeys",
    "GatewayStores",
    "InFlightLimits",
    "Lease",
    "RateLimits",
    "SpendLedgers",
    "lease_seconds",
    "open_keys",
    "open_stores",
]
