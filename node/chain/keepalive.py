"""Persistent HTTP connections for web3's JSON-RPC provider.

web3.py (8.x) gives each event loop an aiohttp session whose connector is `force_close=True`: every
JSON-RPC call opens a TCP connection, sends one request and closes it. The gateway and the miner make
several calls per request and per block (gas estimate, fees, send, receipt, the log follower's
head/hash/log reads), so on a 2-core devnet the connects and closes were ~10% of each process's CPU
and 3.4 ms per call against 0.7 ms over a kept-alive connection (measured on anvil).

`keep_alive(w3)` caches a keep-alive session for the running loop in the provider's own session cache
(web3's documented `cache_async_session`), so every later call of that provider reuses connections.
A connection the node closed while idle fails the next call on it with a transport error, which the
callers already retry (`TxSender._retry`, web3's retry of read-only methods, the log follower's
backoff); `KEEPALIVE_S` stays below the idle timeouts of common nodes and proxies to make that rare.
Call it from inside the loop that will use the provider; `close(w3)` releases the session.

`request(w3, method, params)` sends one JSON-RPC call over that session directly. web3's
`make_request` looks the session up on every call under a `threading.Lock` it acquires in a
worker thread (`run_in_executor`: a thread hop and a wake-up of the loop), builds the headers and
formats two debug lines: 0.18 ms of CPU per call against 0.08 ms for the same POST (eth_blockNumber
on anvil), at ~11 calls per request in the gateway and ~6 in the miner. The direct path keeps what
web3 does with the call: the same body and headers, its timeout, its retries of read-only methods
(`exception_retry_configuration`), an HTTP error status raised by the session. It is used only for
the provider and loop `keep_alive` set up, while that session is open and the provider caches no
results (`cache_allowed_requests`); anything else goes through `make_request` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import weakref
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import ClientSession, ClientTimeout, TCPConnector
from web3 import AsyncHTTPProvider
from web3._utils.encoding import Web3JsonEncoder
from web3._utils.http import DEFAULT_HTTP_TIMEOUT
from web3.providers.rpc.utils import check_if_retry_on_failure
from web3.types import RPCEndpoint

KEEPALIVE_S = 10.0
"""How long an idle connection is kept (aiohttp's default is 15 s; nodes and proxies close at 30-120 s)."""
MAX_CONNECTIONS = 32
"""Connections per provider at most (aiohttp's default is 100): enough for a batch of concurrent calls."""


@dataclass(frozen=True)
class _Direct:
    """A provider's kept-alive session, the loop it belongs to, and the POST arguments web3 uses."""

    loop: asyncio.AbstractEventLoop
    session: ClientSession
    url: str
    kwargs: dict[str, Any]


_DIRECT: weakref.WeakKeyDictionary[AsyncHTTPProvider, _Direct] = weakref.WeakKeyDictionary()
_IDS = itertools.count()


async def keep_alive(w3: Any, *, limit: int = MAX_CONNECTIONS) -> bool:
    """Make `w3`'s HTTP provider reuse connections in the running loop; False when it is not HTTP."""
    provider = getattr(w3, "provider", None)
    if not isinstance(provider, AsyncHTTPProvider):
        return False
    session = ClientSession(
        raise_for_status=True,
        connector=TCPConnector(limit=limit, keepalive_timeout=KEEPALIVE_S, enable_cleanup_closed=True),
    )
    cached = await provider.cache_async_session(session)
    if cached is not session:  # a session was already cached for this loop: keep that one
        await session.close()
        return False
    kwargs = dict(provider.get_request_kwargs())  # headers (content type, user agent) and timeout
    kwargs.setdefault("timeout", ClientTimeout(DEFAULT_HTTP_TIMEOUT))
    _DIRECT[provider] = _Direct(asyncio.get_running_loop(), session, str(provider.endpoint_uri), kwargs)
    return True


async def request(w3: Any, method: str, params: Any) -> dict[str, Any]:
    """One JSON-RPC call and its decoded answer (`result` or `error`), over the kept-alive session
    directly when `keep_alive` set one up for this provider and loop (module docstring), else
    through the provider's `make_request`."""
    provider = w3.provider
    direct = _DIRECT.get(provider) if isinstance(provider, AsyncHTTPProvider) else None
    if (
        direct is None
        or direct.session.closed
        or provider.cache_allowed_requests
        or direct.loop is not asyncio.get_running_loop()
    ):
        return cast(dict[str, Any], await provider.make_request(RPCEndpoint(method), params))
    body = json.dumps(
        {"jsonrpc": "2.0", "method": method, "params": params or [], "id": next(_IDS)}, cls=Web3JsonEncoder
    ).encode()
    retry = provider.exception_retry_configuration
    if retry is None or not check_if_retry_on_failure(RPCEndpoint(method), retry.method_allowlist):
        return await _post(direct, body)
    errors = tuple(retry.errors)
    for attempt in range(retry.retries):  # as web3's `_make_request`
        try:
            return await _post(direct, body)
        except errors:
            if attempt == retry.retries - 1:
                raise
            await asyncio.sleep(retry.backoff_factor * 2**attempt)
    raise RuntimeError(f"{method}: no attempt (exception_retry_configuration.retries is 0)")


async def _post(direct: _Direct, body: bytes) -> dict[str, Any]:
    async with direct.session.post(direct.url, data=body, **direct.kwargs) as response:
        return cast(dict[str, Any], json.loads(await response.read()))


async def close(w3: Any) -> None:
    """Close the provider's cached sessions (the connections `keep_alive` kept)."""
    provider = getattr(w3, "provider", None)
    if isinstance(provider, AsyncHTTPProvider):
        with contextlib.suppress(Exception):
            await provider.disconnect()


__all__ = ["KEEPALIVE_S", "MAX_CONNECTIONS", "close", "keep_alive", "request"]
