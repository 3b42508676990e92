"""The chain-backed `InferenceBackend`: content store → `requestInference` → one watcher + one MQTT
subscription → verified results.

Per configured chain there is one `ChainLink`: a read-only `HubClient` for views and the ABI, a
`TxSender` (nonce manager, EIP-1559, receipts) for the gateway's own `requestInference` calls, and
one `LogFollower` over `ResultSubmitted` / `InferenceFinalized` / `InferenceExpired` that feeds the
shared `PendingRegistry`. MQTT result messages wake the follower, so a result signed and published
by a miner is matched against the chain as soon as its transaction is mined.

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
from dataclasses import dataclass, field
from typing import Any

from eth_utils.address import to_checksum_address

from node.chain.errors import ChainError, HubError, decode_revert
from node.chain.events import (
    InferenceExpired,
    InferenceFinalized,
    InferenceRequested,
    ResultSubmitted,
    decode_log,
    decode_logs,
    event_topic,
)
from node.chain.hub import HubClient, RequestStatus, model_id
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
from node.content.errors import ContentError
from node.content.store import ContentStore
from node.gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
)
from node.gateway.mqtt import Routed, Subscriber, request_topics
from node.gateway.pending import PendingInference, PendingRegistry, recover_submission_signer
from node.gateway.records import ModelInfo, Submission, VerifiedResult
from node.gateway.responses import build_response
from node.log import get_logger
from node.stream.connection import credentials
from node.supervise import Supervisor, wait_task

log = get_logger("gateway.chain")

MODEL_CACHE_S = 2.0


def _gas_cost(receipt: Any) -> int:
    """Wei a mined transaction paid for gas (gasUsed × effectiveGasPrice)."""
    try:
        return int(receipt.get("gasUsed", 0)) * int(receipt.get("effectiveGasPrice", 0))
    except (AttributeError, TypeError, ValueError):
        return 0


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
            head = int(await w3.eth.block_number)
            link.follower = LogFollower(
                w3,
                address=hub.address,
                decode=decode_log,
                cursor=MemoryCursor(),
                topics=[
                    [
                        event_topic("ResultSubmitted"),
                        event_topic("InferenceFinalized"),
                        event_topic("InferenceExpired"),
                    ]
                ],
                start_block=head + 1,
                confirmations=cs.confirmations,
                range_blocks=cs.log_range_blocks,
                poll_interval_s=cs.poll_interval_s,
            )
            link.task = self.loops.spawn(f"watcher-{chain_id}", functools.partial(self._follow, link))
            self.links[chain_id] = link
            log.info("gateway_chain_ready", chain_id=chain_id, hub=link.hub_address, wallet=sender.address)
        if self.stream is not None:
            topics = [
                t for link in self.links.values() for t in request_topics(link.chain_id, link.hub_address)
            ]
            self.subscriber = Subscriber(
                self.stream.broker_url, topics, self._on_mqtt, **credentials(self.stream)
            )
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

    def _on_event(self, chain_id: int, ev: Any) -> None:
        reg = self.registry
        if isinstance(ev, ResultSubmitted):
            reg.on_submitted(chain_id, ev.id, ev.miner, ev.log.tx_hash, ev.output_digest)
        elif isinstance(ev, InferenceFinalized):
            reg.on_finalized(chain_id, ev.id, ev.output_digest, ev.log.tx_hash)
        elif isinstance(ev, InferenceExpired):
            if ev.reassigned:
                reg.on_reassigned(chain_id, ev.id, ev.assignees)
            else:
                reg.on_failed(
                    chain_id,
                    ev.id,
                    UpstreamError(
                        f"Request {ev.id} expired on chain without a quorum of results and the fee was "
                        "refunded; no miner answered in time.",
                        code="expired",
                        request_id=ev.id,
                    ),
                )

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
        return await self.store.get(cid)

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
            min_fee=info.min_fee,
            min_stake=info.min_stake,
            timeout_blocks=info.timeout_blocks,
            redundancy=info.redundancy,
            active_miners=info.active_miner_count,
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
        self, chain_id: int, document: InputDocument, document_bytes: bytes, model: ModelInfo
    ) -> PendingInference:
        link = self._link(chain_id)
        try:
            input_cid = await self.store.put(document_bytes)
        except ContentError as exc:
            raise ServiceUnavailable(f"Cannot store the input document: {exc}") from exc
        digest = digest_of(document_bytes)
        fee = max(self.fee_wei or 0, model.min_fee)
        data = link.hub.contract.encode_abi(
            "requestInference", args=[bytes.fromhex(model.model_id.removeprefix("0x")), digest]
        )
        receipt = await self._send_request(link, data, fee, model)
        events = decode_logs(receipt["logs"])
        requested = next((e for e in events if isinstance(e, InferenceRequested)), None)
        if requested is None:
            raise UpstreamError("requestInference was mined but emitted no InferenceRequested event")
        infer_tx = requested.log.tx_hash
        try:
            block = await link.hub.w3.eth.get_block(int(receipt["blockNumber"]))
            created = int(block["timestamp"])
        except Exception:
            created = int(time.time())
        sub = Submission(
            chain_id=chain_id,
            hub=link.hub_address,
            request_id=requested.id,
            infer_tx=infer_tx,
            assignees=tuple(requested.assignees),
            input_cid=input_cid,
            input_digest=digest,
            model=model.name,
            fee=fee,
            deadline_block=requested.deadline,
            created=created,
            gas_cost=_gas_cost(receipt),
        )
        pending = self.registry.register(sub)
        pending.result_future.add_done_callback(lambda f: self._remember(f, sub))
        if link.follower is not None:
            link.follower.wake()
        return pending

    async def _send_request(self, link: ChainLink, data: bytes | str, fee: int, model: ModelInfo) -> Any:
        """Send `requestInference`; errors say what the wallet paid (`spent_wei`, None: unknown)."""
        try:
            return await link.sender.send(link.hub_address, data, value=fee)
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
        link = self._link(chain_id)
        try:
            info = await link.hub.get_request(request_id)
        except HubError as exc:
            if exc.name == "UnknownRequest":
                raise NotFound(
                    f"No inference request {request_id} on chain {chain_id}.", param="request_id"
                ) from exc
            raise ServiceUnavailable(str(exc)) from exc
        if info.status == RequestStatus.NONE:
            raise NotFound(f"No inference request {request_id} on chain {chain_id}.", param="request_id")
        record: dict[str, Any] = {
            "object": "inference",
            "chain_id": chain_id,
            "hub": link.hub_address,
            "request_id": request_id,
            "status": info.status.name.lower(),
            "requester": info.requester,
            "model_id": "0x" + info.model_id.hex(),
            "input_cid": digest_to_cid(info.input_digest),
            "output_cid": digest_to_cid(info.output_digest) if info.output_digest else None,
            "fee_wei": str(info.fee),
            "deadline_block": info.deadline,
            "redundancy": info.redundancy,
            "reassigned": info.reassigned,
            "assignment_addresses": list(info.assignees),
            "submitted_cids": [digest_to_cid(d) if d else None for d in info.submitted],
            "output": None,
            "response": None,
        }
        recent = self._recent.get((chain_id, request_id))
        if recent is not None and info.output_digest == digest_of(recent.output_bytes):
            kind = "chat" if recent.output.object == "chat.completion" else "completion"
            record["response"] = build_response(kind, recent)
            record["output"] = recent.output.model_dump(mode="json")
        elif info.output_digest is not None:
            with contextlib.suppress(ContentError):
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
