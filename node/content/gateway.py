"""Read-only backend: raw blocks from trustless HTTP gateways, each one verified by its CID.

`GET {base}/ipfs/{cid}?format=raw` with `Accept: application/vnd.ipld.raw` (the trustless gateway
spec's raw block response). Gateways are tried in order: one that is down, lacks the block or
serves bytes that do not match the CID is skipped, so a single honest gateway is enough.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from node.content.cid import normalize_cid
from node.content.errors import (
    BackendUnavailable,
    ContentError,
    ContentNotFound,
    DocumentTooLarge,
    IntegrityError,
    ReadOnlyStore,
)
from node.content.http import RetryPolicy, request
from node.content.store import ContentStore, verify_block

RAW_MEDIA_TYPE = "application/vnd.ipld.raw"


class GatewayStore(ContentStore):
    """Fetches blocks from one or more trustless gateways (base URLs without `/ipfs`)."""

    name = "gateway"

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = 10.0,
        policy: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not urls:
            raise ValueError("the gateway backend needs at least one gateway URL (content.gateway_urls)")
        self.urls = [u.rstrip("/") for u in urls]
        self.policy = policy or RetryPolicy()
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=True)

    async def put(self, data: bytes) -> str:
        raise ReadOnlyStore(self.name)

    async def get(self, cid: str) -> bytes:
        key = normalize_cid(cid)
        failures: list[ContentError] = []
        for base in self.urls:
            try:
                return await self._get_from(base, key)
            except (ContentNotFound, IntegrityError, BackendUnavailable, DocumentTooLarge) as exc:
                failures.append(exc)
        # Report the most alarming failure: a lie beats an outage beats an absence.
        for kind in (IntegrityError, DocumentTooLarge, BackendUnavailable):
            for failure in failures:
                if isinstance(failure, kind):
                    raise failure
        raise ContentNotFound(key, f"gateways {', '.join(self.urls)}")

    async def has(self, cid: str) -> bool:
        key = normalize_cid(cid)
        for base in self.urls:
            try:
                reply = await request(
                    self._client,
                    self.name,
                    "HEAD",
                    f"{base}/ipfs/{key}",
                    self.policy,
                    params={"format": "raw"},
                    headers={"Accept": RAW_MEDIA_TYPE},
                )
            except BackendUnavailable:
                continue
            if reply.status == 200:
                return True
        return False

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def _get_from(self, base: str, cid: str) -> bytes:
        url = f"{base}/ipfs/{cid}"
        reply = await request(
            self._client,
            self.name,
            "GET",
            url,
            self.policy,
            params={"format": "raw"},
            headers={"Accept": RAW_MEDIA_TYPE},
        )
        if reply.status in (404, 410):
            raise ContentNotFound(cid, base)
        if reply.status != 200:
            raise BackendUnavailable(self.name, f"HTTP {reply.status} from {url}")
        return verify_block(cid, reply.body, f"gateway {base}")


__all__ = ["RAW_MEDIA_TYPE", "GatewayStore"]
