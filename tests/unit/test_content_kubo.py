"""The kubo backend's RPC handling against an in-process fake of Kubo's `/api/v0` (the real-Kubo
tests live in tests/integration/test_content_kubo.py): requests as Kubo expects them, verified
answers, Kubo's error shapes, retries only where they help."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from node.content.cid import cid_for_bytes
from node.content.errors import BackendUnavailable, ContentNotFound, DocumentTooLarge, IntegrityError
from node.content.http import RetryPolicy
from node.content.kubo import KuboStore

FAST = RetryPolicy(retries=2, base_s=0.001, max_s=0.01)


class FakeKubo:
    """Just enough of Kubo's RPC: POST only, errors as HTTP 500 {"Message", "Code", "Type"}."""

    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}
        self.pins: set[str] = set()
        self.requests: list[httpx.Request] = []
        self.tamper: Callable[[bytes], bytes] | None = None
        self.failures = 0  # connection errors to raise before answering

    def error(self, message: str) -> httpx.Response:
        return httpx.Response(500, json={"Message": message, "Code": 0, "Type": "error"})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.failures:
            self.failures -= 1
            raise httpx.ConnectError("connection refused", request=request)
        if request.method != "POST":
            return httpx.Response(405, text="405 - Method Not Allowed")
        command = request.url.path.removeprefix("/api/v0/")
        params = request.url.params
        if command == "block/put":
            assert params["cid-codec"] == "raw" and params["mhtype"] == "sha2-256"
            body = request.content
            marker = b"\r\n\r\n"
            data = body[body.index(marker) + len(marker) : body.rindex(b"\r\n--")]
            cid = cid_for_bytes(data)
            self.blocks[cid] = data
            if params.get("pin") == "true":
                self.pins.add(cid)
            key = cid_for_bytes(self.tamper(data)) if self.tamper else cid
            return httpx.Response(200, json={"Key": key, "Size": len(data)})
        cid = params["arg"]
        if cid not in self.blocks:
            if params.get("offline") == "true":
                return self.error("block was not found locally (offline)")
            return self.error(f"ipld: could not find {cid}")
        if command == "block/get":
            data = self.blocks[cid]
            return httpx.Response(200, content=self.tamper(data) if self.tamper else data)
        if command == "block/stat":
            return httpx.Response(200, json={"Key": cid, "Size": len(self.blocks[cid])})
        if command == "pin/add":
            self.pins.add(cid)
            return httpx.Response(200, json={"Pins": [cid]})
        return httpx.Response(404, text="404 page not found")


@pytest.fixture()
def kubo() -> FakeKubo:
    return FakeKubo()


@pytest.fixture()
async def store(kubo: FakeKubo) -> KuboStore:
    client = httpx.AsyncClient(transport=httpx.MockTransport(kubo))
    return KuboStore("http://127.0.0.1:5001", policy=FAST, client=client)


async def test_put_get_has_pin(store: KuboStore, kubo: FakeKubo) -> None:
    cid = await store.put(b"hello")
    assert cid == "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
    assert cid in kubo.pins
    assert await store.get(cid) == b"hello"
    assert await store.has(cid)
    await store.pin(cid)
    put = kubo.requests[0]
    assert put.url.path == "/api/v0/block/put"
    assert put.url.params["pin"] == "true"
    assert all(r.method == "POST" for r in kubo.requests)


async def test_unknown_cid(store: KuboStore) -> None:
    cid = cid_for_bytes(b"absent")
    with pytest.raises(ContentNotFound):
        await store.get(cid)
    assert not await store.has(cid)
    with pytest.raises(ContentNotFound):
        await store.pin(cid)


async def test_tampered_block_from_kubo_is_an_integrity_error(store: KuboStore, kubo: FakeKubo) -> None:
    cid = await store.put(b"genuine")
    kubo.tamper = lambda data: data + b"!"
    with pytest.raises(IntegrityError):
        await store.get(cid)


async def test_put_checks_the_cid_kubo_returns(store: KuboStore, kubo: FakeKubo) -> None:
    kubo.tamper = lambda data: b"other"
    with pytest.raises(IntegrityError, match="block/put"):
        await store.put(b"genuine")


async def test_oversized_put_never_reaches_kubo(store: KuboStore, kubo: FakeKubo) -> None:
    with pytest.raises(DocumentTooLarge):
        await store.put(b"x" * ((1 << 20) + 1))
    assert kubo.requests == []


async def test_network_errors_are_retried_then_reported(store: KuboStore, kubo: FakeKubo) -> None:
    kubo.failures = 2
    assert await store.put(b"after two failures") == cid_for_bytes(b"after two failures")
    assert len(kubo.requests) == 3
    kubo.failures = 10
    with pytest.raises(BackendUnavailable, match="after 3 tries"):
        await store.get(cid_for_bytes(b"after two failures"))


async def test_other_kubo_errors_are_unavailable_with_kubo_message() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"Message": "repo is locked", "Code": 0, "Type": "error"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(broken))
    store = KuboStore("http://127.0.0.1:5001/api/v0/", policy=FAST, client=client)
    with pytest.raises(BackendUnavailable, match="repo is locked"):
        await store.put(b"x")
    with pytest.raises(BackendUnavailable, match="repo is locked"):
        await store.get(cid_for_bytes(b"x"))


async def test_garbage_put_answer_is_unavailable() -> None:
    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps({"Nope": 1}).encode())

    store = KuboStore(
        "http://k", policy=FAST, client=httpx.AsyncClient(transport=httpx.MockTransport(garbage))
    )
    with pytest.raises(BackendUnavailable, match="block/put answered"):
        await store.put(b"x")
