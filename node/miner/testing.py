"""Test and devnet helpers: a deterministic fake engine and a one-call hub setup on a dev chain.

The fake engine lets pipeline logic (journal, batching, crash recovery, reorgs) be exercised in
seconds without vLLM; its text is a pure function of the request, so output digests are stable.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils.crypto import keccak

from node.chain.hub import HubClient, model_id
from node.chain.pubkeys import public_key_of
from node.content.documents import (
    AssistantOutput,
    ChatChoice,
    ChatInputDocument,
    CompletionChoice,
    InputDocument,
    OutputDocument,
    Usage,
    output_version,
)
from node.content.store import ContentStore
from node.miner.daemon import DaemonConfig, MinerDaemon
from node.miner.journal import Journal
from node.miner.private import HttpEnvelopeSource
from node.stream.publisher import StreamPublisher

FAKE_FINGERPRINT = "inferd-fake-1"
FAKE_ENGINE_CLASS = bytes(keccak(text=FAKE_FINGERPRINT))
"""The fake engine's engine class id (keccak256 of its fingerprint), for dev models it serves."""


class FakeEngine:
    """Deterministic stand-in for `node.engine.Engine`: words derived from the request's input."""

    engine_class_id = FAKE_ENGINE_CLASS

    def __init__(self, model_name: str = "fake-model", delay_s: float = 0.0, tokens: int = 8) -> None:
        self._model = model_name
        self.delay_s = delay_s
        self.tokens = tokens
        self.calls = 0
        self.max_concurrent = 0
        self._running = 0

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def system_fingerprint(self) -> str:
        return FAKE_FINGERPRINT

    def _words(self, input_doc: InputDocument) -> list[str]:
        seed = hashlib.sha256(input_doc.model_dump_json().encode()).hexdigest()
        n = input_doc.params.max_tokens or self.tokens
        return [seed[(2 * i) % 64 : (2 * i) % 64 + 4] for i in range(n)]

    def _output(
        self, input_doc: InputDocument, request_id: int, input_cid: str, created: int
    ) -> OutputDocument:
        words = self._words(input_doc)
        text = " ".join(words)
        usage = Usage(prompt_tokens=4, completion_tokens=len(words), total_tokens=4 + len(words))
        if isinstance(input_doc, ChatInputDocument):
            return OutputDocument(
                v=output_version(input_doc.v), request_id=request_id, input_cid=input_cid, model=self._model,
                system_fingerprint=self.system_fingerprint, object="chat.completion", created=created,
                choices=[ChatChoice(index=0, message=AssistantOutput(content=text), finish_reason="length")],
                usage=usage,
            )  # fmt: skip
        return OutputDocument(
            v=output_version(input_doc.v), request_id=request_id, input_cid=input_cid, model=self._model,
            system_fingerprint=self.system_fingerprint, object="text_completion", created=created,
            choices=[CompletionChoice(index=0, text=text, finish_reason="length")], usage=usage,
        )  # fmt: skip

    async def generate(
        self, input_doc: InputDocument, *, request_id: int, input_cid: str, created: int
    ) -> OutputDocument:
        self.calls += 1
        self._running += 1
        self.max_concurrent = max(self.max_concurrent, self._running)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return self._output(input_doc, request_id, input_cid, created)
        finally:
            self._running -= 1

    async def stream(
        self, input_doc: InputDocument, *, request_id: int, input_cid: str, created: int
    ) -> AsyncIterator[Any]:
        """Deltas `{"choice", "delta"}` then the final OutputDocument (the engine's streaming shape)."""
        for i, word in enumerate(self._words(input_doc)):  # pieces that join to exactly the final text
            yield {"choice": 0, "delta": {"content": word if i == 0 else " " + word}}
        yield await self.generate(input_doc, request_id=request_id, input_cid=input_cid, created=created)


@dataclass
class DevHub:
    """A freshly deployed hub with one model and registered miners."""

    owner: HubClient
    model: bytes
    model_name: str
    miners: list[str]
    engine_class: bytes = FAKE_ENGINE_CLASS


async def deploy_dev_hub(
    rpc_url: str,
    owner_key: str,
    miner_keys: Sequence[str],
    *,
    model_name: str = "fake-model",
    engine_class: bytes = FAKE_ENGINE_CLASS,
    timeout_blocks: int = 100,
    redundancy: int = 1,
    min_stake: int = 10**18,
    base_fee: int = 10**12,
    per_token_fee: int = 0,
    audit_bps: int = 1,
) -> DevHub:
    """Deploy a hub, register `model_name` and stake every miner key (dev chains only).

    The defaults make an r = 1 model that is (almost) never audited (auditBps 1 = 0.01%, the
    smallest the hub accepts for r = 1); pass `audit_bps=10_000` to audit every result.
    """
    owner = await HubClient.deploy(rpc_url, owner_key)
    await owner.register_model(
        model_name, engine_class, min_stake, base_fee, per_token_fee, timeout_blocks, redundancy, audit_bps
    )
    mid = model_id(model_name)
    addresses = []
    for key in miner_keys:
        client = HubClient(owner.w3, owner.address, key)
        await client.register_miner(mid, engine_class, min_stake)
        addresses.append(str(client.sender))
    return DevHub(owner=owner, model=mid, model_name=model_name, miners=addresses, engine_class=engine_class)


async def dev_request(
    requester: HubClient, model: bytes, data: bytes, *, max_tokens: int | None = None, assign: bool = True
) -> int:
    """Pay for the input document `data` (already stored) as the gateway does: declare its
    `declared_tokens` (or `max_tokens`), pay the exact price, then `assign` it in the next block."""
    from node.content.cid import digest_of
    from node.content.documents import parse_input_document
    from node.miner.pipeline import declared_tokens

    if max_tokens is None:
        try:
            max_tokens = declared_tokens(parse_input_document(data))
        except Exception:
            max_tokens = 16  # not a valid document: any declaration
    rid = (await requester.request_inference(model, digest_of(data), max_tokens)).id
    if assign:
        await requester.assign(4)
    return rid


def local_daemon(
    *,
    hub: HubClient,
    miner_key: str,
    engine: Any,
    store: ContentStore,
    journal_path: Path,
    broker_url: str | None,
    config: DaemonConfig,
    heartbeat_s: float = 10.0,
    envelope_urls: Sequence[str] = (),
) -> MinerDaemon:
    """An in-process miner (journal, MQTT publisher with its heartbeat wired) for tests and benches.

    `broker_url` None: no MQTT publisher (a test of the chain path alone).
    `envelope_urls`: the gateways whose sealed private inputs it reads (`miner.envelope_urls`);
    one known only once the gateway listens can be added later with `serve_gateways`.
    """
    account = Account.from_key(miner_key)
    publisher = None
    if broker_url is not None:
        publisher = StreamPublisher(
            broker_url,
            chain_id=config.chain_id,
            hub=hub.address,
            miner=str(account.address),
            heartbeat=dict,
            heartbeat_s=heartbeat_s,
        )
    journal = Journal(journal_path, scope=f"{config.chain_id}:{hub.address}:{account.address}")
    daemon = MinerDaemon(
        config=config, hub=hub, account=account, engine=engine, store=store, journal=journal,
        publisher=publisher,
    )  # fmt: skip
    if publisher is not None:
        public_key = public_key_of(miner_key).hex()  # as `inferd miner run` offers it (node.miner.run)
        publisher.heartbeat = lambda: {**daemon.heartbeat(), "public_key": public_key}
    if envelope_urls:
        serve_gateways(daemon, envelope_urls)
    return daemon


def serve_gateways(daemon: MinerDaemon, urls: Sequence[str]) -> None:
    """Let `daemon` read the private inputs of the gateways at `urls` (their `/envelope` route).

    Gateways are private by default (issue 16), so an in-process miner serving one needs this as a
    deployed miner needs `miner.envelope_urls`.
    """
    daemon.pipeline.envelopes = HttpEnvelopeSource(list(urls))


__all__ = [
    "FAKE_ENGINE_CLASS",
    "DevHub",
    "FakeEngine",
    "deploy_dev_hub",
    "dev_request",
    "local_daemon",
    "serve_gateways",
]
