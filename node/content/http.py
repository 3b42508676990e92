"""HTTP plumbing for the remote backends: capped body reads, retries with exponential backoff.

Only failures that another try may fix are retried: connection errors, timeouts, 429 and 5xx
gateway errors. A 404 or a block that fails verification is an answer, not a glitch.

Two clients, one behaviour: `request` on an httpx client (the content backends), `session_request`
on an aiohttp session, for paths that run once or twice per inference at high concurrency (the
miner's envelope fetch and delivery). httpx's pool looks at every pooled connection, with a
readability syscall for each idle one, whenever a request starts or ends; at 64 jobs at once that
cost the miner about 10x the CPU per exchange of aiohttp's connector (which web3 already brings,
and `node.chain.keepalive` already uses).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from node.content.errors import MAX_DOCUMENT_BYTES, BackendUnavailable, DocumentTooLarge

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Reply:
    """A finished HTTP exchange with its body read (at most the block limit)."""

    status: int
    body: bytes
    headers: httpx.Headers


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` extra tries after the first, waiting `base_s * 2**i` (capped, with jitter)."""

    retries: int = 3
    base_s: float = 0.2
    max_s: float = 5.0

    def delay(self, attempt: int) -> float:
        wait: float = min(self.max_s, self.base_s * (2**attempt))
        return wait * (0.5 + random.random() / 2)  # jitter so clients do not retry in lockstep


async def _capped(declared: str | None, body: AsyncIterator[bytes], limit: int) -> bytes:
    """A body read no further than `limit` bytes (a larger declared length stops it before any)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise DocumentTooLarge(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > limit:
            raise DocumentTooLarge(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


Attempt = Callable[[], Awaitable[Reply | str]]
"""One try: the reply, or why it is worth another try (a retryable status)."""


async def _with_retries(
    backend: str, url: str, policy: RetryPolicy, attempt: Attempt, transient: tuple[type[BaseException], ...]
) -> Reply:
    """`attempt` until it replies, at most `policy.retries + 1` times; BackendUnavailable after."""
    last = ""
    for n in range(policy.retries + 1):
        if n:
            await asyncio.sleep(policy.delay(n - 1))
        try:
            outcome = await attempt()
        except transient as exc:
            last = f"{type(exc).__name__} talking to {_where(url)}: {exc}".rstrip(": ")
            continue
        if isinstance(outcome, Reply):
            return outcome
        last = outcome
    raise BackendUnavailable(backend, f"{last} (after {policy.retries + 1} tries)")


async def request(
    client: httpx.AsyncClient,
    backend: str,
    method: str,
    url: str,
    policy: RetryPolicy,
    *,
    limit: int = MAX_DOCUMENT_BYTES,
    **kwargs: Any,
) -> Reply:
    """Send one request with retries; BackendUnavailable once every try failed."""

    async def attempt() -> Reply | str:
        response = await client.send(client.build_request(method, url, **kwargs), stream=True)
        try:
            if response.status_code in RETRY_STATUSES:
                return f"HTTP {response.status_code} from {_where(url)}"
            body = await _capped(response.headers.get("content-length"), response.aiter_bytes(), limit)
        finally:
            await response.aclose()
        return Reply(response.status_code, body, response.headers)

    return await _with_retries(backend, url, policy, attempt, (httpx.TransportError,))


async def session_request(
    session: aiohttp.ClientSession,
    backend: str,
    method: str,
    url: str,
    policy: RetryPolicy,
    *,
    limit: int = MAX_DOCUMENT_BYTES,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> Reply:
    """`request` on an aiohttp session: the same retries, cap and BackendUnavailable; no redirects.
    `options` go to `session.request` as they are (e.g. `proxy`, `auth`)."""

    async def attempt() -> Reply | str:
        async with session.request(
            method, url, data=data, headers=headers, allow_redirects=False, **options
        ) as response:
            if response.status in RETRY_STATUSES:
                return f"HTTP {response.status} from {_where(url)}"
            body = await _capped(response.headers.get("content-length"), response.content.iter_any(), limit)
            return Reply(response.status, body, httpx.Headers(list(response.headers.items())))

    return await _with_retries(backend, url, policy, attempt, (aiohttp.ClientError, TimeoutError))


def _where(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.netloc.decode()}{parsed.path}"


__all__ = ["RETRY_STATUSES", "Reply", "RetryPolicy", "request", "session_request"]
