"""Who is calling: the API key a request presents, turned into the limits that apply to it.

The `/v1/...` routes depend on `authenticate`, so a call is checked before anything else: 401
without a valid key (when `gateway.require_auth`; otherwise an unknown caller is
`anon:<client address>` under the gateway's default limits), then 429 when the key's rate limit
bucket is empty. A key's record may set its own limits (requests per minute, requests in flight,
daily spend) over the gateway's defaults.

The keys themselves (generation, hashing, the keys file) are `node.gateway.auth`'s; this module
is the request path's view of them, a FastAPI dependency over the app's `GatewayState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from node.config import GatewaySettings
from node.gateway.auth import ApiKeyRecord, extract_key
from node.gateway.errors import AuthenticationError, RateLimited
from node.gateway.state import gateway_state


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key id (never the key) and the limits that apply to it."""

    key_id: str
    per_minute: int
    max_concurrent: int
    daily_budget_wei: int | None
    admin: bool = False


def _principal(gw: GatewaySettings, key_id: str, record: ApiKeyRecord | None = None) -> Principal:
    """A caller's limits: the key record's own where it sets them, else the gateway's defaults."""
    if record is None:
        return Principal(
            key_id, gw.rate_limit_per_minute, gw.max_concurrent_per_key, gw.daily_budget_wei_per_key
        )
    budget = record.daily_budget_wei if record.daily_budget_wei is not None else gw.daily_budget_wei_per_key
    return Principal(
        key_id=record.id,
        per_minute=record.rate_limit_per_minute or gw.rate_limit_per_minute,
        max_concurrent=record.max_concurrent or gw.max_concurrent_per_key,
        daily_budget_wei=budget,
        admin=record.admin,
    )


def _anonymous(request: Request, gw: GatewaySettings, missing: bool) -> Principal:
    if gw.require_auth:
        if missing:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or "
                "`X-API-Key: <key>`; create one with `inferd gateway keys add`.",
                code="missing_api_key",
            )
        raise AuthenticationError(
            "Incorrect API key provided (unknown or revoked). `inferd gateway keys list` "
            "shows the keys this gateway accepts."
        )
    client = request.client.host if request.client else "unknown"
    return _principal(gw, f"anon:{client}")


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency: 401 without a valid key, 429 when its bucket is empty."""
    st = gateway_state(request)
    gw = st.settings.gateway
    key = extract_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    record = await st.keys.alookup(key) if key is not None else None
    who = _principal(gw, record.id, record) if record is not None else _anonymous(request, gw, key is None)
    wait = await st.limiter.hit(who.key_id, who.per_minute)
    if wait > 0:
        st.metrics.limited.labels(reason="rate").inc()
        raise RateLimited(wait, who.per_minute)
    return who


Authenticated = Annotated[Principal, Depends(authenticate)]


__all__ = ["Authenticated", "Principal", "authenticate"]
