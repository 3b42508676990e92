"""The gateway's request batcher (`node.gateway.batcher`) against a stand-in send function that
mines receipts with real `InferenceRequested` logs (encoded with the hub's ABI): the first request
goes out alone and at once, those that arrive meanwhile share the next transaction, each caller
gets its own id, a failed transaction fails each caller, and a caller gone before sending is left
out. A batch whose gas estimate reverts on one entry's content is sent again one request a
transaction (the others succeed); other failures are not repeated. The limits come from the gateway
settings. `SharedCall`: the callers of one batch share one call; a later batch starts its own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak

from node.chain.events import event_topic
from node.chain.sender import TxNonceGap, TxReverted, TxTimeout, TxWouldRevert
from node.config import GatewaySettings
from node.gateway.batcher import (
    OVERFLOW_SLOTS,
    BatchItem,
    RequestBatcher,
    SharedCall,
    content_revert,
    match_receipt,
)
from node.gateway.errors import ServiceUnavailable, UpstreamError

HUB = "0x" + "ab" * 20
REQUESTER = "0x" + "cd" * 20
MID = b"\x07" * 32


def requested_log(rid: int, digest: bytes, fee: int, max_tokens: int) -> dict[str, Any]:
    """`InferenceRequested(uint256 indexed id, address indexed requester, bytes32 indexed modelId,
    bytes32 inputDigest, uint256 fee, uint32 maxTokens)` as a node returns it."""
    return {
        "address": HUB,
        "topics": [
            bytes.fromhex(event_topic("InferenceRequested")[2:]),
            rid.to_bytes(32, "big"),
            bytes(12) + bytes.fromhex(REQUESTER[2:]),
            MID,
        ],
        "data": encode(["bytes32", "uint256", "uint32"], [digest, fee, max_tokens]),
        "blockNumber": 1,
        "transactionHash": b"\x11" * 32,
        "logIndex": rid,
        "blockHash": b"\x22" * 32,
        "transactionIndex": 0,
        "removed": False,
    }


class FakeChain:
    """Mines each send as one transaction; ids count up like the hub's; `gate` holds a send."""

    def __init__(self) -> None:
        self.next_id = 1
        self.sent: list[list[BatchItem]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def send(self, items: Sequence[BatchItem]) -> dict[str, Any]:
        self.sent.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        logs = []
        for item in items:
            logs.append(requested_log(self.next_id, item.digest, item.fee, item.max_tokens))
            self.next_id += 1
        return {"logs": logs, "blockNumber": len(self.sent), "gasUsed": 100_000}


def item(i: int) -> BatchItem:
    return BatchItem(digest=i.to_bytes(32, "big"), max_tokens=10 + i, fee=1000 + i)


async def hold_first(
    batcher: RequestBatcher, behind: Sequence[BatchItem]
) -> tuple[asyncio.Task[Any], list[asyncio.Task[Any]]]:
    """item(0) goes out alone (the fake chain holds it at its gate); `behind` queue up meanwhile."""
    first = asyncio.create_task(batcher.submit(item(0)))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(x)) for x in behind]
    await asyncio.sleep(0)
    return first, rest


def _needs_event_abi() -> None:
    try:
        event_topic("InferenceRequested")
    except KeyError:  # pragma: no cover - the ABI is exported by the contracts build
        pytest.skip("InferenceRequested not in the exported ABI")


async def test_lone_request_goes_out_at_once_alone() -> None:
    _needs_event_abi()
    chain = FakeChain()
    batcher = RequestBatcher(chain.send)
    placed = await batcher.submit(item(1))
    assert chain.sent == [[item(1)]]
    assert placed.requested.id == 1 and placed.size == 1 and placed.index == 0
    assert placed.requested.input_digest == item(1).digest and placed.requested.max_tokens == 11


async def test_arrivals_during_a_send_share_the_next_transaction() -> None:
    _needs_event_abi()
    chain = FakeChain()
    chain.gate = asyncio.Event()
    batcher = RequestBatcher(chain.send)
    first, rest = await hold_first(batcher, [item(i) for i in range(1, 11)])
    assert len(chain.sent) == 1 and batcher.waiting == 10  # one slot: the others wait for it
    chain.gate.set()
    placed = [await first, *await asyncio.gather(*rest)]
    assert [len(tx) for tx in chain.sent] == [1, 10]
    assert [p.requested.id for p in placed] == list(range(1, 12))  # each its own id, in order
    assert [p.requested.input_digest for p in placed] == [item(i).digest for i in range(11)]
    assert [p.size for p in placed] == [1] + [10] * 10
    assert batcher.sent_txs == 2 and batcher.sent_requests == 11


async def test_batches_are_capped() -> None:
    _needs_event_abi()
    chain = FakeChain()
    chain.gate = asyncio.Event()
    batcher = RequestBatcher(chain.send, max_batch=4)
    tasks = [asyncio.create_task(batcher.submit(item(i))) for i in range(10)]
    await asyncio.sleep(0)
    chain.gate.set()
    await asyncio.gather(*tasks)
    assert [len(tx) for tx in chain.sent] == [1, 4, 4, 1]  # the first at once, then at most 4 a tx


async def test_a_failed_transaction_fails_each_caller() -> None:
    _needs_event_abi()
    chain = FakeChain()
    chain.gate = asyncio.Event()
    batcher = RequestBatcher(chain.send)
    first, rest = await hold_first(batcher, [item(i) for i in range(1, 4)])
    chain.fail = ServiceUnavailable("requestInference failed on chain 31337: nonce gap")
    chain.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    assert len({id(r) for r in results}) == 4  # one copy each
    chain.fail = None
    assert (await batcher.submit(item(9))).requested.id == 1  # the batcher goes on


async def test_a_caller_gone_before_sending_is_left_out() -> None:
    _needs_event_abi()
    chain = FakeChain()
    chain.gate = asyncio.Event()
    batcher = RequestBatcher(chain.send)
    first = asyncio.create_task(batcher.submit(item(0)))
    await asyncio.sleep(0)
    gone = asyncio.create_task(batcher.submit(item(1)))
    stays = asyncio.create_task(batcher.submit(item(2)))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    chain.gate.set()
    await first
    assert (await stays).requested.input_digest == item(2).digest
    assert [len(tx) for tx in chain.sent] == [1, 1]


def test_a_receipt_that_does_not_match_is_an_upstream_error() -> None:
    _needs_event_abi()
    receipt = {"logs": [requested_log(5, item(1).digest, 1, 1)], "blockNumber": 1}
    with pytest.raises(UpstreamError):
        match_receipt(receipt, [item(1), item(2)])  # one event for two requests
    with pytest.raises(UpstreamError):
        match_receipt(receipt, [item(2)])  # another digest
    assert match_receipt(receipt, [item(1)])[0].requested.id == 5


async def test_shared_call_serves_a_batch_once_and_a_later_batch_again() -> None:
    calls: list[int] = []
    gate = asyncio.Event()
    now = [10.0]

    async def assign(count: int) -> str:
        calls.append(count)
        n = len(calls)
        await gate.wait()
        return f"receipt-{n}"

    shared = SharedCall(assign, clock=lambda: now[0])
    batch = [asyncio.create_task(shared.run(since=10.0, arg=16)) for _ in range(16)]
    await asyncio.sleep(0)
    now[0] = 11.0
    later = asyncio.create_task(shared.run(since=11.0, arg=4))  # mined after the call was sent
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*batch)
    assert results == [("receipt-1", 16)] * 16 and await later == ("receipt-2", 1)
    assert calls == [16, 4]


def hub_revert(signature: str, *args: int) -> TxWouldRevert:
    """What the sender raises when `eth_estimateGas` reverts with the hub's custom error."""
    types = signature[signature.index("(") + 1 : -1].split(",") if args else []
    data = "0x" + (keccak(text=signature)[:4] + encode(types, list(args))).hex()
    return TxWouldRevert("execution reverted", data)


def caller_facing(cause: BaseException) -> ServiceUnavailable:
    """The send function's error, raised `from` the sender's (as `node.gateway.requesting` does)."""
    try:
        raise ServiceUnavailable(f"requestInference failed: {cause}") from cause
    except ServiceUnavailable as exc:
        return exc


class HubLikeChain(FakeChain):
    """Rejects a transaction as the hub's estimate would: `BadMaxTokens` when any entry declares 0."""

    async def send(self, items: Sequence[BatchItem]) -> dict[str, Any]:
        if any(i.max_tokens == 0 for i in items):
            self.sent.append(list(items))
            bad = next(i.max_tokens for i in items if i.max_tokens == 0)
            raise caller_facing(hub_revert("BadMaxTokens(uint256)", bad))
        return await super().send(items)


async def test_a_batch_one_entry_spoils_is_sent_again_one_request_a_transaction() -> None:
    _needs_event_abi()
    chain = HubLikeChain()
    chain.gate = asyncio.Event()
    batcher = RequestBatcher(chain.send)
    bad = BatchItem(digest=b"\x09" * 32, max_tokens=0, fee=1)
    first, rest = await hold_first(batcher, [item(1), item(2), bad, item(3)])
    chain.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert [len(tx) for tx in chain.sent] == [1, 4, 1, 1, 1, 1]  # the batch, then each alone
    assert isinstance(results[3], ServiceUnavailable)  # only the spoiling request fails
    good = [r for i, r in enumerate(results) if i != 3]
    assert all(not isinstance(r, BaseException) for r in good)
    assert sorted(r.requested.input_digest for r in good) == sorted(item(i).digest for i in range(4))  # type: ignore[union-attr]
    assert [r.size for r in good] == [1, 1, 1, 1]  # type: ignore[union-attr]
    assert batcher.sent_txs == 4 and batcher.sent_requests == 4 and batcher.split_batches == 1


@pytest.mark.parametrize(
    "cause",
    [
        hub_revert("NotEnoughMiners(uint256,uint256)", 2, 1),  # the same for every request
        hub_revert("WrongFee(uint256,uint256)", 5, 4),  # one price for all: a stale price
        TxWouldRevert("insufficient funds for gas * price + value"),  # no revert data: not the content
        TxNonceGap("nonce 7 was lost"),
        TxTimeout("no receipt"),
        TxReverted("0x" + "11" * 32, {"status": 0, "gasUsed": 90_000}),  # gas spent; the estimate passed
    ],
    ids=["no-miners", "wrong-fee", "insufficient-funds", "nonce-gap", "timeout", "mined-revert"],
)
async def test_failures_that_would_repeat_fail_the_batch_once(cause: Exception) -> None:
    _needs_event_abi()
    chain = FakeChain()
    chain.gate = asyncio.Event()
    batcher = RequestBatcher(chain.send)
    first, rest = await hold_first(batcher, [item(i) for i in range(1, 4)])
    chain.fail = caller_facing(cause)
    chain.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert [len(tx) for tx in chain.sent] == [1, 3]  # not sent again
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    assert batcher.sent_txs == 0 and batcher.split_batches == 0


def test_which_failures_are_split() -> None:
    assert content_revert(caller_facing(hub_revert("BadMaxTokens(uint256)", 0)))
    assert content_revert(caller_facing(hub_revert("ZeroDigest()")))
    assert content_revert(caller_facing(hub_revert("BadBatch()")))
    assert not content_revert(caller_facing(hub_revert("UnknownModel()")))
    assert not content_revert(ServiceUnavailable("no cause"))
    assert not content_revert(TxWouldRevert("execution reverted", {"data": "0x"}))


async def test_the_gateway_settings_set_the_cap_and_the_slots() -> None:
    _needs_event_abi()
    settings = GatewaySettings(request_batch_max=3, request_batch_slots=2)
    chain = FakeChain()
    chain.gate = asyncio.Event()
    batcher = RequestBatcher(
        chain.send, max_batch=settings.request_batch_max, max_in_flight=settings.request_batch_slots
    )
    tasks = [asyncio.create_task(batcher.submit(item(i))) for i in range(9)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [len(tx) for tx in chain.sent] == [1, 1] and batcher.waiting == 7  # two slots in flight
    chain.gate.set()
    await asyncio.gather(*tasks)
    assert [len(tx) for tx in chain.sent] == [1, 1, 3, 3, 1]  # three a transaction at the most
    for bad in ({"request_batch_max": 65}, {"request_batch_max": 0}, {"request_batch_slots": 0},
                {"request_batch_slots": 17}):  # fmt: skip
        with pytest.raises(ValueError):
            GatewaySettings(**bad)  # type: ignore[arg-type]


async def test_a_request_waits_for_a_slot_at_most_max_wait_s() -> None:
    """On a chain with a block time a slot frees only when a block is mined: a request that waited
    `max_wait_s` goes out beside the transaction on its way (so it still makes the next block), at
    most `OVERFLOW_SLOTS` beyond the slots; without the bound it waits for the slot."""
    _needs_event_abi()
    chain = FakeChain()
    chain.gate = asyncio.Event()
    batcher = RequestBatcher(chain.send, max_wait_s=0.05)
    first, rest = await hold_first(batcher, [item(1), item(2)])
    assert len(chain.sent) == 1 and batcher.waiting == 2
    await asyncio.sleep(0.1)  # past the bound, the first transaction still on its way
    assert [len(tx) for tx in chain.sent] == [1, 2] and batcher.waiting == 0 and batcher.overflow_txs == 1
    late = [asyncio.create_task(batcher.submit(item(i))) for i in range(3, 3 + 64 * (OVERFLOW_SLOTS + 1))]
    await asyncio.sleep(0.1)
    # the cap: 1 slot + OVERFLOW_SLOTS transactions on their way (one went above), the rest wait
    assert len(chain.sent) == 1 + OVERFLOW_SLOTS and batcher.waiting == len(late) - 64 * (OVERFLOW_SLOTS - 1)
    chain.gate.set()
    placed = [await first, *await asyncio.gather(*rest, *late)]
    assert [p.requested.id for p in placed] == list(range(1, len(placed) + 1))  # each once, in order

    chain = FakeChain()
    chain.gate = asyncio.Event()
    unbounded = RequestBatcher(chain.send, max_wait_s=None)
    first, rest = await hold_first(unbounded, [item(1)])
    await asyncio.sleep(0.1)
    assert len(chain.sent) == 1 and unbounded.waiting == 1 and unbounded.overflow_txs == 0
    chain.gate.set()
    await asyncio.gather(first, *rest)
    assert GatewaySettings().request_batch_wait_s == 0.25
    assert GatewaySettings(request_batch_wait_s=0).request_batch_wait_s == 0
