"""Several models on one box with the real CPU engine: SmolLM2 twice, under two registered names.

Two on-chain models with the real engine's class, one key each; one `ModelsRuntime` (what
`inferd miner run` starts for a `[[miner.models]]` config) starts two real vLLM engines in one
process and finalizes a request of each model, each answered by its own key and engine, with the
real engine's fingerprint in the signed output document. Fails (never skips) without vLLM or the
default model (`tests/integration/conftest.py`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from eth_account import Account

from node.chain.hub import HubClient, Phase, model_id
from node.config import load_settings, per_model_settings
from node.content.cid import digest_to_cid
from node.content.documents import (
    ChatInputDocument,
    ChatParams,
    UserMessage,
    parse_output_document,
    to_canonical_bytes,
)
from node.content.local import LocalStore
from node.devnet.processes import Anvil
from node.engine.engine import Engine, resolve_model_path
from node.engine.engine_class import engine_class
from node.engine.model_fetch import DEFAULT_MODEL_NAME
from node.miner.journal import TERMINAL, JobState
from node.miner.models import ModelsRuntime
from node.miner.testing import deploy_dev_hub, dev_request
from tests.integration.conftest import use_fake_engine

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]


async def test_two_real_engines_in_one_miner(anvil: Anvil, anvil_keys: list[str], tmp_path: Path) -> None:
    if use_fake_engine():
        pytest.fail("this test is about two real engines in one process: unset INFERD_TEST_FAKE_ENGINE")
    key_a, key_b = anvil_keys[3], anvil_keys[4]
    config = tmp_path / "inferd.toml"
    config.write_text(
        f"""
data_dir = "{tmp_path}"
[chain]
rpc_url = "{anvil.rpc_url}"
chain_id = 31337
poll_interval_s = 0.2
[engine]
max_model_len = 1024
max_num_seqs = 8
cpu_kvcache_gib = 0.5
[stream]
enabled = false
[miner]
metrics_port = 0
batch_wait_s = 0.1

[[miner.models]]
name = "smol-a"
private_key = "{key_a}"

[[miner.models]]
name = "smol-b"
private_key = "{key_b}"
"""
    )
    base = per_model_settings(load_settings(config))["smol-a"].engine
    ec = engine_class(base, resolve_model_path(base)).id
    dev = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [key_a], model_name="smol-a", engine_class=ec)
    owner = dev.owner
    await owner.register_model("smol-b", ec, 10**18, 10**12, 0, 100, 1, 1)
    await HubClient(owner.w3, owner.address, key_b).register_miner(model_id("smol-b"), ec, 10**18)
    settings = load_settings(config, chain={"hub_address": owner.address})

    runtime = await ModelsRuntime.open(settings)
    engines = {n: d.engine for n, d in runtime.daemons.items()}
    assert all(isinstance(e, Engine) for e in engines.values()) and engines["smol-a"] is not engines["smol-b"]
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        for d in runtime.daemons.values():
            await asyncio.wait_for(d.ready.wait(), 120)
        store = LocalStore(tmp_path / "blocks")
        requester = HubClient(owner.w3, owner.address, anvil_keys[8])
        ids: dict[str, int] = {}
        for i, name in enumerate(("smol-a", "smol-b")):
            data = to_canonical_bytes(
                ChatInputDocument(
                    model=DEFAULT_MODEL_NAME,
                    messages=[UserMessage(role="user", content=f"Name a colour. ({i})")],
                    params=ChatParams(max_tokens=4, seed=i),
                )
            )
            await store.put(data)
            ids[name] = await dev_request(requester, model_id(name), data)
        async with asyncio.timeout(300):
            while True:
                assert not task.done(), task.exception()
                done = [
                    (await owner.get_request(rid)).phase == Phase.FINAL
                    and (job := runtime.daemons[n].journal.get(rid)) is not None
                    and job.state in TERMINAL
                    for n, rid in ids.items()
                ]
                if all(done):
                    break
                await owner.mine(1)
                await asyncio.sleep(0.5)
        for name, rid in ids.items():
            info = await owner.get_request(rid)
            assert info.seats[0] == Account.from_key(key_a if name == "smol-a" else key_b).address
            job = runtime.daemons[name].journal.get(rid)
            assert job is not None and job.state == JobState.FINALIZED
            assert info.output_digest is not None
            out = parse_output_document(await store.get(digest_to_cid(info.output_digest)))
            assert out.system_fingerprint == engines[name].system_fingerprint
    finally:
        stop.set()
        await task
        await runtime.close()
