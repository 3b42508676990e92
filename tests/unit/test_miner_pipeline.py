"""Miner pipeline on real anvil with a fake engine: every request answered, batched, signed, verifiable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from node.chain.events import ResultRevealed
from node.chain.hub import HubClient, Phase
from node.chain.signing import recover_result_signer
from node.content.cid import cid_for_bytes, digest_of, digest_to_cid
from node.content.documents import (
    ChatInputDocument,
    ChatParams,
    UserMessage,
    parse_output_document,
    to_canonical_bytes,
)
from node.content.errors import InputUnavailable
from node.content.local import LocalStore
from node.devnet.processes import Anvil
from node.engine.params import ParamError
from node.miner.daemon import DaemonConfig, MinerDaemon
from node.miner.journal import JobState, Journal
from node.miner.pipeline import MAX_TOKENS_EXCEEDS_DECLARED, Pipeline, declared_tokens
from node.miner.testing import DevHub, FakeEngine, deploy_dev_hub, dev_request

pytestmark = pytest.mark.timeout(180)


def chat_doc(i: int, max_tokens: int = 8) -> bytes:
    doc = ChatInputDocument(
        model="fake-model",
        messages=[UserMessage(role="user", content=f"question number {i}")],
        params=ChatParams(max_tokens=max_tokens, seed=i),
    )
    return to_canonical_bytes(doc)


@dataclass
class Env:
    anvil: Anvil
    hub: DevHub
    miner_key: str
    requester: HubClient
    store: LocalStore
    data_dir: Path

    async def request(self, data: bytes, *, store: bool = True, max_tokens: int | None = None) -> int:
        if store:
            await self.store.put(data)
        return await dev_request(self.requester, self.hub.model, data, max_tokens=max_tokens)

    def daemon(self, engine: FakeEngine | None = None, **cfg: object) -> MinerDaemon:
        config = DaemonConfig(chain_id=31337, poll_interval_s=0.1, batch_wait_s=0.2, sweep_interval_s=0.5)
        for k, v in cfg.items():
            setattr(config, k, v)
        account = Account.from_key(self.miner_key)
        hub = HubClient(HubClient.web3(self.anvil.rpc_url), self.hub.owner.address, self.miner_key)
        journal = Journal(self.data_dir / "journal.sqlite", scope=f"31337:{hub.address}:{account.address}")
        return MinerDaemon(
            config=config, hub=hub, account=account, engine=engine or FakeEngine(),
            store=self.store, journal=journal,
        )  # fmt: skip


@pytest.fixture()
async def env(anvil: Anvil, anvil_keys: list[str], data_dir: Path) -> AsyncIterator[Env]:
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[1]], timeout_blocks=200)
    requester = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[2])
    store = LocalStore(data_dir / "blocks")
    yield Env(anvil, hub, anvil_keys[1], requester, store, data_dir)


async def run_until(daemon: MinerDaemon, cond, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not await cond():
                if task.done():
                    task.result()
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task


async def test_every_request_finalized_batched_and_verifiable(env: Env) -> None:
    daemon = env.daemon(FakeEngine(delay_s=0.05))
    ids = [await env.request(chat_doc(i)) for i in range(12)]

    async def all_final() -> bool:
        return all((j := daemon.journal.get(i)) is not None and j.state == JobState.FINALIZED for i in ids)

    await run_until(daemon, all_final)
    hub = env.hub.owner
    miner = daemon.address
    for rid in ids:
        info = await hub.get_request(rid)
        assert info.phase == Phase.FINAL
        assert info.output_digest is not None
        out = await env.store.get(digest_to_cid(info.output_digest))
        assert digest_of(out) == info.output_digest
        doc = parse_output_document(out)
        assert doc.request_id == rid and doc.error is None
        job = daemon.journal.get(rid)
        assert job is not None and job.signature is not None
        signer = recover_result_signer(
            job.signature, chain_id=31337, hub=hub.address, request_id=rid,
            input_digest=info.input_digest, output_digest=info.output_digest,
        )  # fmt: skip
        assert signer == miner
    # 12 requests before start: the first batch window collects several of them into one tx.
    assert daemon.metrics.txs.labels("ok")._value.get() < len(ids)


async def test_bad_inputs_get_error_documents(env: Env) -> None:
    daemon = env.daemon()
    good = chat_doc(1)
    ids = {
        "malformed": await env.request(b'{"v":1, "type": "chat", "model": ', store=True),
        "schema": await env.request(b'{"v":1,"type":"chat","model":"m","messages":[]}', store=True),
        "deep": await env.request(b"[" * 200_000, store=True),
        "over_cap": await env.request(chat_doc(3).replace(b'"max_tokens":8', b'"max_tokens":8,"n":9')),
        "good": await env.request(good),
        "over_declared": await env.request(chat_doc(4), max_tokens=7),
    }
    big = b'{"v":1,"type":"completion","model":"m","prompt":"' + b"x" * (1 << 20) + b'"}'
    env.store.path_for(cid_for_bytes(big)).parent.mkdir(parents=True, exist_ok=True)
    env.store.path_for(cid_for_bytes(big)).write_bytes(big)
    ids["oversized"] = await env.request(big, store=False)

    async def all_final() -> bool:
        jobs = [daemon.journal.get(i) for i in ids.values()]
        return all(j is not None and j.state == JobState.FINALIZED for j in jobs)

    await run_until(daemon, all_final)
    codes = {}
    for name, rid in ids.items():
        info = await env.hub.owner.get_request(rid)
        assert info.output_digest is not None
        doc = parse_output_document(await env.store.get(digest_to_cid(info.output_digest)))
        codes[name] = doc.error.code if doc.error else None
    assert codes == {
        "malformed": "invalid_request",
        "schema": "invalid_request",
        "deep": "invalid_request",
        "over_cap": "invalid_request",
        "good": None,
        "over_declared": MAX_TOKENS_EXCEEDS_DECLARED,
        "oversized": "input_too_large",
    }


async def test_unfetchable_inputs_are_retried_never_answered(env: Env) -> None:
    """Not found / tampered bytes are no answer: the job waits until the real input can be read."""
    daemon = env.daemon()
    missing = chat_doc(99)
    tampered = chat_doc(2)
    await env.store.put(tampered)
    path = env.store.path_for(cid_for_bytes(tampered))
    path.chmod(0o644)
    path.write_bytes(tampered.replace(b"question", b"QUESTION"))
    ids = [await env.request(missing, store=False), await env.request(tampered, store=False)]
    other = await env.request(chat_doc(3))

    async def other_final() -> bool:
        return (j := daemon.journal.get(other)) is not None and j.state == JobState.FINALIZED

    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        async with asyncio.timeout(60):
            while not await other_final():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # a few retries of the unfetchable two
        for rid in ids:
            job = daemon.journal.get(rid)
            assert job is not None and job.state == JobState.NEW
            assert (await env.hub.owner.get_request(rid)).phase == Phase.ASSIGNED
        await env.store.put(missing)  # the input shows up (and the corrupt copy is repaired)
        await env.store.put(tampered)
        async with asyncio.timeout(90):
            while not all(
                (j := daemon.journal.get(i)) is not None and j.state == JobState.FINALIZED for i in ids
            ):
                assert not task.done()
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task
    for rid in ids:
        info = await env.hub.owner.get_request(rid)
        assert info.output_digest is not None
        assert parse_output_document(await env.store.get(digest_to_cid(info.output_digest))).error is None


async def test_exactly_one_reveal_per_request(env: Env) -> None:
    daemon = env.daemon()
    ids = [await env.request(chat_doc(i)) for i in range(5)]

    async def all_final() -> bool:
        return all((j := daemon.journal.get(i)) is not None and j.state == JobState.FINALIZED for i in ids)

    await run_until(daemon, all_final)
    logs = await env.hub.owner.w3.eth.get_logs({"address": env.hub.owner.address, "fromBlock": 0})
    from node.chain.events import decode_logs

    subs = [e for e in decode_logs(logs) if isinstance(e, ResultRevealed)]  # type: ignore[arg-type]
    assert sorted(e.id for e in subs) == ids


# --------------------------------------------------------------------------- the pipeline alone


@dataclass
class _Job:
    request_id: int
    input_digest: bytes
    created: int = 1_700_000_000
    max_tokens: int | None = None


def test_declared_tokens() -> None:
    from node.content.documents import CompletionInputDocument, CompletionParams, parse_input_document

    assert declared_tokens(parse_input_document(chat_doc(1, max_tokens=8))) == 8
    many = CompletionInputDocument(
        model="m", prompt=["a", "b"], params=CompletionParams(max_tokens=5, n=2, best_of=3)
    )
    assert declared_tokens(many) == 2 * 3 * 5
    bare = ChatInputDocument(
        model="m", messages=[UserMessage(role="user", content="x")], params=ChatParams(n=2)
    )
    assert declared_tokens(bare) <= 65_536 and declared_tokens(bare) % 2 == 0
    assert declared_tokens(bare, max_model_len=2048) == 2 * 2048  # the engine's context caps the default


class _CountingStore(LocalStore):
    reads = 0

    async def get(self, cid: str) -> bytes:
        self.reads += 1
        return await super().get(cid)


class _HostileEngine(FakeEngine):
    """An engine that raises what a hostile input can make a tokenizer or vLLM raise."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    async def generate(self, input_doc: Any, **kwargs: Any) -> Any:
        raise self.exc

    async def stream(self, input_doc: Any, **kwargs: Any) -> Any:
        raise self.exc
        yield  # pragma: no cover


def _pipeline(store: LocalStore, engine: Any) -> Pipeline:
    key = "0x" + "11" * 32
    return Pipeline(engine=engine, store=store, private_key=key, chain_id=31337, hub="0x" + "22" * 20)


@pytest.mark.parametrize("exc", [RecursionError("deep"), ValueError("/opt/x: 12345"), ParamError("x", "y")])
async def test_whatever_the_engine_raises_for_an_input_is_one_fixed_refusal(
    tmp_path: Path, exc: Exception
) -> None:
    data = chat_doc(5)
    outputs = []
    for name in ("alice", "bob"):  # two miners, different disks: the same bytes
        store = LocalStore(tmp_path / name)
        await store.put(data)
        produced = await _pipeline(store, _HostileEngine(exc)).produce(_Job(7, digest_of(data)))
        outputs.append(produced.output)
    assert outputs[0] == outputs[1]
    doc = parse_output_document(outputs[0])
    assert doc.error is not None and "/opt" not in doc.error.message
    assert doc.error.code == ("x" if isinstance(exc, ParamError) else "input_unprocessable")


async def test_a_dead_engine_is_retried_not_answered(tmp_path: Path) -> None:
    from node.engine.engine import EngineError

    data = chat_doc(6)
    store = LocalStore(tmp_path / "s")
    await store.put(data)
    with pytest.raises(EngineError):
        await _pipeline(store, _HostileEngine(EngineError("dead"))).produce(_Job(8, digest_of(data)))


async def test_an_unfetchable_input_backs_off_without_holding_the_job(tmp_path: Path) -> None:
    store = _CountingStore(tmp_path / "s")
    pipeline = _pipeline(store, FakeEngine())
    pipeline.first_fetch_s = 0.3
    pipeline.fetch_retry_s = 0.1
    job = _Job(9, digest_of(chat_doc(9)))
    with pytest.raises(InputUnavailable) as first:
        await pipeline.produce(job)
    assert store.reads >= 2 and first.value.retry_after_s > 0
    reads = store.reads
    with pytest.raises(InputUnavailable):  # within the backoff: no read at all
        await pipeline.produce(job)
    assert store.reads == reads
    await asyncio.sleep(first.value.retry_after_s)
    with pytest.raises(InputUnavailable) as again:  # after it: one read, a longer backoff
        await pipeline.produce(job)
    assert store.reads == reads + 1 and again.value.retry_after_s > first.value.retry_after_s
    await store.put(chat_doc(9))
    await asyncio.sleep(again.value.retry_after_s)
    produced = await pipeline.produce(job)
    assert produced.error_code is None
