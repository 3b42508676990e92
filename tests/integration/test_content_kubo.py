"""The kubo backend against a real Kubo: set INFERD_TEST_KUBO_API (e.g. http://127.0.0.1:5001)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import pytest

from node.content.cid import cid_for_bytes
from node.content.errors import MAX_DOCUMENT_BYTES, ContentNotFound, DocumentTooLarge
from node.content.http import RetryPolicy
from node.content.kubo import KuboStore

KUBO_API = os.environ.get("INFERD_TEST_KUBO_API")

pytestmark = pytest.mark.skipif(
    not KUBO_API,
    reason="set INFERD_TEST_KUBO_API to a Kubo RPC URL (e.g. http://127.0.0.1:5001) to run these",
)


@pytest.fixture()
async def store() -> AsyncIterator[KuboStore]:
    assert KUBO_API
    async with KuboStore(KUBO_API, timeout_s=3, policy=RetryPolicy(retries=1, base_s=0.1)) as s:
        yield s  # type: ignore[misc]


async def test_round_trip_and_pin(store: KuboStore) -> None:
    data = b"inferd kubo test " + secrets.token_bytes(16)
    cid = await store.put(data)
    assert cid == cid_for_bytes(data)
    assert await store.has(cid)
    assert await store.get(cid) == data
    await store.pin(cid)


async def test_hello_has_the_known_cid(store: KuboStore) -> None:
    assert await store.put(b"hello") == "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


async def test_largest_block_fits_and_larger_is_refused(store: KuboStore) -> None:
    data = secrets.token_bytes(MAX_DOCUMENT_BYTES)
    assert await store.get(await store.put(data)) == data
    with pytest.raises(DocumentTooLarge):
        await store.put(data + b"!")


async def test_unknown_cid_is_not_found(store: KuboStore) -> None:
    cid = cid_for_bytes(secrets.token_bytes(32))
    assert not await store.has(cid)
    with pytest.raises(ContentNotFound):
        await store.get(cid)
