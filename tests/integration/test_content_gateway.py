"""The `gateway` backend against real HTTP servers on loopback: our own trustless route under
uvicorn, a gateway that lies, one that is down, one that is flaky."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from node.config import ContentSettings
from node.content.cid import cid_for_bytes
from node.content.documents import ChatInputDocument, parse_input_document, to_canonical_bytes
from node.content.errors import (
    MAX_DOCUMENT_BYTES,
    BackendUnavailable,
    ContentNotFound,
    DocumentTooLarge,
    IntegrityError,
    ReadOnlyStore,
)
from node.content.factory import open_store
from node.content.gateway import GatewayStore
from node.content.http import RetryPolicy
from node.content.local import LocalStore
from node.content.trustless import trustless_router

FAST = RetryPolicy(retries=2, base_s=0.01, max_s=0.05)


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run `app` under a real uvicorn on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "blocks")


@pytest.fixture()
async def honest(local: LocalStore) -> AsyncIterator[str]:
    app = FastAPI()
    app.include_router(trustless_router(local))
    async with serve(app) as url:
        yield url


def liar_app(body: bytes) -> FastAPI:
    app = FastAPI()

    @app.get("/ipfs/{cid}")
    async def lie(cid: str) -> Response:
        return Response(body, media_type="application/vnd.ipld.raw")

    return app


async def test_round_trip_through_our_own_trustless_gateway(local: LocalStore, honest: str) -> None:
    doc = ChatInputDocument.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi ✓"}]})
    data = to_canonical_bytes(doc)
    cid = await local.put(data)
    store = open_store(ContentSettings(backend="gateway", gateway_urls=[honest], timeout_s=5))
    async with store:
        assert await store.has(cid)
        fetched = await store.get(cid)
    assert fetched == data
    assert parse_input_document(fetched) == doc


async def test_unknown_cid_is_not_found(honest: str) -> None:
    async with GatewayStore([honest], policy=FAST) as store:
        cid = cid_for_bytes(b"nobody stored this")
        with pytest.raises(ContentNotFound, match=cid):
            await store.get(cid)
        assert not await store.has(cid)


async def test_put_is_refused_as_read_only(honest: str) -> None:
    async with GatewayStore([honest], policy=FAST) as store:
        with pytest.raises(ReadOnlyStore, match="read-only"):
            await store.put(b"x")


async def test_a_lying_gateway_is_an_integrity_error_never_data() -> None:
    async with serve(liar_app(b"forged output")) as liar, GatewayStore([liar], policy=FAST) as store:
        cid = cid_for_bytes(b"real output")
        with pytest.raises(IntegrityError) as info:
            await store.get(cid)
        assert info.value.actual_cid == cid_for_bytes(b"forged output")


async def test_an_oversized_answer_is_cut_off() -> None:
    huge = b"x" * (MAX_DOCUMENT_BYTES + 1)
    async with serve(liar_app(huge)) as liar, GatewayStore([liar], policy=FAST) as store:
        with pytest.raises(DocumentTooLarge):
            await store.get(cid_for_bytes(b"small"))


async def test_the_next_gateway_is_tried_after_a_liar_or_a_dead_one(local: LocalStore, honest: str) -> None:
    cid = await local.put(b"the real bytes")
    dead = f"http://127.0.0.1:{free_port()}"
    async with serve(liar_app(b"fake")) as liar, GatewayStore([dead, liar, honest], policy=FAST) as store:
        assert await store.get(cid) == b"the real bytes"


async def test_a_dead_gateway_is_unavailable_after_retries() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with GatewayStore([dead], policy=FAST) as store:
        with pytest.raises(BackendUnavailable, match="after 3 tries"):
            await store.get(cid_for_bytes(b"x"))


async def test_a_flaky_gateway_is_retried(local: LocalStore) -> None:
    cid = await local.put(b"eventually")
    calls = 0
    inner = FastAPI()
    inner.include_router(trustless_router(local))
    app = FastAPI()

    @app.middleware("http")
    async def flaky(request: Request, call_next):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls <= 2:
            return Response("try later", status_code=503)
        return await call_next(request)

    app.include_router(trustless_router(local))
    async with serve(app) as url, GatewayStore([url], policy=FAST) as store:
        assert await store.get(cid) == b"eventually"
    assert calls == 3


async def test_a_404_is_not_retried(honest: str) -> None:
    seen: list[str] = []

    async def log(request: httpx.Request) -> None:
        seen.append(str(request.url))

    client = httpx.AsyncClient(event_hooks={"request": [log]})
    try:
        store = GatewayStore([honest], policy=FAST, client=client)
        with pytest.raises(ContentNotFound):
            await store.get(cid_for_bytes(b"absent"))
    finally:
        await client.aclose()
    assert len(seen) == 1
    assert seen[0].endswith("?format=raw")
