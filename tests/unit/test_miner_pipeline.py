"""Miner pipeline on real anvil with a fake engine: every request answered, batched, signed, verifiable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account

from node.chain.events import ResultSubmitted
from node.chain.hub import HubClient, RequestStatus
from node.chain.signing import recover_result_signer
from node.content.cid import cid_for_bytes, digest_of, digest_to_cid
from node.content.documents import (
    ChatInputDocument,
    ChatParams,
    UserMessage,
    parse_output_document,
    to_canonical_bytes,
)
from node.content.local import LocalStore
from node.devnet.processes import Anvil
from node.miner.daemon import DaemonConfig, MinerDaemon
from node.miner.journal import JobState, Journal
from node.miner.testing import DevHub, FakeEngine, deploy_dev_hub

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

    async def request(self, data: bytes, *, store: bool = True) -> int:
        if store:
            await self.store.put(data)
        res = await self.requester.request_inference(self.hub.model, digest_of(data), 10**12)
        return res.id

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
        assert info.status == RequestStatus.FINALIZED
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
    tampered_cid_data = chat_doc(2)
    ids = {
        "unknown": await env.request(chat_doc(99), store=False),
        "malformed": await env.request(b'{"v":1, "type": "chat", "model": ', store=True),
        "schema": await env.request(b'{"v":1,"type":"chat","model":"m","messages":[]}', store=True),
        "good": await env.request(good),
    }
    # Tampered: the block on disk no longer hashes to its CID.
    await env.store.put(tampered_cid_data)
    path = env.store.path_for(cid_for_bytes(tampered_cid_data))
    path.chmod(0o644)
    path.write_bytes(tampered_cid_data.replace(b"question", b"QUESTION"))
    ids["tampered"] = await env.request(tampered_cid_data, store=False)
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
    assert codes["good"] is None
    assert codes["unknown"] == "input_not_found"
    assert codes["malformed"] == "invalid_request"
    assert codes["schema"] == "invalid_request"
    assert codes["tampered"] == "input_integrity"
    assert codes["oversized"] == "input_too_large"


async def test_exactly_one_submission_per_request(env: Env) -> None:
    daemon = env.daemon()
    ids = [await env.request(chat_doc(i)) for i in range(5)]

    async def all_final() -> bool:
        return all((j := daemon.journal.get(i)) is not None and j.state == JobState.FINALIZED for i in ids)

    await run_until(daemon, all_final)
    logs = await env.hub.owner.w3.eth.get_logs({"address": env.hub.owner.address, "fromBlock": 0})
    from node.chain.events import decode_logs

    subs = [e for e in decode_logs(logs) if isinstance(e, ResultSubmitted)]  # type: ignore[arg-type]
    assert sorted(e.id for e in subs) == ids
