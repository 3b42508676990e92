"""The on-disk blockstore: round trips, sharding, atomic writes, and every bad read typed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config import ContentSettings
from node.content.cid import cid_for_bytes
from node.content.errors import (
    MAX_DOCUMENT_BYTES,
    ContentNotFound,
    DocumentTooLarge,
    IntegrityError,
    InvalidCID,
    UnsupportedCodec,
)
from node.content.factory import open_store
from node.content.gateway import GatewayStore
from node.content.kubo import KuboStore
from node.content.local import LocalStore
from node.content.store import verify_block


async def test_round_trip(tmp_path: Path) -> None:
    async with LocalStore(tmp_path) as store:
        cid = await store.put(b"hello")
        assert cid == "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
        assert await store.get(cid) == b"hello"
        assert await store.has(cid)
        assert await store.put(b"hello") == cid  # idempotent
        assert await store.put(b"") == cid_for_bytes(b"")
        assert await store.get(cid_for_bytes(b"")) == b""


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_layout_is_sharded_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cids = [await store.put(bytes([i]) * 10) for i in range(20)]
    files = stored_files(tmp_path)
    assert len(files) == 20
    for cid in cids:
        path = store.path_for(cid)
        assert path == tmp_path / cid[-3:-1] / cid
        assert path.read_bytes() == await store.get(cid)
    assert not [p for p in files if p.name.endswith(".tmp")]


async def test_exactly_the_limit_fits_and_one_more_byte_does_not(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cid = await store.put(b"a" * MAX_DOCUMENT_BYTES)
    assert len(await store.get(cid)) == MAX_DOCUMENT_BYTES
    with pytest.raises(DocumentTooLarge, match="over the 1048576-byte limit"):
        await store.put(b"a" * (MAX_DOCUMENT_BYTES + 1))


async def test_unknown_cid_is_not_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cid = cid_for_bytes(b"never stored")
    with pytest.raises(ContentNotFound, match=cid):
        await store.get(cid)
    assert not await store.has(cid)


async def test_malformed_and_unsupported_cids(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(InvalidCID):
        await store.get("not-a-cid")
    with pytest.raises(UnsupportedCodec):
        await store.get("QmT5NvUtoM5nWFfrQdVrFtvGfKFmG7AHE8P34isapyhCxX")


async def test_tampered_block_on_disk_is_an_integrity_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cid = await store.put(b"the real document")
    path = store.path_for(cid)
    path.write_bytes(b"the fake document")
    with pytest.raises(IntegrityError) as info:
        await store.get(cid)
    assert info.value.cid == cid
    assert info.value.actual_cid == cid_for_bytes(b"the fake document")
    # Putting the real bytes again repairs the block.
    assert await store.put(b"the real document") == cid
    assert await store.get(cid) == b"the real document"


async def test_oversized_file_on_disk_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cid = await store.put(b"small")
    store.path_for(cid).write_bytes(b"x" * (MAX_DOCUMENT_BYTES + 10))
    with pytest.raises(DocumentTooLarge):
        await store.get(cid)


@settings(max_examples=100)
@given(data=st.binary(min_size=1, max_size=512), where=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_byte_flip_is_detected(data: bytes, where: int, bit: int) -> None:
    cid = cid_for_bytes(data)
    assert verify_block(cid, data) == data
    flipped = bytearray(data)
    flipped[where % len(data)] ^= 1 << bit
    with pytest.raises(IntegrityError):
        verify_block(cid, bytes(flipped))


@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=1, max_size=256), where=st.integers(min_value=0))
async def test_byte_flip_on_disk_is_detected_by_get(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, where: int
) -> None:
    store = LocalStore(tmp_path_factory.mktemp("flip"))
    cid = await store.put(data)
    path = store.path_for(cid)
    flipped = bytearray(path.read_bytes())
    flipped[where % len(flipped)] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError):
        await store.get(cid)


async def test_factory_builds_each_backend(tmp_path: Path) -> None:
    local = open_store(ContentSettings(path=tmp_path))
    assert isinstance(local, LocalStore) and local.root == tmp_path
    assert isinstance(open_store(ContentSettings(), default_path=tmp_path), LocalStore)
    kubo = open_store(ContentSettings(backend="kubo", kubo_api="http://127.0.0.1:5001", retries=1))
    assert isinstance(kubo, KuboStore) and kubo.api == "http://127.0.0.1:5001/api/v0"
    assert kubo.policy.retries == 1
    gateway = open_store(ContentSettings(backend="gateway", gateway_urls=["http://127.0.0.1:8080/"]))
    assert isinstance(gateway, GatewayStore) and gateway.urls == ["http://127.0.0.1:8080"]
    for store in (kubo, gateway):
        await store.close()


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (ContentSettings(), "content.path"),
        (ContentSettings(backend="kubo"), "content.kubo_api"),
        (ContentSettings(backend="gateway"), "content.gateway_urls"),
    ],
)
def test_factory_says_what_is_missing(settings: ContentSettings, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        open_store(settings)
