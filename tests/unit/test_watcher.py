"""Log follower against real anvil: bounded ranges, cursor, confirmations and reorg re-scan."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from node.chain import abicall
from node.chain.events import InferenceRequested, decode_log
from node.chain.hub import HubClient
from node.chain.watcher import LogBatch, LogFollower, MemoryCursor, Reorg
from node.devnet.processes import Anvil
from node.miner.testing import deploy_dev_hub

pytestmark = pytest.mark.timeout(120)


async def setup(anvil: Anvil, keys: list[str]) -> tuple[HubClient, bytes]:
    hub = await deploy_dev_hub(anvil.rpc_url, keys[0], [keys[1]])
    return HubClient(hub.owner.w3, hub.owner.address, keys[2]), hub.model


def follower(client: HubClient, cursor: MemoryCursor, **kw: Any) -> LogFollower[Any]:
    return LogFollower(
        client.w3, address=client.address, decode=decode_log, cursor=cursor, poll_interval_s=0.05, **kw
    )


async def collect(f: LogFollower[Any], until: Any, timeout: float = 10) -> list[Any]:  # noqa: ASYNC109
    items: list[Any] = []
    async with asyncio.timeout(timeout):
        async for item in f.follow():
            items.append(item)
            if until(items):
                f.stop()  # the generator resumes once more: the batch is acknowledged, the cursor saved
    return items


def requested(items: list[Any]) -> list[int]:
    return [
        e.id for b in items if isinstance(b, LogBatch) for e in b.events if isinstance(e, InferenceRequested)
    ]


async def test_bounded_ranges_and_persisted_cursor(anvil: Anvil, anvil_keys: list[str]) -> None:
    client, model = await setup(anvil, anvil_keys)
    start = int(await client.w3.eth.block_number)
    for i in range(5):
        await client.request_inference(model, bytes([i + 1]) * 32, 16)
    cursor = MemoryCursor()
    f = follower(client, cursor, start_block=start, range_blocks=2)
    items = await collect(f, lambda it: len(requested(it)) == 5)
    assert requested(items) == [1, 2, 3, 4, 5][: len(requested(items))]
    assert all(b.to_block - b.from_block < 2 for b in items if isinstance(b, LogBatch))
    # A new follower on the same cursor continues after it: nothing acknowledged comes twice.
    await client.request_inference(model, b"\x09" * 32, 16)
    f2 = follower(client, cursor, start_block=start)
    items2 = await collect(f2, lambda it: 6 in requested(it))
    assert requested(items2) == [6]


async def test_confirmations_hold_back_recent_blocks(anvil: Anvil, anvil_keys: list[str]) -> None:
    client, model = await setup(anvil, anvil_keys)
    await client.request_inference(model, b"\x01" * 32, 16)
    head = int(await client.w3.eth.block_number)
    f = follower(client, MemoryCursor(head - 1), confirmations=3)
    task = asyncio.create_task(collect(f, lambda it: len(requested(it)) == 1))
    await asyncio.sleep(0.5)
    assert not task.done()  # the request's block has no 3 confirmations yet
    await client.mine(3)
    items = await asyncio.wait_for(task, 5)
    assert requested(items) == [1]


async def test_reorg_is_detected_and_rescanned(anvil: Anvil, anvil_keys: list[str]) -> None:
    client, model = await setup(anvil, anvil_keys)
    start = int(await client.w3.eth.block_number)
    for i in range(4):
        await client.request_inference(model, bytes([i + 1]) * 32, 16)
    cursor = MemoryCursor()
    f = follower(client, cursor, start_block=start)
    await collect(f, lambda it: len(requested(it)) == 4)
    head = int(await client.w3.eth.block_number)
    # Replace the last 3 blocks by empty ones (their requests vanish), then add new requests.
    await client.w3.provider.make_request("anvil_reorg", [3, []])  # type: ignore[arg-type]
    for i in range(2):
        await client.request_inference(model, bytes([0x20 + i]) * 32, 16)
    f2 = follower(client, cursor, start_block=start)
    items = await collect(f2, lambda it: 3 in requested(it))
    reorgs = [i for i in items if isinstance(i, Reorg)]
    assert len(reorgs) == 1 and reorgs[0].fork_block == head - 2
    assert requested(items) == [2, 3]  # ids 2..4 were reorged out; the new requests reuse 2 and 3


async def test_an_undecodable_log_is_skipped_not_retried_forever(anvil: Anvil, anvil_keys: list[str]) -> None:
    """A log `decode` chokes on is counted and skipped; before, it was an "RPC error" retried forever."""
    client, model = await setup(anvil, anvil_keys)
    start = int(await client.w3.eth.block_number)
    for i in range(3):
        await client.request_inference(model, bytes([i + 1]) * 32, 16)

    def decode(entry: Any) -> Any:
        event = decode_log(entry)
        if isinstance(event, InferenceRequested) and event.id == 2:
            raise ValueError("a log this decoder cannot read")
        return event

    f = LogFollower(
        client.w3, address=client.address, decode=decode, cursor=MemoryCursor(), start_block=start,
        poll_interval_s=0.05,
    )  # fmt: skip
    items = await collect(f, lambda it: 3 in requested(it))
    assert requested(items) == [1, 3]
    assert f.stats.decode_errors == 1 and f.stats.rpc_errors == 0


async def test_a_new_block_costs_three_rpcs_and_a_reorg_under_it_is_still_caught(
    anvil: Anvil, anvil_keys: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following a live chain one block at a time, the new block's parent hash is the reorg check:
    head, block, logs — three calls a block, not four. A reorg under the new block still shows."""
    client, model = await setup(anvil, anvil_keys)
    calls: Counter[str] = Counter()
    real_rpc = abicall.rpc

    async def counting(w3: Any, method: str, params: list[Any]) -> Any:
        if w3 is client.w3:  # this test's followers only: other tests' may still poll in this loop
            calls[method] += 1
        return await real_rpc(w3, method, params)

    await client.request_inference(model, b"\x01" * 32, 16)
    cursor = MemoryCursor()
    first = follower(client, cursor, start_block=int(await client.w3.eth.block_number))
    await collect(first, lambda it: requested(it) == [1])
    monkeypatch.setattr("node.chain.watcher.rpc", counting)
    for i in range(2, 6):  # each request is a block of its own (automine)
        await client.request_inference(model, bytes([i]) * 32, 16)
        items = await collect(follower(client, cursor), lambda it: requested(it) == [i])  # noqa: B023
        assert [type(x) for x in items] == [LogBatch]
    assert calls == {"eth_blockNumber": 4, "eth_getBlockByNumber": 4, "eth_getLogs": 4}, calls

    head = int(await client.w3.eth.block_number)
    await client.w3.provider.make_request("anvil_reorg", [3, []])  # type: ignore[arg-type]
    await client.request_inference(model, b"\x20" * 32, 16)  # one block on top of the new fork
    items = await collect(follower(client, cursor), lambda it: 3 in requested(it))
    reorgs = [x for x in items if isinstance(x, Reorg)]
    assert len(reorgs) == 1 and reorgs[0].fork_block == head - 2, items
    assert requested(items) == [3]  # ids 3..5 were reorged out; the new request reuses 3
