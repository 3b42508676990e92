"""`chain.ws_url` end to end on real anvil: new logs reach the follower by push, and when the
WebSocket is cut mid-run no event is lost (the follower polls), then push resumes when it is back.

The follower polls every 0.2 s while the socket is down and only every hour while it is up, so
events seen while it is up can only have come from a pushed head; the assertions are on the set of
request ids seen (each exactly once), never on how long anything took.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from node.chain.events import InferenceRequested, decode_log
from node.chain.hub import HubClient
from node.chain.watcher import LogBatch, LogFollower, MemoryCursor, Reorg
from node.config import load_settings
from node.content.local import LocalStore
from node.devnet.processes import Anvil
from node.gateway.app import create_app
from node.gateway.chain_backend import ChainBackend
from node.gateway.server import GatewayServer
from node.miner.daemon import DaemonConfig, MinerDaemon
from node.miner.journal import Journal
from node.miner.testing import FakeEngine, deploy_dev_hub
from tests.loopback_proxy import LoopbackProxy
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


async def test_push_then_cut_socket_then_push_again_loses_no_event(
    anvil: Anvil, anvil_keys: list[str]
) -> None:
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[1]])
    client = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[3])
    proxy = LoopbackProxy(anvil.port)  # only the WebSocket goes through it; HTTP reads go to anvil
    await proxy.start()
    start = int(await client.w3.eth.block_number) + 1
    f: LogFollower[Any] = LogFollower(
        client.w3, address=client.address, decode=decode_log, cursor=MemoryCursor(), start_block=start,
        confirmations=1, poll_interval_s=0.2, push_poll_interval_s=3600, ws_url=proxy.ws_url,
    )  # fmt: skip
    heads = f.heads
    assert heads is not None
    seen: list[int] = []

    async def consume() -> None:
        async for item in f.follow():
            if isinstance(item, LogBatch):
                seen.extend(e.id for e in item.events if isinstance(e, InferenceRequested))

    async def request(n: int) -> set[int]:
        ids = {
            (await client.request_inference(hub.model, bytes([len(seen) + i + 1]) * 32, 16)).id
            for i in range(n)
        }
        await client.mine(1)  # the last request's confirmation
        return ids

    task = asyncio.create_task(consume())
    try:
        await until(lambda: heads.stats.connected, "subscribed")
        # The first poll ran before the socket was up; from here on only a pushed head wakes it.
        pushed = await request(3)
        await until(lambda: pushed <= set(seen), "requests seen by push")
        assert heads.stats.heads >= 1

        await proxy.cut()
        in_the_gap = await request(2)  # mined at once, maybe before the drop is even noticed
        await until(lambda: not heads.stats.connected, "the drop noticed")
        polled = in_the_gap | await request(3)
        await until(lambda: polled <= set(seen), "requests seen by polling while the socket is down")
        assert not heads.stats.connected

        await proxy.restore()
        await until(lambda: heads.stats.connected, "subscribed again")
        heads_before = heads.stats.heads
        pushed_again = await request(3)
        await until(lambda: pushed_again <= set(seen), "requests seen by push after the reconnect")
        assert heads.stats.heads > heads_before and heads.stats.reconnects == 1
    finally:
        f.stop()
        await asyncio.wait_for(task, 10)
        await proxy.cut()
    every = pushed | polled | pushed_again
    assert len(every) == 11
    assert sorted(seen) == sorted(every) and len(seen) == len(set(seen))  # all of them, each once
    assert seen == sorted(seen)  # in chain order
    assert not heads.stats.connected  # the subscription ended with the follower


async def test_without_a_reachable_socket_the_follower_polls_as_before(
    anvil: Anvil, anvil_keys: list[str]
) -> None:
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[1]])
    client = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[4])
    proxy = LoopbackProxy(anvil.port)  # never started: connection refused
    start = int(await client.w3.eth.block_number) + 1
    f: LogFollower[Any] = LogFollower(
        client.w3, address=client.address, decode=decode_log, cursor=MemoryCursor(), start_block=start,
        poll_interval_s=0.1, push_poll_interval_s=3600, ws_url=proxy.ws_url,
    )  # fmt: skip
    ids = {(await client.request_inference(hub.model, bytes([i + 1]) * 32, 16)).id for i in range(3)}
    seen: list[int] = []
    async with asyncio.timeout(20):
        async for item in f.follow():
            if isinstance(item, LogBatch):
                seen.extend(e.id for e in item.events if isinstance(e, InferenceRequested))
            if ids <= set(seen):
                f.stop()
    assert sorted(seen) == sorted(ids)
    assert f.heads is not None and f.heads.stats.connects == 0 and f.heads.stats.last_error is not None


async def test_miner_and_gateway_follow_heads_over_chain_ws_url(
    anvil: Anvil, anvil_keys: list[str], tmp_path: Path
) -> None:
    """The wiring: `chain.ws_url` reaches the miner's and the gateway's followers and their /metrics."""
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[5]])
    miner_key = anvil_keys[5]
    account = Account.from_key(miner_key)
    miner_hub = HubClient(HubClient.web3(anvil.rpc_url), hub.owner.address, miner_key)
    daemon = MinerDaemon(
        config=DaemonConfig(chain_id=31337, poll_interval_s=0.1, ws_url=anvil.ws_url),
        hub=miner_hub, account=account, engine=FakeEngine(), store=LocalStore(tmp_path / "blocks"),
        journal=Journal(tmp_path / "journal.sqlite", scope=f"31337:{miner_hub.address}:{account.address}"),
    )  # fmt: skip
    settings = load_settings(
        data_dir=tmp_path,
        chain={"rpc_url": anvil.rpc_url, "ws_url": anvil.ws_url, "hub_address": hub.owner.address,
               "private_key": anvil_keys[8]},
        stream={"enabled": False},
    )  # fmt: skip
    store = LocalStore(tmp_path / "gateway-blocks")
    backend = ChainBackend.from_settings(settings, store)
    server = GatewayServer(create_app(settings, backend=backend, store=store))
    stop = asyncio.Event()
    miner = asyncio.create_task(daemon.run(stop))
    await server.start()
    try:
        await until(
            lambda: daemon.follower is not None and daemon.follower.heads is not None, "miner started"
        )
        assert daemon.follower is not None and daemon.follower.heads is not None
        miner_heads = daemon.follower.heads
        gateway_heads = backend.links[31337].follower.heads if backend.links[31337].follower else None
        assert gateway_heads is not None
        await until(lambda: miner_heads.stats.connected and gateway_heads.stats.connected, "both subscribed")
        await hub.owner.mine(1)
        await until(lambda: miner_heads.stats.heads > 0 and gateway_heads.stats.heads > 0, "heads pushed")
        miner_metrics = daemon.metrics.render().decode()
        assert 'inferd_miner_ws_connected{chain_id="31337"} 1.0' in miner_metrics
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            text = (await http.get("/metrics")).text
        assert 'inferd_gateway_ws_connected{chain_id="31337"} 1.0' in text
        assert 'inferd_gateway_ws_reconnects_total{chain_id="31337"} 0.0' in text
    finally:
        stop.set()
        await asyncio.wait_for(miner, 30)
        await server.stop()
    assert not miner_heads.stats.connected and not gateway_heads.stats.connected  # closed with their owners


async def test_a_reorg_is_rescanned_while_heads_come_by_push(anvil: Anvil, anvil_keys: list[str]) -> None:
    """The same reorg handling as polling (tests/unit/test_watcher.py), woken by pushed heads only."""
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[1]])
    client = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[6])
    start = int(await client.w3.eth.block_number) + 1
    f: LogFollower[Any] = LogFollower(
        client.w3, address=client.address, decode=decode_log, cursor=MemoryCursor(), start_block=start,
        poll_interval_s=0.1, push_poll_interval_s=3600, ws_url=anvil.ws_url,
    )  # fmt: skip
    heads = f.heads
    assert heads is not None
    items: list[Any] = []

    def requested() -> list[int]:
        return [
            e.id
            for b in items
            if isinstance(b, LogBatch)
            for e in b.events
            if isinstance(e, InferenceRequested)
        ]

    async def consume() -> None:
        async for item in f.follow():
            items.append(item)

    task = asyncio.create_task(consume())
    try:
        await until(lambda: heads.stats.connected, "subscribed")
        for i in range(4):
            await client.request_inference(hub.model, bytes([i + 1]) * 32, 16)
        await until(lambda: requested() == [1, 2, 3, 4], "four requests seen")
        head = int(await client.w3.eth.block_number)
        await client.w3.provider.make_request("anvil_reorg", [3, []])  # type: ignore[arg-type]
        for i in range(2):
            await client.request_inference(hub.model, bytes([0x20 + i]) * 32, 16)
        await until(lambda: requested().count(3) == 2, "the re-scan after the reorg")
    finally:
        f.stop()
        await asyncio.wait_for(task, 10)
    reorgs = [i for i in items if isinstance(i, Reorg)]
    assert len(reorgs) == 1 and reorgs[0].fork_block == head - 2
    assert requested() == [1, 2, 3, 4, 2, 3]  # 2..4 were reorged out; the new requests reuse ids 2 and 3
    assert heads.stats.connects == 1  # push the whole time
