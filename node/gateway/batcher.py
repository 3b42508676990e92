"""Requests that arrive while one is on its way go out together: one `requestInferences` transaction.

A request transaction pays a base cost (21k intrinsic gas, the call, the auto-assignment it carries)
that a batch shares; requests per block are what a chain's gas limit caps. Waiting on a timer would
add latency to every request, so there is none: the first request goes out at once, and the requests
that arrive while `max_in_flight` request transactions are on their way are collected and sent
together (up to `MAX_BATCH`, the hub's cap) as soon as a slot frees — on a chain with a block time,
the requests that arrive within one block share the next transaction. A lone request is sent as a
plain `requestInference`, exactly as before.

Each caller gets its own request id: the i-th `InferenceRequested` event of the receipt (the hub
numbers a batch `firstId + i`, checked here against the digests sent). A failure of the transaction
is each caller's failure (the error the send function raised, one copy per caller) unless `split`
says one request's content may be the cause: then each request of the batch is sent again on its own
(`requestInference`) and succeeds or fails by itself. The default, `content_revert`, splits only a
batch whose gas estimate reverted with one of the hub errors that name a single entry or the batch's
shape (`ZeroDigest`, `BadMaxTokens`, `BadBatch`, `LengthMismatch`, `ValueTooLarge`): nothing was
paid, and the others' requests are fine. Every other failure would just repeat once per request:
`UnknownModel`, `NotEnoughMiners`, `WrongFee` (one price for all), an estimate the node refused
without revert data (insufficient funds, RPC trouble), a fee cap, a nonce gap, a timeout (the batch
may still be mined), or a mined revert (`TxReverted`: its estimate passed, so the chain's state,
not the content, changed; and its gas is spent). A caller that goes away before its batch is sent
is left out of it (nothing is paid for it).

**A bounded wait** (`max_wait_s`, `gateway.request_batch_wait_s`, 0.25 s): a request waits for a free
slot at most that long; then its batch goes out beside those on their way (at most `OVERFLOW_SLOTS`
more). On automine a transaction is mined within milliseconds, so a slot frees first and nothing
changes. On a chain with a block time a slot frees only when a block is mined: without the bound, a
request that arrived just after a batch was sent waited for that block, then for the next one (a
whole block more); with it, it still makes the next block, and the requests of one block share a
few transactions (at most one per `max_wait_s`) instead of one.

`max_batch` (≤ `MAX_BATCH`), `max_in_flight` and `max_wait_s` come from `gateway.request_batch_max`,
`gateway.request_batch_slots` and `gateway.request_batch_wait_s`.

`SharedCall` lets the callers of one batch share the `assign` transaction that materialises their
seats, instead of sending one each. `next_mined` hands out the transaction on its way (every request
transaction materialises the requests due before it: `node.gateway.requesting` waits for it before
paying for an `assign` of its own).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from node.chain.errors import decode_revert
from node.chain.events import InferenceRequested, decode_logs
from node.chain.hub import MAX_BATCH
from node.chain.sender import TxWouldRevert
from node.gateway.errors import UpstreamError
from node.log import get_logger

log = get_logger("gateway.batcher")

T = TypeVar("T")


@dataclass(frozen=True)
class BatchItem:
    """One caller's request: what the hub is told, and what it pays."""

    digest: bytes
    max_tokens: int
    fee: int


@dataclass(frozen=True)
class Placed:
    """A caller's request as mined: the shared receipt and its own `InferenceRequested`."""

    receipt: Any
    requested: InferenceRequested
    index: int
    size: int
    """How many requests the transaction carried (its gas is shared by as many)."""
    mined_at: float
    """When the receipt came (`time.monotonic`, the same for the whole batch)."""


SendBatch = Callable[[Sequence[BatchItem]], Awaitable[Any]]
"""Sends one transaction for the items (one item: `requestInference`), returns its receipt, raises
the caller-facing error on failure."""


OVERFLOW_SLOTS = 8
"""Request transactions a model may have on its way beyond `max_in_flight`, sent by the wait bound."""


SPLIT_ON = frozenset({"ZeroDigest", "BadMaxTokens", "BadBatch", "LengthMismatch", "ValueTooLarge"})
"""Hub errors of a batch's gas estimate that one entry (or the batch's shape) can cause."""


def content_revert(exc: BaseException) -> bool:
    """Whether sending a failed batch's requests one by one can help (see module docstring).

    Looks through the caller-facing error's causes for the sender's `TxWouldRevert` and decodes its
    revert data; anything else (no revert data, another error type) is not split.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TxWouldRevert):
            data = seen.data.get("data") if isinstance(seen.data, dict) else seen.data
            if not isinstance(data, str | bytes) or not data:
                return False
            return decode_revert(data).name in SPLIT_ON
        seen = seen.__cause__
    return False


def _own_copy(exc: BaseException) -> BaseException:
    """One exception object per caller, so their tracebacks do not mix."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc


class RequestBatcher:
    """Batches the requests for one model on one chain (see module docstring)."""

    def __init__(
        self,
        send: SendBatch,
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = 1,
        max_wait_s: float | None = 0.25,
        split: Callable[[BaseException], bool] = content_revert,
    ) -> None:
        self.send = send
        self.max_batch = max(1, min(max_batch, MAX_BATCH))
        self.max_in_flight = max(1, max_in_flight)
        self.max_wait_s = max_wait_s if max_wait_s and max_wait_s > 0 else None
        self.split = split
        self._overdue: asyncio.TimerHandle | None = None
        """Fires `max_wait_s` after a request found every slot taken (the wait bound)."""
        self.overflow_txs = 0
        self._waiting: list[tuple[BatchItem, asyncio.Future[Placed]]] = []
        self._in_flight = 0
        self._mined: asyncio.Future[Any] | None = None
        """The receipt of the latest request transaction sent (None once it failed)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent_txs = 0
        self.sent_requests = 0
        self.split_batches = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def next_mined(self) -> asyncio.Future[Any] | None:
        """The receipt (None: failed) of the request transaction on its way now, if there is one."""
        mined = self._mined
        return None if mined is None or mined.done() else asyncio.shield(mined)

    async def submit(self, item: BatchItem) -> Placed:
        """Send `item` in the next transaction; returns once it is mined (raises what the send did)."""
        fut: asyncio.Future[Placed] = asyncio.get_running_loop().create_future()
        entry = (item, fut)
        self._waiting.append(entry)
        self._pump()
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if entry in self._waiting:  # not sent yet: leave it out
                self._waiting.remove(entry)
            raise

    def _pump(self) -> None:
        while self._waiting and self._in_flight < self.max_in_flight:
            self._launch()
        if not self._waiting:
            if self._overdue is not None:
                self._overdue.cancel()
                self._overdue = None
        elif self._overdue is None and self.max_wait_s is not None:
            self._overdue = asyncio.get_running_loop().call_later(self.max_wait_s, self._overflow)

    def _overflow(self) -> None:
        """The wait bound: send what waited `max_wait_s` beside the transactions on their way."""
        self._overdue = None
        while self._waiting and self._in_flight < self.max_in_flight + OVERFLOW_SLOTS:
            self.overflow_txs += 1
            self._launch()
        self._pump()

    def _launch(self) -> None:
        batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
        self._in_flight += 1
        task = asyncio.create_task(self._run(batch), name=f"request-batch-{len(batch)}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[BatchItem, asyncio.Future[Placed]]]) -> None:
        items = [item for item, _ in batch]
        started = time.monotonic()
        mined = self._mined = asyncio.get_running_loop().create_future()
        receipt: Any = None
        try:
            receipt = await self.send(items)
            placed = match_receipt(receipt, items, mined_at=time.monotonic())
        except BaseException as exc:
            if len(batch) > 1 and isinstance(exc, Exception) and self.split(exc):
                self.split_batches += 1
                log.info("request_batch_split", size=len(batch), error=type(exc).__name__)
                await asyncio.gather(*(self._run_alone(entry) for entry in batch))
                return
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(_own_copy(exc))
            if not isinstance(exc, Exception):
                raise
            return
        else:
            self.sent_txs += 1
            self.sent_requests += len(batch)
            for (_, fut), one in zip(batch, placed, strict=True):
                if not fut.done():
                    fut.set_result(one)
            if len(batch) > 1:
                log.info("requests_batched", size=len(batch), block=int(receipt["blockNumber"]),
                         tx_s=round(time.monotonic() - started, 3))  # fmt: skip
        finally:
            if not mined.done():
                mined.set_result(receipt)
            self._in_flight -= 1
            self._pump()

    async def _run_alone(self, entry: tuple[BatchItem, asyncio.Future[Placed]]) -> None:
        """One request of a split batch, in a transaction of its own (the batch's slot is held)."""
        item, fut = entry
        try:
            receipt = await self.send([item])
            (placed,) = match_receipt(receipt, [item], mined_at=time.monotonic())
        except Exception as exc:  # this request's own failure: its caller gets it, the others go on
            log.info("request_alone_failed", error=type(exc).__name__)
            if not fut.done():
                fut.set_exception(exc)
        else:
            self.sent_txs += 1
            self.sent_requests += 1
            if not fut.done():
                fut.set_result(placed)

    async def close(self) -> None:
        """Wait for the transactions on their way (their callers are answered either way)."""
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        if self._tasks:
            await asyncio.wait(set(self._tasks))


def match_receipt(receipt: Any, items: Sequence[BatchItem], *, mined_at: float = 0.0) -> list[Placed]:
    """Each item's own `InferenceRequested` in `receipt`: the i-th one, numbered `firstId + i`."""
    events = [e for e in decode_logs(receipt["logs"]) if isinstance(e, InferenceRequested)]
    if len(events) != len(items):
        raise UpstreamError(
            f"the request transaction was mined with {len(events)} InferenceRequested events "
            f"for {len(items)} requests"
        )
    first = events[0].id
    out: list[Placed] = []
    for i, (ev, item) in enumerate(zip(events, items, strict=True)):
        if ev.id != first + i or ev.input_digest != item.digest:
            raise UpstreamError(
                f"InferenceRequested #{i} of the request transaction does not match what was sent "
                f"(id {ev.id}, expected {first + i})"
            )
        out.append(Placed(receipt=receipt, requested=ev, index=i, size=len(items), mined_at=mined_at))
    return out


@dataclass
class _Call(Generic[T]):
    task: asyncio.Future[T]
    started: float
    sharers: int = 0


class SharedCall(Generic[T]):
    """One call at a time, shared by every caller that needs a call started no earlier than `since`.

    `run(since, arg)` joins the call on its way when it started at or after `since` (so it serves
    this caller too), else starts a new one with `arg`. Returns the result and how many callers
    shared it (final once it is done: nobody joins a finished call), so a cost can be split.
    """

    def __init__(
        self, fn: Callable[[int], Awaitable[T]], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fn = fn
        self.clock = clock
        self._call: _Call[T] | None = None

    async def run(self, since: float, arg: int) -> tuple[T, int]:
        call = self._call
        if call is None or call.task.done() or call.started < since:
            call = self._call = _Call(asyncio.ensure_future(self.fn(arg)), self.clock())
        call.sharers += 1
        result = await asyncio.shield(call.task)
        return result, call.sharers


__all__ = [
    "MAX_BATCH",
    "SPLIT_ON",
    "BatchItem",
    "Placed",
    "RequestBatcher",
    "SendBatch",
    "SharedCall",
    "content_revert",
    "match_receipt",
]
