"""Backend on a Kubo node through its HTTP RPC (`/api/v0`), over async httpx.

`ipfshttpclient` refuses every Kubo since 0.9 and is unmaintained, so the few RPC calls we need
are made directly: `block/put` (raw codec, sha2-256, pinned), `block/get`, `block/stat` (offline,
for `has`) and `pin/add`. Kubo answers errors as HTTP 500 with `{"Message": ...}`. The CID Kubo
returns on put is checked against the one computed here, and every read is verified.
"""

from __future__ import annotations

import json

import httpx

from node.content.cid import cid_for_bytes, normalize_cid
from node.content.errors import BackendUnavailable, ContentNotFound, IntegrityError
from node.content.http import Reply, RetryPolicy, request
from node.content.store import ContentStore, check_size, verify_block

_NOT_FOUND_HINTS = ("not found", "could not find", "deadline exceeded", "context canceled")


def _kubo_message(reply: Reply) -> str:
    try:
        data = json.loads(reply.body)
    except ValueError:
        return reply.body[:200].decode("utf-8", "replace")
    message = data.get("Message") if isinstance(data, dict) else None
    if isinstance(message, str):
        return message
    return reply.body[:200].decode("utf-8", "replace")


class KuboStore(ContentStore):
    """Blocks in a Kubo node; `api` is the RPC base URL, e.g. `http://127.0.0.1:5001`."""

    name = "kubo"

    def __init__(
        self,
        api: str,
        *,
        timeout_s: float = 10.0,
        policy: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.api = api.rstrip("/")
        if not self.api.endswith("/api/v0"):
            self.api += "/api/v0"
        self.timeout_s = timeout_s
        self.policy = policy or RetryPolicy()
        self._own_client = client is None
        # Kubo is told to give up at `timeout_s`; the HTTP timeout leaves it room to say so.
        self._client = client or httpx.AsyncClient(timeout=timeout_s + 5.0)

    async def put(self, data: bytes) -> str:
        check_size(data)
        cid = cid_for_bytes(data)
        reply = await self._rpc(
            "block/put",
            {"cid-codec": "raw", "mhtype": "sha2-256", "mhlen": "32", "pin": "true"},
            files={"file": ("block", data, "application/octet-stream")},
        )
        self._check_ok(reply, "block/put")
        try:
            key = json.loads(reply.body)["Key"]
            returned = normalize_cid(str(key))
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendUnavailable(self.name, f"block/put answered {reply.body[:200]!r}") from exc
        if returned != cid:
            raise IntegrityError(cid, returned, f"kubo {self.api} (block/put)")
        return cid

    async def get(self, cid: str) -> bytes:
        key = normalize_cid(cid)
        reply = await self._rpc("block/get", {"arg": key, "timeout": f"{self.timeout_s:g}s"})
        if reply.status == 500 and _is_not_found(_kubo_message(reply)):
            raise ContentNotFound(key, f"kubo {self.api}")
        self._check_ok(reply, "block/get")
        return verify_block(key, reply.body, f"kubo {self.api}")

    async def has(self, cid: str) -> bool:
        key = normalize_cid(cid)
        reply = await self._rpc("block/stat", {"arg": key, "offline": "true"})
        if reply.status == 500:
            return False
        self._check_ok(reply, "block/stat")
        return True

    async def pin(self, cid: str) -> None:
        """Pin the block so Kubo's garbage collector keeps it (put already pins)."""
        key = normalize_cid(cid)
        reply = await self._rpc("pin/add", {"arg": key, "timeout": f"{self.timeout_s:g}s"})
        if reply.status == 500 and _is_not_found(_kubo_message(reply)):
            raise ContentNotFound(key, f"kubo {self.api}")
        self._check_ok(reply, "pin/add")

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def _rpc(
        self,
        command: str,
        params: dict[str, str],
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> Reply:
        return await request(
            self._client,
            self.name,
            "POST",
            f"{self.api}/{command}",
            self.policy,
            params=params,
            files=files,
        )

    def _check_ok(self, reply: Reply, command: str) -> None:
        if reply.status != 200:
            raise BackendUnavailable(
                self.name, f"{command} at {self.api} failed: HTTP {reply.status}: {_kubo_message(reply)}"
            )


def _is_not_found(message: str) -> bool:
    lowered = message.lower()
    return any(hint in lowered for hint in _NOT_FOUND_HINTS)


__all__ = ["KuboStore"]
