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
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import ClientSession, TCPConnector
from web3 import AsyncHTTPProvider

KEEPALIVE_S = 10.0
"""How long an idle connection is kept (aiohttp's default is 15 s; nodes and proxies close at 30-120 s)."""
MAX_CONNECTIONS = 32
"""Connections per provider at most (aiohttp's default is 100): enough for a batch of concurrent calls."""


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
    return True


async def close(w3: Any) -> None:
    """Close the provider's cached sessions (the connections `keep_alive` kept)."""
    provider = getattr(w3, "provider", None)
    if isinstance(provider, AsyncHTTPProvider):
        with contextlib.suppress(Exception):
            await provider.disconnect()


__all__ = ["KEEPALIVE_S", "MAX_CONNECTIONS", "close", "keep_alive"]
