"""The chain-backed `InferenceBackend`: content store → `requestInference` → `assign` → one watcher
+ one MQTT subscription → verified results.

Per configured chain there is one `ChainLink`: a read-only `HubClient` for views and the ABI, a
`TxSender` (nonce manager, EIP-1559, receipts) for the gateway's own transactions, and one
`LogFollower` over the protocol v2 events (`InferenceAssigned`, `ResultCommitted`, `ResultRevealed`,
`AuditOpened`, `CommitteeOpened`, `InferenceFinalized`, `InferenceRefunded`) that feeds the shared
`PendingRegistry`. MQTT result messages wake the follower, so a result signed and published by a
miner is matched against the chain as soon as its reveal is mined.

Protocol v2: a request declares `maxTokens` (`node.gateway.work`) and
pays exactly `price(model, maxTokens)`; its seats are drawn from the hash of its own block, so they
exist only from the next block on. The gateway sends `assign` as soon as that block exists unless an
`InferenceAssigned` for the request already came (another request or anyone may materialise it); on
an automining dev chain the `assign` transaction is itself the next block. Assignees, which MQTT
relaying and signature checks trust, come only from `InferenceAssigned` (or the request view once
someone else assigned it). The answer waits for `InferenceFinalized` (r = 1: after the reveal, and
after the audit when one was drawn) and says how the result was verified (`onchain_data.verification`),
unless the request answers on the assignee's signed result (`PendingInference.accept_signed`); then
`get_inference` later shows how it settled (`settlement`, `answer`), and a signer that commits or
reveals anything else is proven to equivocate with the gateway's wallet (`node.gateway.equivocation`).

The watchers and the MQTT subscription run under a `node.supervise.Supervisor`: an event whose
handling raises is logged and skipped, a loop that dies is restarted with backoff, and `health()`
(the gateway's `/healthz`) reports each loop and is not ok while one is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from eth_utils.address import to_checksum_address

from node.chain.errors import ChainError, HubError, decode_revert
from node.chain.events import (
    AuditOpened,
    CommitteeOpened,
    EscalationOpened,
    HubEvent,
    InferenceAssigned,
    InferenceFinalized,
    InferenceRefunded,
    ResultCommitted,
    ResultRevealed,
    decode_log,
    decode_logs,
    event_topic,
)
from node.chain.hub import ASSIGN_GAS, AUTO_ASSIGN, UNAVAILABLE, HubClient, Phase, model_id
from node.chain.sender import (
    TxError,
    TxFeeCapExceeded,
    TxNonceGap,
    TxReverted,
    TxSender,
    TxTimeout,
    TxWouldRevert,
)
from node.chain.watcher import LogBatch, LogFollower, MemoryCursor
from node.config import ChainSettings, Settings, StreamSettings
from node.content.cid import digest_of, digest_to_cid
from node.content.documents import InputDocument, parse_output_document
from node.content.envelope import MAX_RECIPIENTS
from node.content.errors import ContentError
from node.content.store import ContentStore
from node.gateway.batcher import BatchItem, RequestBatcher, SharedCall
from node.gateway.equivocation import broken_promise
from node.gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
)
from node.gateway.mqtt import Routed, Subscriber, delta_of, request_topics
from node.gateway.pending import PendingInference, PendingRegistry, recover_submission_signer
from node.gateway.private import (
    EnvelopeBook,
    PrivateDesk,
    PublicKeys,
    heartbeat_filter,
    make_private,
    offer_heartbeat,
)
from node.gateway.records import ModelInfo, Submission, VerifiedResult
from node.gateway.responses import build_response
from node.gateway.work import declared_max_tokens
from node.log import get_logger
from node.miner.private import open_delta
from node.stream.connection import credentials
from node.supervise import Supervisor, wait_task

log = get_logger("gateway.chain")

MODEL_CACHE_S = 2.0
ASSIGN_BATCH = 4
"""Requests one `assign` transaction may materialise (ours and any due before it)."""
ASSIGN_WAIT_S = 30.0
"""How long `submit` keeps trying to assign its request before leaving that to the watcher."""
WATCHED_EVENTS = (
    "InferenceAssigned",
    "ResultCommitted",
    "ResultRevealed",
    "AuditOpened",
    "CommitteeOpened",
    "InferenceFinalized",
    "InferenceRefunded",
    "EscalationOpened",  # private requests: the voters re-execute the input (node.gateway.private)
)


def _gas_cost(receipt: Any) -> int:
    """Wei a mined transaction paid for gas (gasUsed × effectiveGasPrice)."""
    try:
        return int(receipt.get("gasUsed", 0)) * int(receipt.get("effectiveGasPrice", 0))
    except (AttributeError, TypeError, ValueError):
        return 0


def _refunded(request_id: int) -> UpstreamError:
    return UpstreamError(
        f"Request {request_id} was refunded on chain: no miner could be assigned, or none answered "
        "in time after a reassignment. The fee went back to the gateway's wallet.",
        code="refunded",
        request_id=request_id,
    )


def _unavailable(request_id: int) -> UpstreamError:
    return UpstreamError(
        f"Request {request_id}: the miners could not fetch the input document before the deadline "
        "(finalized as UNAVAILABLE; all but the base fee was refunded). Retry the request.",
        code="input_unavailable",
        request_id=request_id,
    )


def _answer_record(
    recent: VerifiedResult | None, final_digest: bytes | None, settled: bool
) -> dict[str, Any] | None:
    """What this gateway answered for the request, if it still remembers, and whether the chain
    settled on exactly that (`matches_final`: None while settling)."""
    if recent is None:
        return None
    answered = digest_of(recent.output_bytes)
    return {
        "output_cid": recent.output_cid,
        "signer": recent.signer,
        "settlement": recent.extra.get("settlement", "final"),
        "matches_final": (final_digest == answered) if settled else None,
    }


class GatewayConfigError(Exception):
    """The gateway cannot start: no hub address, no wallet key, or a chain id mismatch."""


@dataclass
class ChainLink:
    """Everything the gateway holds for one chain."""

    settings: ChainSettings
    chain_id: int
    hub: HubClient
    sender: TxSender
    follower: LogFollower[Any] | None = None
    task: asyncio.Task[None] | None = None
    models: dict[str, tuple[float, ModelInfo | None]] = field(default_factory=dict)
    private: PrivateDesk | None = None
    """Private requests sent with this chain's wallet (`node.gateway.private`)."""
    batchers: dict[bytes, RequestBatcher] = field(default_factory=dict)
    """Request transactions per model id (`node.gateway.batcher`)."""
    assigner: SharedCall[Any] | None = None
    """The `assign` transaction the requests of one batch share."""

    @property
    def hub_address(self) -> str:
        return str(self.hub.address)


class ChainBackend:
    """The network as the gateway sees it (see module docstring)."""

    def __init__(
        self,
        chains: list[ChainSettings],
        store: ContentStore,
        *,
        stream: StreamSettings | None = None,
        fee_wei: int | None = None,
        grace_s: float = 0.5,
        max_fee_per_gas: int | None = None,
        max_fee_bumps: int | None = None,
        private_by_default: bool = False,
    ) -> None:
        if not chains:
            raise GatewayConfigError("the gateway needs at least one chain")
        self.chain_settings = chains
        self.store = store
        self.stream = stream
        self.fee_wei = fee_wei
        self.max_fee_per_gas = max_fee_per_gas
        self.max_fee_bumps = max_fee_bumps
        self.links: dict[int, ChainLink] = {}
        self.registry = PendingRegistry(recover_submission_signer, self._fetch_output, grace_s=grace_s)
        self.subscriber: Subscriber | None = None
        self._recent: OrderedDict[tuple[int, int], VerifiedResult] = OrderedDict()
        self._nudges: set[asyncio.Task[None]] = set()
        self.loops = Supervisor("gateway")
        self.private_by_default = private_by_default
        self.envelopes = EnvelopeBook()
        self.public_keys = PublicKeys()
        self._sealing: set[asyncio.Task[None]] = set()
        self._proven: set[tuple[int, int]] = set()
        """Requests whose signer's equivocation this gateway went to prove (`_hold_to_promise`)."""

    @classmethod
    def from_settings(
        cls, settings: Settings, store: ContentStore, chains: list[ChainSettings] | None = None
    ) -> ChainBackend:
        """One chain (`settings.chain`) unless `chains` lists several; the first is the default."""
        return cls(
            chains or [settings.chain],
            store,
            stream=settings.stream if settings.stream.enabled else None,
            fee_wei=settings.gateway.fee_wei,
            max_fee_per_gas=settings.gateway.max_fee_per_gas_wei,
            max_fee_bumps=settings.gateway.max_fee_bumps,
            private_by_default=settings.gateway.private_by_default,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def default_chain_id(self) -> int:
        if self.links:
            return next(iter(self.links))
        first = self.chain_settings[0].chain_id
        if first is None:
            raise GatewayConfigError("chain id unknown before start()")
        return first

    def chain_ids(self) -> list[int]:
        return list(self.links)

    def add_rejection_listener(self, listener: Callable[[str], None]) -> None:
        self.registry.add_rejection_listener(listener)

    async def start(self) -> None:
        from node.miner.keys import load_account

        for cs in self.chain_settings:
            if not cs.hub_address:
                raise GatewayConfigError(
                    "chain.hub_address is not set: point the gateway at a deployed InferenceHub"
                )
            w3 = HubClient.web3(cs.rpc_url, cs.rpc_timeout_s)
            chain_id = int(await w3.eth.chain_id)
            if cs.chain_id is not None and cs.chain_id != chain_id:
                raise GatewayConfigError(f"{cs.rpc_url} serves chain {chain_id}, settings say {cs.chain_id}")
            account = load_account(cs)
            hub = HubClient(w3, cs.hub_address)
            sender = TxSender(
                w3,
                account,
                chain_id=chain_id,
                gas_margin=cs.gas_margin,
                poll_s=0.05,
                max_fee_per_gas=self.max_fee_per_gas,
                max_replacements=self.max_fee_bumps,
            )
            link = ChainLink(settings=cs, chain_id=chain_id, hub=hub, sender=sender)
            link.private = PrivateDesk(
                self.store, "0x" + bytes(account.key).hex(), self.public_keys, self.envelopes
            )
            head = int(await w3.eth.block_number)
            link.follower = LogFollower(
                w3,
                address=hub.address,
                decode=decode_log,
                cursor=MemoryCursor(),
                topics=[[event_topic(name) for name in WATCHED_EVENTS]],
                start_block=head + 1,
                confirmations=cs.confirmations,
                range_blocks=cs.log_range_blocks,
                poll_interval_s=cs.poll_interval_s,
                ws_url=cs.ws_url,
            )
            link.task = self.loops.spawn(f"watcher-{chain_id}", functools.partial(self._follow, link))
            self.links[chain_id] = link
            log.info("gateway_chain_ready", chain_id=chain_id, hub=link.hub_address, wallet=sender.address)
        if self.stream is not None:
            topics = [
                t for link in self.links.values() for t in request_topics(link.chain_id, link.hub_address)
            ]
            topics += [heartbeat_filter(link.chain_id, link.hub_address) for link in self.links.values()]
            self.subscriber = Subscriber(
                self.stream.broker_url, topics, self._on_mqtt, **credentials(self.stream),
                on_heartbeat=functools.partial(offer_heartbeat, self.public_keys),  # seats' public keys
            )  # fmt: skip
            self.loops.spawn("mqtt", self._subscribe)

    async def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """True once the MQTT subscription is live (or there is no broker configured)."""
        if self.subscriber is None:
            return True
        try:
            await asyncio.wait_for(self.subscriber.connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self.loops.stop_restarts()
        await self.registry.close()
        for task in list(self._nudges):
            task.cancel()
        if self.subscriber is not None:
            await self.subscriber.close()
        for link in self.links.values():
            if link.follower is not None:
                link.follower.stop()
            if link.task is not None:
                link.task.cancel()
                with contextlib.suppress(BaseException):
                    await link.task
        await self.loops.close()

    # ------------------------------------------------------------------ events in

    async def _follow(self, link: ChainLink) -> None:
        assert link.follower is not None
        async for item in link.follower.follow():
            if not isinstance(item, LogBatch):
                continue  # a reorg: the follower re-scans; answered results were final on chain
            for ev in item.events:
                with self.loops.guard(
                    f"watcher-{link.chain_id}", request_id=getattr(ev, "id", None), kind=type(ev).__name__
                ):
                    self._on_event(link.chain_id, ev)

    async def _subscribe(self) -> None:
        """The MQTT subscriber's own task, watched: if it dies the supervisor starts it afresh."""
        sub = self.subscriber
        assert sub is not None
        if sub._task is None or sub._task.done():
            sub._task = None
            sub.start()
        assert sub._task is not None
        await wait_task(sub._task)

    def _on_event(self, chain_id: int, ev: HubEvent) -> None:
        self._private_event(chain_id, ev)
        reg = self.registry
        if isinstance(ev, InferenceAssigned):
            reg.on_assigned(chain_id, ev.id, ev.assignees)
        elif isinstance(ev, ResultCommitted):
            reg.on_committed(chain_id, ev.id, ev.miner, ev.log.tx_hash)
            self._hold_to_promise(chain_id, ev)
        elif isinstance(ev, ResultRevealed):
            reg.on_submitted(chain_id, ev.id, ev.miner, ev.log.tx_hash, ev.output_digest)
            self._hold_to_promise(chain_id, ev)
        elif isinstance(ev, AuditOpened):
            reg.on_verification(chain_id, ev.id, "audit")
        elif isinstance(ev, CommitteeOpened):
            reg.on_verification(chain_id, ev.id, "dispute")
        elif isinstance(ev, InferenceFinalized):
            if ev.output_digest == UNAVAILABLE:
                reg.on_failed(chain_id, ev.id, _unavailable(ev.id))
            else:
                self._check_signed_answer(chain_id, ev.id, ev.output_digest)
                reg.on_finalized(chain_id, ev.id, ev.output_digest, ev.log.tx_hash)
        elif isinstance(ev, InferenceRefunded):
            reg.on_failed(chain_id, ev.id, _refunded(ev.id))

    def _check_signed_answer(self, chain_id: int, request_id: int, digest: bytes) -> None:
        """An answer given on a signed result that the chain then settled differently: say so (its
        signer is slashable; `GET /v1/inferences/{id}` shows `answer.matches_final: false`)."""
        recent = self._recent.get((chain_id, request_id))
        if recent is None or recent.extra.get("settlement") != "pending":
            return
        if digest_of(recent.output_bytes) != digest:
            log.warning(
                "signed_answer_not_final", request_id=request_id, chain_id=chain_id, signer=recent.signer,
                answered=recent.output_cid, final=digest_to_cid(digest),
            )  # fmt: skip

    def _hold_to_promise(self, chain_id: int, ev: ResultCommitted | ResultRevealed) -> None:
        """A seat we answered on committed or revealed something else than it signed: prove it."""
        key = (chain_id, ev.id)
        recent = self._recent.get(key)
        signed = broken_promise(recent, ev)
        link = self.links.get(chain_id)
        if signed is None or recent is None or recent.signature is None or link is None:
            return
        if key in self._proven:
            return
        self._proven.add(key)
        task = asyncio.get_running_loop().create_task(
            self._prove_equivocation(link, ev.id, ev.miner, signed, recent.signature)
        )
        self._nudges.add(task)  # background tasks cancelled on close
        task.add_done_callback(self._nudges.discard)

    async def _prove_equivocation(
        self, link: ChainLink, request_id: int, miner: str, signed: bytes, signature: str
    ) -> None:
        """`proveEquivocation` with the gateway's wallet (`node.gateway.equivocation`)."""
        with self.loops.guard("equivocation", request_id=request_id):
            sig = bytes.fromhex(signature.removeprefix("0x"))
            args = [request_id, to_checksum_address(miner), signed, sig]
            data = link.hub.contract.encode_abi("proveEquivocation", args=args)
            try:
                call = {"from": link.sender.address, "to": link.hub_address, "data": data}
                receipt = await link.sender.send(link.hub_address, data, gas=await link.sender.estimate(call))
            except TxWouldRevert as exc:  # proven by someone else first, or no proof after all
                log.info("equivocation_not_proven", request_id=request_id, miner=miner, error=str(exc))
                return
            tx = receipt.get("transactionHash")
            log.warning(
                "equivocation_proven", request_id=request_id, miner=miner, signed="0x" + signed.hex(),
                tx=tx.hex() if isinstance(tx, bytes) else str(tx),
            )  # fmt: skip

    def _private_event(self, chain_id: int, ev: HubEvent) -> None:
        """Seal a private input to seats the chain just named; forget it once the request ended."""
        link = self.links.get(chain_id)
        desk = link.private if link is not None else None
        if desk is None or desk.get((chain_id, getattr(ev, "id", -1))) is None:
            return
        assert link is not None
        if isinstance(ev, InferenceAssigned):
            self._seal(link, ev.id, ev.assignees)
        elif isinstance(ev, AuditOpened):
            self._seal(link, ev.id, (ev.auditor,))
        elif isinstance(ev, CommitteeOpened):
            self._seal(link, ev.id, ev.members)
        elif isinstance(ev, EscalationOpened):  # every other active miner of the model may vote
            task = asyncio.get_running_loop().create_task(
                self._guarded(self._seal_voters(link, ev.id), ev.id)
            )
            self._sealing.add(task)
            task.add_done_callback(self._sealing.discard)
        elif isinstance(ev, InferenceFinalized | InferenceRefunded):
            desk.forget((chain_id, ev.id))

    def _seal(self, link: ChainLink, request_id: int, seats: tuple[str, ...]) -> None:
        assert link.private is not None
        coro = link.private.add_seats((link.chain_id, request_id), seats, link.hub)
        task = asyncio.get_running_loop().create_task(self._guarded(coro, request_id))
        self._sealing.add(task)
        task.add_done_callback(self._sealing.discard)

    async def _seal_voters(self, link: ChainLink, request_id: int) -> None:
        assert link.private is not None
        info = await link.hub.get_request(request_id)
        voters = tuple((await link.hub.active_miners(info.model_id))[: MAX_RECIPIENTS - len(info.seats) - 1])
        await link.private.add_seats((link.chain_id, request_id), voters, link.hub)

    async def _guarded(self, coro: Any, request_id: int) -> None:
        with self.loops.guard("private-seal", request_id=request_id):
            await coro

    def _open_private(self, msg: Routed) -> Routed | None:
        """A private request's MQTT result or delta, opened (None: not ours to open, dropped)."""
        link = self.links.get(msg.chain_id)
        entry = link.private.get((msg.chain_id, msg.request_id)) if link and link.private else None
        if entry is None or link is None or link.private is None:
            return msg
        if msg.result is not None:
            plain = link.private.open_output(msg.result.output_bytes)
            if plain is None:
                return None
            return replace(msg, result=replace(msg.result, output_bytes=plain))
        if msg.delta is not None and msg.delta.sealed is not None:
            d = msg.delta
            try:
                body = open_delta(entry.delta_key, msg.request_id, d.miner or "", d.seq, {"sealed": d.sealed})
                return replace(msg, delta=delta_of(d.seq, d.choice, d.miner or "", body))
            except (ContentError, ValueError):
                return None
        return None  # a plaintext delta for a private request: not from an honest seat

    def mqtt_drops(self) -> Counter[str]:
        """MQTT messages and buffered bytes dropped, by reason (subscriber and pending registry)."""
        total: Counter[str] = Counter(self.registry.drops)
        if self.subscriber is not None:
            total.update(self.subscriber.drops)
        return total

    def _on_mqtt(self, msg: Routed) -> None:
        link = self.links.get(msg.chain_id)
        if link is None or link.hub_address != msg.hub:
            return
        opened = self._open_private(msg)
        if opened is None:
            return
        msg = opened
        if msg.delta is not None:
            self.registry.on_delta(msg.chain_id, msg.request_id, msg.delta)
        elif msg.result is not None:
            kept = self.registry.on_result_message(msg.chain_id, msg.request_id, msg.result)
            if kept and self.registry.get(msg.chain_id, msg.request_id) is not None:
                task = asyncio.get_running_loop().create_task(self._nudge(link, msg.request_id))
                self._nudges.add(task)
                task.add_done_callback(self._nudges.discard)

    async def _nudge(self, link: ChainLink, request_id: int) -> None:
        """A miner published its result: its submit tx lands within moments, look for it now."""
        for delay in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8):
            await asyncio.sleep(delay)
            pending = self.registry.get(link.chain_id, request_id)
            if pending is None or pending.done() or pending.final_digest is not None:
                return
            if link.follower is not None:
                link.follower.wake()

    # ------------------------------------------------------------------ verification hooks

    async def _fetch_output(self, cid: str) -> bytes:
        for link in self.links.values():  # a private answer handed in by a seat (no MQTT)
            if link.private is not None and (plain := link.private.outputs.get(cid)) is not None:
                return plain
        return await self.store.get(cid)

    def accept_private_output(self, envelope: bytes) -> bool:
        """`POST /envelope/output`: a seat's sealed answer to one of our private requests."""
        return any(
            link.private is not None and link.private.accept_output(envelope) for link in self.links.values()
        )

    # ------------------------------------------------------------------ models

    def _link(self, chain_id: int) -> ChainLink:
        link = self.links.get(chain_id)
        if link is None:
            raise InvalidRequest(f"chain_id: this gateway does not serve chain {chain_id}", param="chain_id")
        return link

    async def _model(self, link: ChainLink, mid: bytes, name: str | None = None) -> ModelInfo | None:
        try:
            info = await link.hub.get_model(mid)
        except HubError as exc:
            if exc.name == "UnknownModel":
                return None
            raise
        return ModelInfo(
            chain_id=link.chain_id,
            name=info.name or (name or "0x" + mid.hex()),
            model_id="0x" + info.model_id.hex(),
            min_fee=info.base_fee,
            min_stake=info.min_stake,
            timeout_blocks=info.timeout_blocks,
            redundancy=info.redundancy,
            active_miners=info.active_miner_count,
            per_token_fee=info.per_token_fee,
            engine_class="0x" + info.engine_class.hex(),
            audit_bps=info.audit_bps,
        )

    async def list_models(self, chain_id: int) -> list[ModelInfo]:
        link = self._link(chain_id)
        try:
            ids = await link.hub.model_ids()
            models = [await self._model(link, mid) for mid in ids]
        except ChainError as exc:
            raise ServiceUnavailable(f"Cannot read the model registry on chain {chain_id}: {exc}") from exc
        return [m for m in models if m is not None]

    async def get_model(self, chain_id: int, name: str) -> ModelInfo | None:
        link = self._link(chain_id)
        cached = link.models.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[0] < MODEL_CACHE_S:
            return cached[1]
        try:
            info = await self._model(link, model_id(name), name)
        except (ChainError, OSError) as exc:
            raise ServiceUnavailable(f"Cannot read model {name!r} on chain {chain_id}: {exc}") from exc
        link.models[name] = (now, info)
        return info

    # ------------------------------------------------------------------ submit

    async def submit(
        self,
        chain_id: int,
        document: InputDocument,
        document_bytes: bytes,
        model: ModelInfo,
        *,
        private: bool | None = None,
    ) -> PendingInference:
        link = self._link(chain_id)
        desk = link.private if (self.private_by_default if private is None else private) else None
        if desk is not None:  # never stored in plaintext: sealed to the seats once they are known
            document, document_bytes = make_private(document, desk.public_key)
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
        placed = await self._batcher(link, mid, model).submit(BatchItem(digest, max_tokens, fee))
        receipt, requested = placed.receipt, placed.requested
        events = decode_logs(receipt["logs"])
        request_block = int(receipt["blockNumber"])
        try:
            block = await link.hub.w3.eth.get_block(request_block)
            created = int(block["timestamp"])
        except Exception:
            created = int(time.time())
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
            gas_cost=_gas_cost(receipt) // placed.size,
            max_tokens=max_tokens,
            engine_class=model.engine_class,
        )
        if desk is not None:
            assert document.salt is not None
            desk.register((chain_id, requested.id), input_cid, document_bytes, document.salt)
        pending = self.registry.register(sub)
        pending.result_future.add_done_callback(lambda f: self._remember(f, pending.submission))
        if placed.index == 0:  # a batch's receipt is read once (it assigns requests before it)
            self._on_receipt_events(chain_id, events)
        await self._ensure_assigned(link, pending, since=placed.mined_at, batch=placed.size)
        if desk is not None:
            self._seal(link, requested.id, pending.submission.assignees)
        if link.follower is not None:
            link.follower.wake()
        return pending

    def _on_receipt_events(self, chain_id: int, events: list[HubEvent]) -> None:
        """Assignments a receipt carries (a request materialises earlier ones; `assign` ours)."""
        for ev in events:
            self._private_event(chain_id, ev)
            if isinstance(ev, InferenceAssigned | InferenceRefunded):
                self._on_event(chain_id, ev)

    async def _ensure_assigned(
        self, link: ChainLink, pending: PendingInference, *, since: float = 0.0, batch: int = 1
    ) -> None:
        """Materialise the request's seats with `assign`, unless its own receipt already showed them.

        A transaction sent after the request's receipt is mined in a later block, where the
        request's block hash (its seed) exists: on an automining chain the `assign` is that next
        block. When another request or party materialised it first, the request view gives the
        seats. The requests of one batch share one `assign` (sent after their receipt: `since`), and
        its gas, added to each submission's `gas_cost`, is split among them. Gives up
        after `ASSIGN_WAIT_S` (RPC trouble): the watcher still delivers `InferenceAssigned`.
        """
        rid = pending.request_id
        give_up = time.monotonic() + ASSIGN_WAIT_S
        poll = max(0.05, min(link.settings.poll_interval_s, 1.0))
        try:
            while not pending.assigned and not pending.done():
                if time.monotonic() > give_up:
                    log.warning("assign_wait_gave_up", request_id=rid, chain_id=link.chain_id)
                    return
                if link.assigner is None:
                    link.assigner = SharedCall(functools.partial(self._send_assign, link))
                receipt, sharers = await link.assigner.run(since, max(ASSIGN_BATCH, batch))
                since = time.monotonic()  # assigning again: a later transaction
                pending.submission = replace(
                    pending.submission, gas_cost=pending.submission.gas_cost + _gas_cost(receipt) // sharers
                )
                self._on_receipt_events(link.chain_id, decode_logs(receipt["logs"]))
                if pending.assigned or pending.done():
                    return
                view = await link.hub.get_request(rid)
                if view.phase == Phase.REFUNDED:
                    self.registry.on_failed(link.chain_id, rid, _refunded(rid))
                elif view.phase != Phase.PENDING:
                    self.registry.on_assigned(link.chain_id, rid, view.assignees)
                else:  # the batch went to requests due before it: assign again
                    await asyncio.sleep(poll)
        except (ChainError, TxError, OSError) as exc:
            # the request is paid for; anyone (the next request, a miner, the watcher) can assign it
            log.warning("assign_failed", request_id=rid, chain_id=link.chain_id, error=str(exc))

    async def _send_assign(self, link: ChainLink, count: int = ASSIGN_BATCH) -> Any:
        """`assign(count)`; gas for each request it may materialise on top of the estimate."""
        data = link.hub.contract.encode_abi("assign", args=[count])
        gas = await link.sender.estimate({"from": link.sender.address, "to": link.hub_address, "data": data})
        return await link.sender.send(link.hub_address, data, gas=gas + ASSIGN_BATCH * ASSIGN_GAS)

    def _batcher(self, link: ChainLink, mid: bytes, model: ModelInfo) -> RequestBatcher:
        """The request batcher of `model` on `link`: `requestInference` alone, else `requestInferences`."""
        batcher = link.batchers.get(mid)
        if batcher is None:

            async def send(items: Sequence[BatchItem]) -> Any:
                if len(items) == 1:
                    args: list[Any] = [mid, items[0].digest, items[0].max_tokens]
                    data = link.hub.contract.encode_abi("requestInference", args=args)
                else:
                    args = [mid, [i.digest for i in items], [i.max_tokens for i in items]]
                    data = link.hub.contract.encode_abi("requestInferences", args=args)
                return await self._send_request(link, data, sum(i.fee for i in items), model)

            batcher = link.batchers[mid] = RequestBatcher(send)
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
            raise self._revert_error(exc, model) from exc
        except TxFeeCapExceeded as exc:
            raise ServiceUnavailable(
                f"Gas on chain {link.chain_id} is above this gateway's price cap right now; try again later.",
                code="gas_price_too_high",
                headers={"Retry-After": "30"},
            ) from exc
        except TxReverted as exc:
            raise ServiceUnavailable(
                f"requestInference reverted on chain {link.chain_id}: {exc}", spent_wei=_gas_cost(exc.receipt)
            ) from exc
        except (TxTimeout, TxNonceGap, OSError) as exc:  # the transaction may still be mined
            raise ServiceUnavailable(
                f"requestInference failed on chain {link.chain_id}: {exc}", spent_wei=None
            ) from exc
        except TxError as exc:  # the node refused it: nothing was paid
            raise ServiceUnavailable(f"requestInference failed on chain {link.chain_id}: {exc}") from exc

    def _remember(self, fut: asyncio.Future[VerifiedResult], sub: Submission) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        self._recent[(sub.chain_id, sub.request_id)] = fut.result()
        while len(self._recent) > 1024:
            self._recent.popitem(last=False)

    @staticmethod
    def _revert_error(exc: TxWouldRevert, model: ModelInfo) -> GatewayError:
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

    # ------------------------------------------------------------------ lookups

    async def get_inference(self, chain_id: int, request_id: int) -> dict[str, Any]:
        """The request as the chain shows it now, with its verification state and, once final,
        its output (and the full response when this gateway answered it recently)."""
        link = self._link(chain_id)
        try:
            info = await link.hub.get_request(request_id)
        except HubError as exc:
            if exc.name == "UnknownRequest":
                raise NotFound(
                    f"No inference request {request_id} on chain {chain_id}.", param="request_id"
                ) from exc
            raise ServiceUnavailable(str(exc)) from exc
        except (ChainError, OSError) as exc:
            raise ServiceUnavailable(f"Cannot read request {request_id} on chain {chain_id}: {exc}") from exc
        if info.phase == Phase.NONE:
            raise NotFound(f"No inference request {request_id} on chain {chain_id}.", param="request_id")
        final = info.phase == Phase.FINAL and info.output_digest not in (None, UNAVAILABLE)
        settled = info.phase in (Phase.FINAL, Phase.REFUNDED)
        recent = self._recent.get((chain_id, request_id))
        revealed = [info.revealed_digest(seat) for seat in info.seats]
        record: dict[str, Any] = {
            "object": "inference",
            "chain_id": chain_id,
            "hub": link.hub_address,
            "request_id": request_id,
            "status": "finalized" if info.phase == Phase.FINAL else info.phase.name.lower(),
            "phase": info.phase.name.lower(),
            "verification": str(info.verification_state),
            "flags": int(info.flags),
            "requester": info.requester,
            "model_id": "0x" + info.model_id.hex(),
            "input_cid": digest_to_cid(info.input_digest),
            "output_cid": digest_to_cid(info.output_digest) if final and info.output_digest else None,
            "unavailable": info.output_digest == UNAVAILABLE,
            "fee_wei": str(info.fee),
            "mark_block": info.mark,
            "redundancy": info.redundancy,
            "reassigned": info.reassigned,
            "assignment_addresses": list(info.assignees),
            "seats": list(info.seats),
            "revealed_cids": [
                digest_to_cid(d) if d is not None and d != UNAVAILABLE else None for d in revealed
            ],
            "settlement": "final" if settled else "pending",
            "answer": _answer_record(recent, info.output_digest if final else None, settled),
            "output": None,
            "response": None,
        }
        if not final or info.output_digest is None:
            return record
        if recent is not None and info.output_digest == digest_of(recent.output_bytes):
            kind = "chat" if recent.output.object == "chat.completion" else "completion"
            record["response"] = build_response(kind, recent)
            record["response"]["onchain_data"].update(
                verification=str(info.verification_state), phase="final", settlement="final"
            )
            record["output"] = recent.output.model_dump(mode="json")
        else:
            with contextlib.suppress(ContentError, TimeoutError):
                data = await asyncio.wait_for(self.store.get(digest_to_cid(info.output_digest)), 5.0)
                record["output"] = parse_output_document(data).model_dump(mode="json")
        return record

    async def health(self) -> dict[str, Any]:
        chains: list[dict[str, Any]] = []
        ok = True
        for link in self.links.values():
            stats = link.follower.stats if link.follower else None
            try:
                head = int(await asyncio.wait_for(link.hub.w3.eth.block_number, 5.0))
            except Exception as exc:
                ok = False
                chains.append({"chain_id": link.chain_id, "ok": False, "error": str(exc)})
                continue
            chains.append(
                {
                    "chain_id": link.chain_id,
                    "hub": link.hub_address,
                    "ok": True,
                    "head": head,
                    "watcher_cursor": stats.cursor if stats else None,
                    "wallet": to_checksum_address(link.sender.address),
                }
            )
        mqtt = None
        if self.subscriber is not None:
            mqtt = {"connected": self.subscriber.connected.is_set(), "received": self.subscriber.received}
        ok = ok and self.loops.healthy()
        return {
            "ok": ok, "chains": chains, "mqtt": mqtt, "pending": len(self.registry),
            "loops": self.loops.snapshot(),
        }  # fmt: skip


__all__ = ["ChainBackend", "ChainLink", "GatewayConfigError"]
