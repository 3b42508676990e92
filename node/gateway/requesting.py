"""The request path: content store → `requestInference` (batched) → `assign` → a registered
`PendingInference`, kept apart from the chain backend that follows events and answers lookups.

Protocol v2: a request declares `maxTokens` (`node.gateway.work`) and pays exactly
`price(model, maxTokens)`; its seats are drawn from the hash of its own block, so they exist only
from the next block on. The gateway sends `assign` as soon as that block exists unless an
`InferenceAssigned` for the request already came (another request or anyone may materialise it); on
an automining dev chain the `assign` transaction is itself the next block. Requests of one model
share a transaction (`node.gateway.batcher` holds that policy) and the requests of one batch share
one `assign`; each submission's `gas_cost` carries its share of both.

The seats are known before `assign` is mined, though: the gateway draws them itself from its
request's block (`node.chain.draw`, bit-exact with the hub) and hands them to the registry
(`on_drawn`), so a request returns at once and accepts its seat's deltas and signed result while
`assign` (still sent: it is what puts the seat, and so its signature, under the equivocation
slashing) is mined in the background. A private input is sealed to the drawn seat too, but only
once the request's block has `chain.confirmations` blocks on it and is still the chain's block of
that number: the same confirmations the gateway's follower waits for before it trusts
`InferenceAssigned`, so the drawn seat is exactly as final as the assignment would be, and a reorg
of the request block (a new seed, other seats) never hands the prompt to a miner the chain does
not seat. The chain's seats are sealed to when `InferenceAssigned` comes: read from the gateway's
own `assign` receipt at once when it takes no confirmations, else as the follower delivers it.

`Requester` takes what it needs from the backend as callables (chain events a receipt carries, the
private-input sealer, the recent-answers cache), so the backend stays the only place that wires them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from node.chain.abicall import quantity, rpc
from node.chain.draw import SeatDraw
from node.chain.errors import ChainError, decode_revert
from node.chain.events import HubEvent, InferenceAssigned, InferenceRefunded, decode_logs, event_topic
from node.chain.hub import ASSIGN_GAS, AUTO_ASSIGN, MAX_BATCH, Phase
from node.chain.sender import (
    TxError,
    TxFeeCapExceeded,
    TxNonceGap,
    TxReverted,
    TxTimeout,
    TxWouldRevert,
)
from node.content.cid import digest_of, digest_to_cid
from node.content.documents import InputDocument
from node.content.errors import ContentError
from node.content.store import ContentStore
from node.gateway.batcher import BatchItem, RequestBatcher, SharedCall
from node.gateway.errors import GatewayError, ModelNotFound, ServiceUnavailable, UpstreamError
from node.gateway.link import ChainLink
from node.gateway.pending import PendingInference, PendingRegistry
from node.gateway.private import make_private
from node.gateway.records import ModelInfo, Submission, VerifiedResult
from node.gateway.work import declared_max_tokens
from node.log import get_logger

log = get_logger("gateway.chain")  # the chain backend's logger: its events did not change with the split

ASSIGN_BATCH = 4
"""Requests one `assign` transaction may materialise (ours and any due before it)."""
RECEIPTS_REMEMBERED = 256
"""Shared `assign` receipts remembered as read (a batch's sharers read theirs within moments)."""
BLOCK_TIMES_REMEMBERED = 64
"""Request blocks whose timestamp reads are kept (a batch's requests share one block, one read)."""
ASSIGN_WAIT_S = 30.0
"""How long `submit` keeps trying to assign its request before leaving that to the watcher."""

EventHandler = Callable[[int, HubEvent], None]
Sealer = Callable[[ChainLink, int, tuple[str, ...]], None]
Remember = Callable[["asyncio.Future[VerifiedResult]", Submission], None]


def gas_cost(receipt: Any) -> int:
    """Wei a mined transaction paid for gas (gasUsed × effectiveGasPrice)."""
    try:
        return int(receipt.get("gasUsed", 0)) * int(receipt.get("effectiveGasPrice", 0))
    except (AttributeError, TypeError, ValueError):
        return 0


_REQUESTED = bytes.fromhex(event_topic("InferenceRequested").removeprefix("0x"))


def receipt_events(receipt: Any) -> list[HubEvent]:
    """The hub events of a receipt that say something about seats (a request transaction's own
    `InferenceRequested` logs, one per request it placed, are the batcher's: not decoded again)."""
    return decode_logs(log for log in receipt["logs"] if _topic0(log) != _REQUESTED)


def _topic0(log: Any) -> bytes | None:
    topics = log.get("topics")
    if not topics:
        return None
    first = topics[0]
    return bytes.fromhex(first.removeprefix("0x")) if isinstance(first, str) else bytes(first)


def _hash(value: Any) -> str:
    """A block hash as 0x-hex (receipts and blocks give HexBytes, some providers str)."""
    return value if isinstance(value, str) else "0x" + bytes(value).hex()


def refunded(request_id: int) -> UpstreamError:
    return UpstreamError(
        f"Request {request_id} was refunded on chain: no miner could be assigned, or none answered "
        "in time after a reassignment. The fee went back to the gateway's wallet.",
        code="refunded",
        request_id=request_id,
    )


def revert_error(exc: TxWouldRevert, model: ModelInfo) -> GatewayError:
    """What a `requestInference` that would revert tells the caller (unknown model, no miners, ...)."""
    data = exc.data
    if isinstance(data, dict):
        data = data.get("data")
    err = decode_revert(data if isinstance(data, str | bytes) else None)
    if err.name == "UnknownModel":
        return ModelNotFound(model.name, model.chain_id)
    if err.name == "NotEnoughMiners":
        return ServiceUnavailable(
            f"Not enough active miners serve `{model.name}` on chain {model.chain_id}: {err}",
            param="model",
            code="no_miners",
        )
    return ServiceUnavailable(f"requestInference would revert: {err}", code="chain_rejected")


class Requester:
    """Places requests on a `ChainLink` and registers them as pending (see module docstring)."""

    def __init__(
        self,
        store: ContentStore,
        registry: PendingRegistry,
        *,
        on_event: EventHandler,
        private_event: EventHandler,
        seal: Sealer,
        remember: Remember,
        batch_max: int = MAX_BATCH,
        batch_slots: int = 1,
        batch_wait_s: float | None = 0.25,
    ) -> None:
        self.store = store
        self.registry = registry
        self._on_event = on_event
        """The backend's chain-event handler, for the assignments and refunds a receipt carries."""
        self._private_event = private_event
        self._seal = seal
        self._remember = remember
        self._read_receipts: OrderedDict[bytes | int, bool] = OrderedDict()
        """Receipts already read (`_first_read`), newest last: True for an `assign` that materialised
        fewer requests than it could (every request due at its block left `Pending`)."""
        self.batch_max = batch_max
        self._assigning: set[asyncio.Task[None]] = set()
        """`_ensure_assigned` of requests already answering on their drawn seats."""
        self._draws: dict[int, SeatDraw] = {}
        self._confirming: set[asyncio.Task[None]] = set()
        """Private inputs waiting for their drawn seats' block to be confirmed (`_seal_drawn`)."""
        self.batch_slots = batch_slots
        self.batch_wait_s = batch_wait_s
        """`gateway.request_batch_max` / `_slots` / `_wait_s`, for each model's `RequestBatcher`."""
        self._block_times: OrderedDict[tuple[int, str], asyncio.Future[int]] = OrderedDict()
        """(chain, block hash) → its timestamp read (`_block_time`), shared by the block's requests."""
        self._requested: dict[int, int] = {}
        """Per chain, the highest request id this gateway placed (what an `assign` should reach)."""
        self._materialised: dict[int, int] = {}
        """Per chain, the highest request id an `InferenceAssigned` or `InferenceRefunded` named (a
        receipt's or the follower's: `on_materialised`). The hub materialises due requests in id
        order, so every id up to it has left `Pending` (`_ensure_assigned` need not ask the chain)."""

    async def submit(
        self,
        link: ChainLink,
        document: InputDocument,
        document_bytes: bytes,
        model: ModelInfo,
        *,
        private: bool,
        live: bool = True,
    ) -> PendingInference:
        """Store (or seal, when `private`) the input, request it, assign it, register it.

        `live`: whether deltas are relayed; a private input's seats are told when not
        (`EnvelopeBook.expect`). A public input's seats cannot be, and publish them anyway."""
        chain_id = link.chain_id
        desk = link.private if private else None
        if desk is not None:  # never stored in plaintext: sealed to the seats once they are known
            document, document_bytes = make_private(document, desk.public_key, document_bytes)
            input_cid = digest_to_cid(digest_of(document_bytes))
        else:
            try:
                input_cid = await self.store.put(document_bytes)
            except ContentError as exc:
                raise ServiceUnavailable(f"Cannot store the input document: {exc}") from exc
        digest = digest_of(document_bytes)
        max_tokens = declared_max_tokens(document)
        fee = model.price(max_tokens)
        mid = bytes.fromhex(model.model_id.removeprefix("0x"))
        if desk is not None:  # a drawn seat asks for its envelope as soon as the request is mined:
            desk.book.expect(input_cid, live=live)  # held until sealed, not a 404 that costs it a retry
        try:
            placed = await self._batcher(link, mid, model).submit(BatchItem(digest, max_tokens, fee))
        except BaseException:
            if desk is not None:
                desk.book.drop(input_cid)
            raise
        receipt, requested = placed.receipt, placed.requested
        last = requested.id - placed.index + placed.size - 1  # the batch's last id
        self._requested[chain_id] = max(self._requested.get(chain_id, 0), last)
        request_block = int(receipt["blockNumber"])
        drawn = asyncio.ensure_future(self._seats(link, model, requested.id, receipt))  # meanwhile
        created = await self._block_time(link, receipt)
        sub = Submission(
            chain_id=chain_id,
            hub=link.hub_address,
            request_id=requested.id,
            infer_tx=requested.log.tx_hash,
            assignees=(),
            input_cid=input_cid,
            input_digest=digest,
            model=model.name,
            fee=fee,
            deadline_block=None,
            created=created,
            gas_cost=gas_cost(receipt) // placed.size,
            max_tokens=max_tokens,
            engine_class=model.engine_class,
        )
        if desk is not None:
            assert document.salt is not None
            desk.register((chain_id, requested.id), input_cid, document_bytes, document.salt)
        pending = self.registry.register(sub)
        pending.result_future.add_done_callback(lambda f: self._remember(f, pending.submission))
        if self._first_read(receipt):  # a batch's receipt is read once (it assigns requests before it)
            self._on_receipt_events(link, receipt_events(receipt))
        if not pending.assigned and await self._draw(link, pending, model, drawn):
            # the request transaction on its way materialises the first due requests: maybe this one
            later = self._batcher(link, mid, model).next_mined()
            task = asyncio.create_task(
                self._ensure_assigned(link, pending, since=placed.mined_at, batch=placed.size, later=later),
                name=f"assign-{requested.id}",
            )
            self._assigning.add(task)
            task.add_done_callback(self._assigning.discard)
            pending.assigning = task  # the caller settles the call's spend once its gas is known
        else:
            await self._ensure_assigned(link, pending, since=placed.mined_at, batch=placed.size)
        if desk is not None and pending.drawn:
            self._seal_drawn(link, requested.id, pending.submission.assignees, request_block, receipt)
        elif desk is not None and link.settings.confirmations == 0:
            # taking confirmations, the seats of our own `assign` receipt wait for them too: the
            # follower's `InferenceAssigned` seals then (`node.gateway.sealing`)
            self._seal(link, requested.id, pending.submission.assignees)
        if link.follower is not None:
            link.follower.wake()
        return pending

    def on_materialised(self, chain_id: int, request_id: int) -> None:
        """An `InferenceAssigned` or `InferenceRefunded` of `request_id` (see `_materialised`)."""
        if request_id > self._materialised.get(chain_id, 0):
            self._materialised[chain_id] = request_id

    async def close(self) -> None:
        """Stop the background `assign`s and waits for confirmations (the backend is closing)."""
        tasks = [*self._assigning, *self._confirming]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _block_time(self, link: ChainLink, receipt: Any) -> int:
        """The timestamp of the receipt's block (a submission's `created`; now when it cannot be
        read): the receipt's own `blockTimestamp` where the node gives one (anvil, recent geth),
        else one `eth_getBlockByNumber` per block, however many requests of a batch it holds."""
        stamped = receipt.get("blockTimestamp")
        if stamped is not None:
            return quantity(stamped)
        key = (link.chain_id, _hash(receipt["blockHash"]).lower())
        reading = self._block_times.get(key)
        if reading is None:
            reading = self._block_times[key] = asyncio.ensure_future(
                self._read_block_time(link, int(receipt["blockNumber"]))
            )
            while len(self._block_times) > BLOCK_TIMES_REMEMBERED:
                self._block_times.popitem(last=False)
        return reading.result() if reading.done() else await asyncio.shield(reading)

    @staticmethod
    async def _read_block_time(link: ChainLink, number: int) -> int:
        try:
            return quantity(
                (await rpc(link.hub.w3, "eth_getBlockByNumber", [hex(number), False]))["timestamp"]
            )
        except Exception as exc:  # `created` only dates the answer; the request goes on
            log.warning("block_time_unread", block=number, error=f"{type(exc).__name__}: {exc}")
            return int(time.time())

    async def _seats(self, link: ChainLink, model: ModelInfo, rid: int, receipt: Any) -> list[str] | None:
        """The request's seats drawn from its receipt's block (None: the draw failed, logged)."""
        draw = self._draws.get(link.chain_id)
        if draw is None:
            draw = self._draws[link.chain_id] = SeatDraw(link.hub)
        mid = bytes.fromhex(model.model_id.removeprefix("0x"))
        block, block_hash = int(receipt["blockNumber"]), _hash(receipt["blockHash"])
        try:
            return await draw.seats(mid, model.redundancy, rid, block, block_hash)
        except (ChainError, OSError, ValueError) as exc:
            log.warning("seat_draw_failed", request_id=rid, error=str(exc))
            return None

    async def _draw(
        self,
        link: ChainLink,
        pending: PendingInference,
        model: ModelInfo,
        drawn: asyncio.Future[list[str] | None],
    ) -> bool:
        """Hand the registry the seats drawn from the request's block (`_seats`); False when that
        failed or draws a refund (then the chain's answer is awaited as before)."""
        seats = await drawn
        if seats is None or len(seats) < model.redundancy:
            return False
        self.registry.on_drawn(link.chain_id, pending.request_id, tuple(seats))
        return True

    def _seal_drawn(
        self, link: ChainLink, rid: int, seats: tuple[str, ...], block: int, receipt: Any
    ) -> None:
        """Seal a private input to its drawn seats once their block is as final as an assignment
        (module docstring); at once when the gateway takes no confirmations."""
        if link.settings.confirmations == 0:
            self._seal(link, rid, seats)
            return
        coro = self._seal_when_confirmed(link, rid, seats, block, _hash(receipt["blockHash"]))
        task = asyncio.create_task(coro, name=f"seal-drawn-{rid}")
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    async def _seal_when_confirmed(
        self, link: ChainLink, rid: int, seats: tuple[str, ...], block: int, block_hash: str
    ) -> None:
        """Wait until `block` has `chain.confirmations` on it, then seal to `seats` if it is still
        the request's block; otherwise (reorged away, request ended, RPC trouble, `ASSIGN_WAIT_S`)
        leave the sealing to the chain's `InferenceAssigned`."""
        assert link.private is not None
        key = (link.chain_id, rid)
        poll = max(0.05, min(link.settings.poll_interval_s, 1.0))
        give_up = time.monotonic() + ASSIGN_WAIT_S
        try:
            while int(await link.hub.w3.eth.block_number) < block + link.settings.confirmations:
                if link.private.get(key) is None or time.monotonic() > give_up:
                    return
                await asyncio.sleep(poll)
            canonical = _hash((await link.hub.w3.eth.get_block(block))["hash"])
        except (ChainError, OSError, ValueError) as exc:
            log.warning("drawn_seal_failed", request_id=rid, chain_id=link.chain_id, error=str(exc))
            return
        if canonical.lower() != block_hash.lower():
            log.warning("drawn_seat_reorged", request_id=rid, chain_id=link.chain_id, block=block)
            return
        self._seal(link, rid, seats)

    def _first_read(self, receipt: Any) -> bool:
        """True the first time a receipt is seen (a batch's requests, an `assign`'s sharers and the
        requests waiting for the next request transaction all get the same one)."""
        key = self._receipt_key(receipt)
        if key in self._read_receipts:
            return False
        self._read_receipts[key] = False
        while len(self._read_receipts) > RECEIPTS_REMEMBERED:
            self._read_receipts.popitem(last=False)
        return True

    @staticmethod
    def _receipt_key(receipt: Any) -> bytes | int:
        return bytes(receipt.get("transactionHash") or b"") or id(receipt)

    def _materialises(self, link: ChainLink, pending: PendingInference) -> bool:
        """Whether the chain named the request's seats, or events say it left `Pending` (`_materialised`)."""
        return pending.chain_assigned or self._materialised.get(link.chain_id, 0) >= pending.request_id

    def _on_receipt_events(self, link: ChainLink, events: list[HubEvent]) -> None:
        """Assignments a receipt carries (a request materialises earlier ones; `assign` ours). A
        private input is sealed to them at once only when the gateway takes no confirmations;
        otherwise when the follower delivers them (a reorg could still change a fresh receipt's
        seats, and the prompt must reach no miner the chain does not name)."""
        for ev in events:
            if link.settings.confirmations == 0:
                self._private_event(link.chain_id, ev)
            if isinstance(ev, InferenceAssigned | InferenceRefunded):
                self._on_event(link.chain_id, ev)

    async def _ensure_assigned(
        self,
        link: ChainLink,
        pending: PendingInference,
        *,
        since: float = 0.0,
        batch: int = 1,
        later: Awaitable[Any] | None = None,
    ) -> None:
        """Materialise the request's seats with `assign`, unless a receipt already showed them.

        A transaction sent after the request's receipt is mined in a later block, where the
        request's block hash (its seed) exists: on an automining chain the `assign` is that next
        block. `later` is the request transaction already on its way (`RequestBatcher.next_mined`):
        it materialises the first `AUTO_ASSIGN` due requests, and the requests it places join the
        `assign` sent after it: it is waited for (once) before paying for an `assign`, so under a
        steady stream of small batches most requests need none of their own and the others share
        one for several batches (`_send_assign` reaches every request placed). The hub
        materialises due requests in id order, so an assignment or refund of a later id
        (`_materialised`), or an `assign` that materialised fewer requests than it could, says that
        this one left `Pending` without a chain read: a drawn request then leaves its seats to the
        follower's `InferenceAssigned`; only one without drawn seats reads them from the request
        view. The requests of one batch share one `assign` (sent after their receipt: `since`),
        and its gas, added to each submission's `gas_cost`, is split among them. It is sent whether
        or not the call was answered meanwhile (the request is paid for; its seat must be able to
        commit). Gives up after `ASSIGN_WAIT_S` (RPC trouble): the watcher still delivers
        `InferenceAssigned`.
        """
        rid = pending.request_id
        give_up = time.monotonic() + ASSIGN_WAIT_S
        poll = max(0.05, min(link.settings.poll_interval_s, 1.0))
        try:
            receipt = None if later is None else await later
            if receipt is not None and self._first_read(receipt):
                self._on_receipt_events(link, receipt_events(receipt))
            while not self._materialises(link, pending):
                if time.monotonic() > give_up:
                    log.warning("assign_wait_gave_up", request_id=rid, chain_id=link.chain_id)
                    return
                if link.assigner is None:
                    link.assigner = SharedCall(functools.partial(self._send_assign, link))
                (receipt, count), sharers = await link.assigner.run(since, max(ASSIGN_BATCH, batch))
                since = time.monotonic()  # assigning again: a later transaction
                pending.submission = replace(
                    pending.submission, gas_cost=pending.submission.gas_cost + gas_cost(receipt) // sharers
                )
                if self._first_read(receipt):  # its sharers' seats too: decoded once, not once each
                    events = receipt_events(receipt)
                    self._on_receipt_events(link, events)
                    done = sum(isinstance(e, InferenceAssigned | InferenceRefunded) for e in events)
                    self._read_receipts[self._receipt_key(receipt)] = done < count
                if self._read_receipts.get(self._receipt_key(receipt)):
                    self.on_materialised(link.chain_id, rid)  # due at the assign's block: done
                if self._materialises(link, pending):
                    break
                await asyncio.sleep(poll)  # the assign went to requests due before it: assign again
            if pending.chain_assigned or pending.drawn or pending.done():
                return  # the follower brings the seats of a drawn request
            view = await link.hub.get_request(rid)  # seats we never saw: the chain's word
            if view.phase == Phase.REFUNDED:
                self.registry.on_failed(link.chain_id, rid, refunded(rid))
            elif view.phase != Phase.PENDING:
                self.registry.on_assigned(link.chain_id, rid, view.assignees)
        except (ChainError, TxError, OSError) as exc:
            # the request is paid for; anyone (the next request, a miner, the watcher) can assign it
            log.warning("assign_failed", request_id=rid, chain_id=link.chain_id, error=str(exc))

    async def _send_assign(self, link: ChainLink, count: int = ASSIGN_BATCH) -> tuple[Any, int]:
        """`assign(count)`: (its receipt, the count sent); enough to reach every request this gateway
        placed (up to `MAX_BATCH`), gas for each request it may materialise on top of the estimate."""
        behind = self._requested.get(link.chain_id, 0) - self._materialised.get(link.chain_id, 0)
        count = max(count, min(behind, MAX_BATCH))
        data = link.hub.encode("assign", count)
        gas = await link.sender.estimate({"from": link.sender.address, "to": link.hub_address, "data": data})
        return await link.sender.send(link.hub_address, data, gas=gas + ASSIGN_BATCH * ASSIGN_GAS), count

    def _batcher(self, link: ChainLink, mid: bytes, model: ModelInfo) -> RequestBatcher:
        """The request batcher of `model` on `link`: `requestInference` alone, else `requestInferences`."""
        batcher = link.batchers.get(mid)
        if batcher is None:

            async def send(items: Sequence[BatchItem]) -> Any:
                if len(items) == 1:
                    data = link.hub.encode("requestInference", mid, items[0].digest, items[0].max_tokens)
                else:
                    digests, tokens = [i.digest for i in items], [i.max_tokens for i in items]
                    data = link.hub.encode("requestInferences", mid, digests, tokens)
                return await self._send_request(link, data, sum(i.fee for i in items), model)

            batcher = link.batchers[mid] = RequestBatcher(
                send, max_batch=self.batch_max, max_in_flight=self.batch_slots, max_wait_s=self.batch_wait_s
            )
        return batcher

    async def _send_request(self, link: ChainLink, data: bytes | str, fee: int, model: ModelInfo) -> Any:
        """Send `requestInference`; errors say what the wallet paid (`spent_wei`, None: unknown).

        The gas estimate cannot see the due requests this one materialises on its way (up to
        `AUTO_ASSIGN`), so their gas is added.
        """
        try:
            call = {"from": link.sender.address, "to": link.hub_address, "data": data, "value": fee}
            gas = await link.sender.estimate(call) + AUTO_ASSIGN * ASSIGN_GAS
            return await link.sender.send(link.hub_address, data, value=fee, gas=gas)
        except TxWouldRevert as exc:
            raise revert_error(exc, model) from exc
        except TxFeeCapExceeded as exc:
            raise ServiceUnavailable(
                f"Gas on chain {link.chain_id} is above this gateway's price cap right now; try again later.",
                code="gas_price_too_high",
                headers={"Retry-After": "30"},
            ) from exc
        except TxReverted as exc:
            raise ServiceUnavailable(
                f"requestInference reverted on chain {link.chain_id}: {exc}", spent_wei=gas_cost(exc.receipt)
            ) from exc
        except (TxTimeout, TxNonceGap, OSError) as exc:  # the transaction may still be mined
            raise ServiceUnavailable(
                f"requestInference failed on chain {link.chain_id}: {exc}", spent_wei=None
            ) from exc
        except TxError as exc:  # the node refused it: nothing was paid
            raise ServiceUnavailable(f"requestInference failed on chain {link.chain_id}: {exc}") from exc


__all__ = ["ASSIGN_BATCH", "ASSIGN_WAIT_S", "Requester", "gas_cost", "refunded", "revert_error"]
