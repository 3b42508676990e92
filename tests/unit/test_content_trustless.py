"""The trustless-gateway route over the local store, driven in-process through ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from multiformats import CID

from node.content.cid import cid_for_bytes
from node.content.local import LocalStore
from node.content.trustless import IMMUTABLE_CACHE, trustless_router

RAW = "application/vnd.ipld.raw"
DOC = b'{"v":1,"type":"completion","model":"m","prompt":"hi","params":{}}'


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "blocks")


@pytest.fixture()
async def client(store: LocalStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(trustless_router(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c


async def test_raw_block_by_format_and_by_accept(client: httpx.AsyncClient, store: LocalStore) -> None:
    cid = await store.put(DOC)
    for kwargs in ({"params": {"format": "raw"}}, {"headers": {"Accept": RAW}}):
        r = await client.get(f"/ipfs/{cid}", **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 200
        assert r.content == DOC
        assert r.headers["content-type"] == RAW
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == IMMUTABLE_CACHE == "public, max-age=29030400, immutable"
        assert r.headers["etag"] == f'"{cid}.raw"'
        assert r.headers["content-disposition"] == f'attachment; filename="{cid}.bin"'
        assert r.headers["content-length"] == str(len(DOC))


async def test_other_cid_spellings_serve_the_same_block(client: httpx.AsyncClient, store: LocalStore) -> None:
    cid = await store.put(DOC)
    b58 = CID.decode(cid).encode("base58btc")
    r = await client.get(f"/ipfs/{b58}?format=raw")
    assert r.status_code == 200 and r.content == DOC
    assert r.headers["etag"] == f'"{cid}.raw"'


async def test_accept_with_q_values(client: httpx.AsyncClient, store: LocalStore) -> None:
    cid = await store.put(DOC)
    r = await client.get(f"/ipfs/{cid}", headers={"Accept": f"text/html, {RAW};q=0.9"})
    assert r.status_code == 200
    r = await client.get(f"/ipfs/{cid}", headers={"Accept": f"{RAW};q=0"})
    assert r.status_code == 406


async def test_head(client: httpx.AsyncClient, store: LocalStore) -> None:
    cid = await store.put(DOC)
    r = await client.head(f"/ipfs/{cid}?format=raw")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(len(DOC))
    r = await client.head(f"/ipfs/{cid_for_bytes(b'nope')}?format=raw")
    assert r.status_code == 404


async def test_unknown_cid_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/ipfs/{cid_for_bytes(b'missing')}?format=raw")
    assert r.status_code == 404
    assert "no block for CID" in r.text


@pytest.mark.parametrize("bad", ["not-a-cid", "bafkrei", "Qm123"])
async def test_malformed_cid_is_400(client: httpx.AsyncClient, bad: str) -> None:
    r = await client.get(f"/ipfs/{bad}?format=raw")
    assert r.status_code == 400
    assert "not a valid CID" in r.text


async def test_dag_pb_cid_is_not_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/ipfs/QmT5NvUtoM5nWFfrQdVrFtvGfKFmG7AHE8P34isapyhCxX?format=raw")
    assert r.status_code == 404
    assert "CIDv0" in r.text


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({"format": "car"}, {}, 400),
        ({"format": "dag-json"}, {"Accept": RAW}, 400),  # format wins over Accept
        ({}, {}, 400),  # strict trustless: no Accept, no format
        ({}, {"Accept": "application/vnd.ipld.car"}, 406),
        ({}, {"Accept": "*/*"}, 406),
        ({"format": "raw"}, {"Accept": "text/html"}, 200),  # format wins over Accept
    ],
)
async def test_format_negotiation(
    client: httpx.AsyncClient, store: LocalStore, params: dict[str, str], headers: dict[str, str], status: int
) -> None:
    cid = await store.put(DOC)
    r = await client.get(f"/ipfs/{cid}", params=params, headers={"Accept": "", **headers})
    assert r.status_code == status, r.text


async def test_paths_are_refused(client: httpx.AsyncClient, store: LocalStore) -> None:
    cid = await store.put(DOC)
    r = await client.get(f"/ipfs/{cid}/a/b?format=raw")
    assert r.status_code == 400


async def test_if_none_match_and_only_if_cached(client: httpx.AsyncClient, store: LocalStore) -> None:
    cid = await store.put(DOC)
    r = await client.get(f"/ipfs/{cid}?format=raw", headers={"If-None-Match": f'"{cid}.raw"'})
    assert r.status_code == 304 and r.content == b""
    r = await client.get(f"/ipfs/{cid}?format=raw", headers={"Cache-Control": "only-if-cached"})
    assert r.status_code == 200
    missing = cid_for_bytes(b"absent")
    r = await client.get(f"/ipfs/{missing}?format=raw", headers={"Cache-Control": "only-if-cached"})
    assert r.status_code == 412


async def test_corrupt_block_is_a_500_not_data(client: httpx.AsyncClient, store: LocalStore) -> None:
    cid = await store.put(DOC)
    store.path_for(cid).write_bytes(DOC.replace(b"hi", b"ho"))
    r = await client.get(f"/ipfs/{cid}?format=raw")
    assert r.status_code == 500
    assert b"ho" not in r.content
    assert "does not match its CID" in r.text
