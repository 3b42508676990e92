"""The gateway's v2 path on real anvil with two in-process fake-engine miners: a model that audits
every single-miner result (auditBps 10000), so each answer goes request -> assign -> commit ->
audit -> reveals -> final, and the gateway says `audited`; the fee is exactly the price of the
declared maxTokens. The request is private (the gateway default): the input is sealed to the assignee,
then again to the drawn auditor, both read it at the gateway's `/envelope` route and, with no broker,
hand their sealed answers in there."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.chain.hub import HubClient, Phase, RequestFlag
from node.config import load_settings
from node.content.local import LocalStore
from node.devnet.processes import Anvil
from node.gateway.app import create_app
from node.gateway.auth import KeyStore
from node.gateway.server import GatewayServer
from node.miner.daemon import DaemonConfig, MinerDaemon
from node.miner.testing import FakeEngine, deploy_dev_hub, local_daemon, serve_gateways

pytestmark = pytest.mark.timeout(120)
MODEL = "audited-model"
BASE_FEE, PER_TOKEN = 10**12, 10**6


def daemon(rpc_url: str, hub: str, key: str, store: LocalStore, journal: Path) -> MinerDaemon:
    return local_daemon(
        hub=HubClient(HubClient.web3(rpc_url), hub, key), miner_key=key, engine=FakeEngine(MODEL),
        store=store, journal_path=journal, broker_url=None,
        config=DaemonConfig(chain_id=31337, poll_interval_s=0.1, batch_wait_s=0.05, sweep_interval_s=0.3),
    )  # fmt: skip


async def test_every_answer_is_audited_and_costs_its_price(
    anvil: Anvil, anvil_keys: list[str], tmp_path: Path
) -> None:
    miners = [anvil_keys[3], anvil_keys[4]]
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], miners, model_name=MODEL, timeout_blocks=50, base_fee=BASE_FEE,
        per_token_fee=PER_TOKEN, audit_bps=10_000,
    )  # fmt: skip
    store = LocalStore(tmp_path / "blocks")
    daemons = [
        daemon(anvil.rpc_url, hub.owner.address, k, store, tmp_path / f"journal-{i}.sqlite")
        for i, k in enumerate(miners)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(stop)) for d in daemons]
    settings = load_settings(
        data_dir=tmp_path,
        chain={"rpc_url": anvil.rpc_url, "hub_address": hub.owner.address, "private_key": anvil_keys[9],
               "poll_interval_s": 0.1},
        stream={"enabled": False},
        gateway={"request_timeout_s": 60.0},
    )  # fmt: skip
    key, _ = KeyStore(tmp_path / "gateway" / "api_keys.json").add("audit")
    server = GatewayServer(create_app(settings, store=store))
    await server.start()
    for d in daemons:  # the miners' `miner.envelope_urls`
        serve_gateways(d, [server.url])
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=90
        ) as http:
            body: dict[str, Any] = {
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "n": 2,
            }  # fmt: skip
            reply = await http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            od = reply.json()["onchain_data"]
            assert od["verification"] == "audited" and od["phase"] == "final"
            assert od["max_tokens"] == 10 and od["fee_wei"] == str(BASE_FEE + 10 * PER_TOKEN)
            info = await hub.owner.get_request(od["request_id"])
            assert info.phase == Phase.FINAL and RequestFlag.AUDITED in info.flags
            assert info.auditor in hub.miners and info.auditor not in od["assignment_addresses"]
            record = (await http.get(f"/v1/inferences/{od['request_id']}")).json()
            assert record["verification"] == "audited" and record["output_cid"] == od["output_cid"]
            assert record["revealed_cids"] == [od["output_cid"]] * 2  # assignee and auditor agree
            assert od["output_salt"]  # private: only this gateway could open the answer
    finally:
        await server.stop()
        stop.set()
        await asyncio.gather(*tasks)
