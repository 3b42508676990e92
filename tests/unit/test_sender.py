"""Tx sender against real anvil: concurrent nonces, stuck-tx replacement with bumped fees, resync."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from eth_account import Account

from node.chain.hub import HubClient
from node.chain.sender import MIN_BUMP, TxSender, TxWouldRevert
from node.devnet.processes import Anvil

pytestmark = pytest.mark.timeout(120)
SINK = "0x000000000000000000000000000000000000dEaD"


def sender_for(anvil: Anvil, key: str, **kw: Any) -> TxSender:
    return TxSender(HubClient.web3(anvil.rpc_url), Account.from_key(key), chain_id=31337, **kw)


async def test_concurrent_sends_get_consecutive_nonces(anvil: Anvil, anvil_keys: list[str]) -> None:
    s = sender_for(anvil, anvil_keys[7])
    seen: list[str] = []
    receipts = await asyncio.gather(
        *(s.send(SINK, b"", value=i + 1, on_signed=seen.append) for i in range(6))
    )
    assert all(r["status"] == 1 for r in receipts)
    nonces = sorted([int((await s.w3.eth.get_transaction(r["transactionHash"]))["nonce"]) for r in receipts])
    assert nonces == list(range(nonces[0], nonces[0] + 6))
    assert len(seen) == 6  # every hash was handed to on_signed before broadcast


async def test_stuck_transaction_is_replaced_with_bumped_fees(anvil: Anvil, anvil_keys: list[str]) -> None:
    s = sender_for(anvil, anvil_keys[8], stuck_after_s=0.5, poll_s=0.05)
    rpc = s.w3.provider
    await rpc.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        hashes: list[str] = []
        max_fee, tip = await s.fees()  # what the first transaction pays (no block mined meanwhile)
        task = asyncio.create_task(s.send(SINK, b"", value=1, on_signed=hashes.append))
        while len(hashes) < 2:  # noqa: ASYNC110 - the original and at least one replacement
            await asyncio.sleep(0.1)
        await rpc.make_request("evm_mine", [])  # type: ignore[arg-type]
        receipt = await asyncio.wait_for(task, 10)
    finally:
        await rpc.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    mined = await s.w3.eth.get_transaction(receipt["transactionHash"])
    assert receipt["status"] == 1 and s.stats.replaced >= 1
    assert mined["hash"].hex().removeprefix("0x") != hashes[0].removeprefix("0x")
    assert mined["maxPriorityFeePerGas"] >= tip * MIN_BUMP
    assert mined["maxFeePerGas"] >= max_fee * MIN_BUMP


async def test_dropped_transaction_is_rebroadcast(anvil: Anvil, anvil_keys: list[str]) -> None:
    s = sender_for(anvil, anvil_keys[8], stuck_after_s=0.5, poll_s=0.05)
    rpc = s.w3.provider
    await rpc.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        hashes: list[str] = []
        task = asyncio.create_task(s.send(SINK, b"", value=2, on_signed=hashes.append))
        while not hashes:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        await rpc.make_request("anvil_dropTransaction", [hashes[0]])  # type: ignore[arg-type]
        while len(hashes) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        # `on_signed` sees a hash before it is broadcast: mine until the rebroadcast is in a block.
        async with asyncio.timeout(10):
            while not task.done():
                await rpc.make_request("evm_mine", [])  # type: ignore[arg-type]
                await asyncio.wait([task], timeout=0.2)
        receipt = await task
    finally:
        await rpc.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    assert receipt["status"] == 1
    assert "0x" + bytes(receipt["transactionHash"]).hex() in hashes[1:]  # not the dropped one


async def test_nonce_resync_after_external_use_of_the_key(anvil: Anvil, anvil_keys: list[str]) -> None:
    s = sender_for(anvil, anvil_keys[9])
    await s.send(SINK, b"", value=1)
    other = sender_for(anvil, anvil_keys[9])  # another process with the same key
    await other.send(SINK, b"", value=1)
    receipt = await s.send(SINK, b"", value=1)  # local nonce is stale: "nonce too low" -> resync
    assert receipt["status"] == 1


async def test_revert_is_reported_before_anything_is_sent(anvil: Anvil, anvil_keys: list[str]) -> None:
    hub = await HubClient.deploy(anvil.rpc_url, anvil_keys[0])
    s = sender_for(anvil, anvil_keys[9])
    seen: list[str] = []
    data = hub.contract.encode_abi("commit", args=[12345, b"\x01" * 32])
    with pytest.raises(TxWouldRevert):
        await s.send(hub.address, data, on_signed=seen.append)
    assert not seen


async def test_a_pushed_head_ends_the_receipt_wait(anvil: Anvil, anvil_keys: list[str]) -> None:
    """`on_head` (a head pushed over `chain.ws_url`) looks for the receipt at once: with a poll
    interval longer than the test's timeout, only the pushes can find it."""
    s = sender_for(anvil, anvil_keys[6], poll_s=3600, stuck_after_s=3600)
    rpc = s.w3.provider
    await rpc.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        hashes: list[str] = []
        task = asyncio.create_task(s.send(SINK, b"", value=3, on_signed=hashes.append))
        while not hashes:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await rpc.make_request("evm_mine", [])  # type: ignore[arg-type]
        head = int(await s.w3.eth.block_number)
        while not task.done():  # a push that lands mid-poll is missed; the next one is not
            s.on_head(head)
            await asyncio.sleep(0.05)
        receipt = task.result()
    finally:
        await rpc.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    assert receipt["status"] == 1 and int(receipt["blockNumber"]) == head
