"""The chain-backed `InferenceBackend`: content store → `requestInference` → `assign` → one watcher
+ one MQTT subscription → verified results.

Per configured chain there is one `ChainLink` (`node.gateway.link`): a read-only `HubClient` for
views and the ABI, a `TxSender` (nonce manager, EIP-1559, receipts) for the gateway's own
transactions, and one `LogFollower` over the protocol v2 events (`InferenceAssigned`,
`ResultCommitted`, `ResultRevealed`, `AuditOpened`, `CommitteeOpened`, `InferenceFinalized`,
`InferenceRefunded`) that feeds the shared `PendingRegistry`. MQTT result messages wake the
follower, so a result signed and published by a miner is matched against the chain as soon as its
reveal is mined.

This module is the orchestrator: it starts the links, follows events and MQTT, and answers model and
request lookups. What it wires together lives in one module per concern: the request path
(`requestInference` batches, `assign`, registration: `node.gateway.requesting`), private requests'
sealing and opening (`node.gateway.sealing`) and holding signers to their signed answers
(`node.gateway.equivocation`). Assignees, which MQTT relaying and signature checks trust, come only
from `InferenceAssigned` (or the request view once someone else assigned it). The answer waits for
`InferenceFinalized` (r = 1: after the reveal, and after the audit when one was drawn) and says how
the result was verified (`onchain_data.verification`), unless the request answers on the assignee's
signed result (`PendingInference.accept_signed`); then `get_inference` later shows how it settled
(`settlement`, `answer`), and a signer that commits or reveals anything else is proven to equivocate
with the gateway's wallet.

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
from collections.abc import Callable
from typing import Any

from eth_utils.address import to_checksum_address

from node.chain.errors import ChainError, HubError
from node.chain.events import (
    AuditOpened,
    CommitteeOpened,
    HubEvent,
    InferenceAssigned,
    InferenceFinalized,
    InferenceRefunded,
    ResultCommitted,
    ResultRevealed,
    decode_log,
    event_topic,
)
from node.chain.hub import MAX_BATCH, UNAVAILABLE, HubClient, Phase, model_id
from node.chain.keepalive import close as close_rpc
from node.chain.keepalive import keep_alive
from node.chain.sender import TxSender
from node.chain.watcher import LogBatch, LogFollower, MemoryCursor
from node.config import ChainSettings, Settings, StreamSettings
from node.content.cid import digest_to_cid
from node.content.documents import InputDocument, parse_output_document
from node.content.errors import ContentError
from node.content.store import ContentStore
from node.gateway.envelopes import EnvelopeBook
from node.gateway.equivocation import PromiseKeeper
from node.gateway.errors import InvalidRequest, NotFound, ServiceUnavailable, UpstreamError
from node.gateway.inference_view import has_final_output, inference_record
from node.gateway.link import ChainLink
from node.gateway.mqtt import Routed, Subscriber, request_topics
from node.gateway.pending import PendingInference, PendingRegistry, recover_submission_signer
from node.gateway.private import PrivateDesk
from node.gateway.records import ModelInfo, Submission, VerifiedResult
from node.gateway.requesting import ASSIGN_BATCH, ASSIGN_WAIT_S, Requester
from node.gateway.requesting import refunded as _refunded
from node.gateway.sealing import Sealer
from node.gateway.seat_keys import PublicKeys, heartbeat_filter, offer_heartbeat
from node.log import get_logger
from node.stream.connection import credentials
from node.supervise import Supervisor, wait_task

log = get_logger("gateway.chain")

MODEL_CACHE_S = 2.0
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


def _unavailable(request_id: int) -> UpstreamError:
    return UpstreamError(
        f"Request {request_id}: the miners could not fetch the input document before the deadline "
        "(finalized as UNAVAILABLE; all but the base fee was refunded). Retry the request.",
        code="input_unavailable",
        request_id=request_id,
    )


class GatewayConfigError(Exception):
    """The gateway cannot start: no hub address, no wallet key, or a chain id mismatch."""


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
        request_batch_max: int = MAX_BATCH,
        request_batch_slots: int = 1,
        request_batch_wait_s: float | None = 0.25,
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
        self._model_reads: dict[tuple[int, str], asyncio.Future[ModelInfo | None]] = {}
        """Model registry reads in flight (`get_model`), shared by the requests that wait for them."""
        self._nudges: set[asyncio.Task[None]] = set()
        self.loops = Supervisor("gateway")
        self.private_by_default = private_by_default
        self.envelopes = EnvelopeBook()
        self.public_keys = PublicKeys()
        self.sealer = Sealer(self.links, self.loops)
        """Private inputs sealed to seats, private answers opened (`node.gateway.sealing`)."""
        self._sealing = self.sealer.tasks
        self.promises = PromiseKeeper(self.links, self._recent, self.loops, self._nudges)
        """Signers held to the answers they signed (`node.gateway.equivocation`)."""
        self.requester = Requester(
            store,
            self.registry,
            on_event=lambda chain_id, ev: self._registry_event(chain_id, ev),
            private_event=lambda chain_id, ev: self._private_event(chain_id, ev),
            seal=self.sealer.seal,
            remember=self._remember,
            batch_max=request_batch_max,
            batch_slots=request_batch_slots,
            batch_wait_s=request_batch_wait_s,
        )
        """The request path (`node.gateway.requesting`)."""

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
            request_batch_max=settings.gateway.request_batch_max,
            request_batch_slots=settings.gateway.request_batch_slots,
            request_batch_wait_s=settings.gateway.request_batch_wait_s,
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
            await keep_alive(w3)  # one TCP connection per call otherwise (node.chain.keepalive)
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
            link.follower.head_listeners.append(sender.on_head)  # our receipts: no poll wait
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
        await self.requester.close()
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
            await close_rpc(link.hub.w3)
        await self.loops.close()

    # ------------------------------------------------------------------ events in

    async def _follow(self, link: ChainLink) -> None:
        assert link.follower is not None
        async for item in link.follower.follow():
            if not isinstance(item, LogBatch):
                continue  # a reorg: the follower re-scans; answered results were final on chain
            self.promises.block_events(item.events)  # where a commit's batch siblings are
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
        """A confirmed event from the follower: seal (private inputs), then the registry's part."""
        self._private_event(chain_id, ev)
        self._registry_event(chain_id, ev)

    def _registry_event(self, chain_id: int, ev: HubEvent) -> None:
        """What an event means for the requests in flight (also fed from our own receipts, which
        decide about sealing themselves: `Requester._on_receipt_events`)."""
        reg = self.registry
        if isinstance(ev, InferenceAssigned):
            self.requester.on_materialised(chain_id, ev.id)
            reg.on_assigned(chain_id, ev.id, ev.assignees)
        elif isinstance(ev, ResultCommitted):
            reg.on_committed(chain_id, ev.id, ev.miner, ev.log.tx_hash)
            self.promises.hold(chain_id, ev)
        elif isinstance(ev, ResultRevealed):
            reg.on_submitted(chain_id, ev.id, ev.miner, ev.log.tx_hash, ev.output_digest)
            self.promises.hold(chain_id, ev)
        elif isinstance(ev, AuditOpened):
            reg.on_verification(chain_id, ev.id, "audit")
        elif isinstance(ev, CommitteeOpened):
            reg.on_verification(chain_id, ev.id, "dispute")
        elif isinstance(ev, InferenceFinalized):
            if ev.output_digest == UNAVAILABLE:
                reg.on_failed(chain_id, ev.id, _unavailable(ev.id))
            else:
                self.promises.check_signed_answer(chain_id, ev.id, ev.output_digest)
                reg.on_finalized(chain_id, ev.id, ev.output_digest, ev.log.tx_hash)
        elif isinstance(ev, InferenceRefunded):
            self.requester.on_materialised(chain_id, ev.id)
            reg.on_failed(chain_id, ev.id, _refunded(ev.id))

    def _private_event(self, chain_id: int, ev: HubEvent) -> None:
        """Seal a private input to seats the chain just named; forget it once the request ended."""
        self.sealer.on_event(chain_id, ev)

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
        opened = self.sealer.open(msg)
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
        return self.sealer.accept_output(envelope)

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
        key = (chain_id, name)
        reading = self._model_reads.get(key)
        if reading is None:  # one read when the cache expires, however many requests are waiting
            reading = asyncio.ensure_future(self._model(link, model_id(name), name))
            self._model_reads[key] = reading
            reading.add_done_callback(lambda _: self._model_reads.pop(key, None))
        try:
            info = await asyncio.shield(reading)
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
        live: bool = True,
    ) -> PendingInference:
        """Request `document` on `chain_id` (`node.gateway.requesting`); private unless told otherwise
        when the gateway is private by default."""
        link = self._link(chain_id)
        private = self.private_by_default if private is None else private
        return await self.requester.submit(link, document, document_bytes, model, private=private, live=live)

    def _remember(self, fut: asyncio.Future[VerifiedResult], sub: Submission) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        self._recent[(sub.chain_id, sub.request_id)] = fut.result()
        while len(self._recent) > 1024:
            self._recent.popitem(last=False)

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
        record = inference_record(
            chain_id, link.hub_address, request_id, info, self._recent.get((chain_id, request_id))
        )
        if has_final_output(info) and info.output_digest is not None and record["output"] is None:
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


__all__ = ["ASSIGN_BATCH", "ASSIGN_WAIT_S", "ChainBackend", "ChainLink", "GatewayConfigError"]
