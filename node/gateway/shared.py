"""The gateway's shared state in Redis, so several gateways behind one load balancer act as one.

With `gateway.redis_url` set, every gateway process counts the same rate limits, in-flight slots,
daily spend and API keys (the protocols of `node.gateway.stores`):

- rate limits: `limits`' moving window in Redis: at most `per_minute` calls of a key in any 60 s,
  whichever gateway took them;
- in-flight slots: one sorted set per key whose members are leases scored by their expiry, taken
  by a Lua script under Redis's clock; a gateway that dies holding slots frees them when their
  lease runs out (`stores.lease_seconds`), not never;
- spend: settled wei per key and for the wallet in one hash per UTC day, and open reservations
  (leases too) per key; read-check-write under WATCH/MULTI with Python's exact integers, because
  Lua numbers are doubles (wei are not exact above 2^53) and INCRBY stops at 2^63;
- API keys: a hash of sha256 → record, so `inferd gateway keys add|revoke` reaches every gateway
  at once. Management is sync (CLI); lookups are async.

Redis being down makes calls fail 503 `shared_state_unavailable`, never open up.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from node.gateway.auth import ApiKeyRecord, KeyFileError, UnknownKey, hash_key, new_key
from node.gateway.budget import TOTAL, Budget, Reservation, seconds_to_utc_midnight
from node.gateway.errors import GatewayBudgetExhausted, InsufficientQuota, ServiceUnavailable
from node.log import get_logger, register_secret

log = get_logger("gateway.shared")

T = TypeVar("T")

SPEND_TTL_S = 3 * 86_400
"""A day's spend hash outlives its day by two (for late settlements and for operators to read)."""
OWNER_TTL_S = 90 * 86_400
"""How long `GET /v1/inferences/{id}` still knows who made a request."""


class SharedStateUnavailable(ServiceUnavailable):
    """503: Redis, where this gateway shares limits and spend with its peers, cannot be reached."""

    code = "shared_state_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "This gateway cannot reach its shared state store right now; try again shortly.",
            headers={"Retry-After": "1"},
        )


class KeyStoreUnreachable(KeyFileError):
    """The API keys live in Redis and Redis cannot be reached: the gateway and the CLI stop here."""


async def _guard(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run one Redis operation; a Redis failure becomes a 503 (logged without the URL)."""
    try:
        return await call()
    except (redis.RedisError, StorageError, OSError) as exc:
        log.warning("shared_state_unavailable", op=what, error=type(exc).__name__)
        raise SharedStateUnavailable() from exc


def connect(url: str) -> aredis.Redis:
    """An asyncio client (its own pool) for `redis://`, `rediss://` or `unix://` URLs; the password
    is registered with the log redactor."""
    password = urlsplit(url).password
    if password:
        register_secret(password)
    register_secret(url)
    client: aredis.Redis = aredis.Redis.from_url(url, decode_responses=True)
    return client


# ------------------------------------------------------------------ rate limits


class RedisRateLimiter:
    """`RateLimits` in Redis: a moving window of 60 s per key (the `limits` library)."""

    def __init__(self, client: aredis.Redis, prefix: str) -> None:
        # `limits` talks through this gateway's own pool (the URI then names only the driver).
        self._storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=f"{prefix}:rate",
            wrap_exceptions=True,
            connection_pool=client.connection_pool,  # type: ignore[arg-type]  # limits passes it on
        )
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._items: dict[int, RateLimitItem] = {}

    async def hit(self, key: str, per_minute: int) -> float:
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)

        async def take() -> float:
            if await self._limiter.hit(item, key):
                return 0.0
            stats = await self._limiter.get_window_stats(item, key)
            return max(0.001, stats.reset_time - time.time())

        return await _guard("rate_limit", take)

    async def aclose(self) -> None:
        return None


# ------------------------------------------------------------------ in-flight slots

# KEYS[1]: the key's lease set. ARGV: limit, lease in ms, lease id. Scores are expiry times (ms,
# Redis's clock, so gateways with skewed clocks agree); expired leases are dropped first.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
_HELD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""


@dataclass
class RedisLease:
    """One shared in-flight slot; released on every exit path, or by its expiry."""

    client: aredis.Redis = field(repr=False)
    key: str
    member: str
    released: bool = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            await self.client.zrem(self.key, self.member)
        except (redis.RedisError, OSError) as exc:  # the lease expires on its own
            log.warning("shared_lease_release_failed", error=type(exc).__name__)


class RedisInFlight:
    """`InFlightLimits` in Redis: leases per key that a crashed gateway cannot hold forever."""

    def __init__(self, client: aredis.Redis, prefix: str, lease_s: float) -> None:
        self._client = client
        self._prefix = prefix
        self._lease_ms = int(lease_s * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._held = client.register_script(_HELD)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:inflight:{key}"

    async def acquire(self, key: str, limit: int) -> RedisLease | None:
        member = secrets.token_hex(8)
        zkey = self._key(key)
        args: list[str | int] = [limit, self._lease_ms, member]
        got = await _guard("in_flight", lambda: self._acquire(keys=[zkey], args=args))
        return RedisLease(self._client, zkey, member) if int(got) == 1 else None

    async def held(self, key: str) -> int:
        return int(await _guard("in_flight", lambda: self._held(keys=[self._key(key)])))

    async def aclose(self) -> None:
        return None


# ------------------------------------------------------------------ spend and owners


@dataclass
class SharedReservation(Reservation):
    """A reservation that lives in Redis under `rid` until settled or expired."""

    rid: str = ""


def _live(held: dict[str, str], now: float) -> tuple[int, list[str]]:
    """Sum of unexpired reservations (`"wei:until"`), and the ids of expired ones."""
    total, dead = 0, []
    for rid, value in held.items():
        wei, _, until = value.partition(":")
        if float(until) > now:
            total += int(wei)
        else:
            dead.append(rid)
    return total, dead


class RedisSpendLedger:
    """`SpendLedgers` in Redis: exact wei, atomic across gateways (WATCH/MULTI, retried on a race)."""

    def __init__(
        self, client: aredis.Redis, prefix: str, lease_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._lease_s = lease_s
        self._clock = clock
        self._gas_hint: dict[int, int] = {}

    def _day(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%d")

    def _spent_key(self) -> str:
        return f"{self._prefix}:spent:{self._day()}"

    def _held_key(self, key_id: str) -> str:
        return f"{self._prefix}:held:{key_id}"

    async def _transact(self, what: str, watch: list[str], body: Callable[[Any], Awaitable[None]]) -> None:
        """Run `body(pipe)` (reads, then `pipe.multi()` and writes) until no watched key changed."""

        async def run() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(*watch)
                        await body(pipe)
                        await pipe.execute()
                        return
                    except redis.WatchError:
                        continue

        await _guard(what, run)

    async def areserve(self, key_id: str, wei: int, budget: Budget) -> Reservation:
        spent_key, held_key, held_total = self._spent_key(), self._held_key(key_id), self._held_key(TOTAL)
        rid = secrets.token_hex(8)

        async def body(pipe: Any) -> None:
            now = self._clock()
            spent = await pipe.hmget(spent_key, [key_id, TOTAL])
            mine, mine_dead = _live(await pipe.hgetall(held_key), now)
            all_, all_dead = _live(await pipe.hgetall(held_total), now)
            retry = seconds_to_utc_midnight(now)
            if budget.key_wei is not None and int(spent[0] or 0) + mine + wei > budget.key_wei:
                raise InsufficientQuota(budget.key_wei, retry)
            if budget.total_wei is not None and int(spent[1] or 0) + all_ + wei > budget.total_wei:
                raise GatewayBudgetExhausted(retry)
            entry = f"{wei}:{now + self._lease_s}"
            pipe.multi()
            for key, dead in ((held_key, mine_dead), (held_total, all_dead)):
                if dead:
                    pipe.hdel(key, *dead)
                pipe.hset(key, rid, entry)
                pipe.expire(key, int(self._lease_s) + 1)

        await self._transact("reserve", [spent_key, held_key, held_total], body)
        return SharedReservation(key_id=key_id, wei=wei, rid=rid)

    async def asettle(self, reservation: Reservation, actual_wei: int | None) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        rid = reservation.rid if isinstance(reservation, SharedReservation) else ""
        paid = reservation.wei if actual_wei is None else actual_wei
        spent_key = self._spent_key()
        key_id = reservation.key_id

        async def body(pipe: Any) -> None:
            spent = await pipe.hmget(spent_key, [key_id, TOTAL])
            pipe.multi()
            pipe.hdel(self._held_key(key_id), rid)
            pipe.hdel(self._held_key(TOTAL), rid)
            if paid > 0:
                pipe.hset(spent_key, mapping={key_id: str(int(spent[0] or 0) + paid),
                                              TOTAL: str(int(spent[1] or 0) + paid)})  # fmt: skip
                pipe.expire(spent_key, SPEND_TTL_S)

        try:
            await self._transact("settle", [spent_key], body)
        except SharedStateUnavailable:
            # The transaction is out and paid: the call still answers. Its reservation stays counted
            # until its lease ends; what was paid is in the log for the operator to reconcile.
            log.error("shared_spend_unsettled", key_id=key_id, wei=paid)

    async def aspent(self, key_id: str) -> int:
        value = await _guard("spent", lambda: self._client.hget(self._spent_key(), key_id))
        return int(value or 0)

    async def arecord_owner(self, chain_id: int, request_id: int, key_id: str) -> None:
        key = f"{self._prefix}:owner:{chain_id}:{request_id}"
        try:
            await _guard("owner", lambda: self._client.set(key, key_id, ex=OWNER_TTL_S))
        except SharedStateUnavailable:  # the call still answers; only its record stays admin-only
            log.error("shared_owner_unrecorded", key_id=key_id, chain_id=chain_id, request_id=request_id)

    async def aowner(self, chain_id: int, request_id: int) -> str | None:
        key = f"{self._prefix}:owner:{chain_id}:{request_id}"
        value = await _guard("owner", lambda: self._client.get(key))
        return None if value is None else str(value)

    def gas_hint(self, chain_id: int) -> int:
        return self._gas_hint.get(chain_id, 0)

    def observe_gas(self, chain_id: int, gas_wei: int) -> None:
        old = self._gas_hint.get(chain_id, 0)
        self._gas_hint[chain_id] = gas_wei if gas_wei >= old else (3 * old + gas_wei) // 4

    async def aclose(self) -> None:
        return None


# ------------------------------------------------------------------ API keys


class RedisKeyStore:
    """`ApiKeys` in a Redis hash (sha256 → record JSON): every gateway sees an added or revoked key
    on its next request. `add`/`list`/`revoke` use a sync client (CLI); `alookup` the async one."""

    def __init__(self, url: str, prefix: str, client: aredis.Redis | None = None) -> None:
        self._url = url
        self._hash = f"{prefix}:keys"
        self._async = client
        self._sync: redis.Redis | None = None
        self.path = f"redis {self._hash}"
        """Where the keys live, for messages (never the URL: it may hold a password)."""

    def _client(self) -> redis.Redis:
        if self._sync is None:
            connect(self._url)  # registers the password with the redactor
            self._sync = redis.Redis.from_url(self._url, decode_responses=True)
        return self._sync

    def _call(self, op: Callable[[redis.Redis], T]) -> T:
        try:
            return op(self._client())
        except (redis.RedisError, OSError) as exc:
            where = urlsplit(self._url)
            raise KeyStoreUnreachable(
                f"cannot reach Redis at {where.hostname}:{where.port} for the API keys "
                f"({type(exc).__name__}); check gateway.redis_url and that Redis is up"
            ) from exc

    def add(
        self,
        name: str = "",
        rate_limit_per_minute: int | None = None,
        *,
        max_concurrent: int | None = None,
        daily_budget_wei: int | None = None,
        admin: bool = False,
    ) -> tuple[str, ApiKeyRecord]:
        key, record = new_key(
            name,
            rate_limit_per_minute,
            max_concurrent=max_concurrent,
            daily_budget_wei=daily_budget_wei,
            admin=admin,
        )
        self._call(lambda c: c.hset(self._hash, record.hash, record.model_dump_json()))
        return key, record

    def list(self) -> list[ApiKeyRecord]:
        values: dict[str, str] = self._call(lambda c: c.hgetall(self._hash))  # type: ignore[arg-type,return-value]
        records = [ApiKeyRecord.model_validate_json(v) for v in values.values()]
        return sorted(records, key=lambda r: (r.created, r.id))

    def revoke(self, key_id: str) -> ApiKeyRecord:
        for rec in self.list():
            if rec.id == key_id:
                rec.revoked = True
                rec.revoked_at = int(time.time())
                field, value = rec.hash, rec.model_dump_json()
                self._call(lambda c: c.hset(self._hash, field, value))  # noqa: B023 (called at once)
                return rec
        raise UnknownKey(f"no API key with id {key_id!r}; `inferd gateway keys list` shows them")

    async def alookup(self, key: str) -> ApiKeyRecord | None:
        if self._async is None:
            self._async = connect(self._url)
        client = self._async
        raw = await _guard("keys", lambda: client.hget(self._hash, hash_key(key)))
        if raw is None:
            return None
        rec = ApiKeyRecord.model_validate_json(raw)
        return None if rec.revoked else rec

    async def aclose(self) -> None:
        if self._sync is not None:
            self._sync.close()


__all__ = [
    "KeyStoreUnreachable",
    "RedisInFlight",
    "RedisKeyStore",
    "RedisLease",
    "RedisRateLimiter",
    "RedisSpendLedger",
    "SharedReservation",
    "SharedStateUnavailable",
    "connect",
]
