"""The gateway's chain watcher under its supervisor, on real anvil through the real app and server:

- the watcher loop crashing makes `/healthz` 503 with the loop `restarting` while it waits out its
  backoff (the sleep is gated by the test, so nothing depends on time), then 200 once it is back;
- a chain event whose handling raises is skipped and counted; both show in `/metrics`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.chain.hub import HubClient
from node.config import load_settings
from node.content.cid import digest_of
from node.content.local import LocalStore
from node.devnet.processes import Anvil
from node.gateway.app import create_app
from node.gateway.chain_backend import ChainBackend
from node.gateway.server import GatewayServer
from node.miner.testing import deploy_dev_hub
from tests.unit.test_supervise import GatedSleep

pytestmark = pytest.mark.timeout(120)


async def test_watcher_crash_and_poisoned_event_show_in_health_and_metrics(
    anvil: Anvil, anvil_keys: list[str], tmp_path: Path
) -> None:
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[6]], model_name="loops-model")
    settings = load_settings(
        data_dir=tmp_path,
        chain={"rpc_url": anvil.rpc_url, "hub_address": hub.owner.address, "private_key": anvil_keys[8],
               "poll_interval_s": 0.05},
        stream={"enabled": False},
    )  # fmt: skip
    store = LocalStore(tmp_path / "blocks")
    backend = ChainBackend.from_settings(settings, store)
    sleep = GatedSleep()
    backend.loops._sleep = sleep
    follow, on_event = backend._follow, backend._on_event
    crashed: list[bool] = []
    poisoned: list[int] = []

    async def crash_once(link: Any) -> None:
        if not crashed:
            crashed.append(True)
            raise ConnectionResetError("the watcher loop dies")
        await follow(link)

    went_on = asyncio.Event()

    def poison_once(chain_id: int, ev: Any) -> None:
        if not poisoned:
            poisoned.append(ev.id)
            raise KeyError("a handler bug")
        went_on.set()  # the event after the poisoned one was handled
        on_event(chain_id, ev)

    backend._follow = crash_once  # type: ignore[method-assign]
    backend._on_event = poison_once  # type: ignore[method-assign]
    server = GatewayServer(create_app(settings, backend=backend, store=store))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            await sleep.asked.wait()
            down = await http.get("/healthz")
            assert down.status_code == 503 and down.json()["loops"]["watcher-31337"] == "restarting"
            await sleep.release()
            for _ in range(1000):
                up = await http.get("/healthz")
                if up.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert up.json()["loops"]["watcher-31337"] == "up"

            # A miner's result on chain: the watcher's handler raises on it, the loop goes on.
            miner = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[6])
            requester = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[7])
            for i in range(2):
                rid = (await requester.request_inference(hub.model, digest_of(bytes([i])), 8)).id
                await requester.assign()
                await miner.commit(rid, b"\x01" * 32)
            await went_on.wait()
            assert backend.loops.loops["watcher-31337"].event_errors == 1 and len(poisoned) == 1
            text = (await http.get("/metrics")).text
            assert 'inferd_gateway_loop_restarts_total{loop="watcher-31337"} 1.0' in text
            assert 'inferd_gateway_loop_event_errors_total{loop="watcher-31337"} 1.0' in text
            assert 'inferd_gateway_loop_up{loop="watcher-31337"} 1.0' in text
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await server.stop()
    assert backend.loops.loops["watcher-31337"].state.value == "down"
