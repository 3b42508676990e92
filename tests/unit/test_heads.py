"""The newHeads wake source against real anvil behind a cuttable loopback proxy: heads wake, a cut
socket is noticed and re-subscribed with backoff, an unreachable endpoint never raises, metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from node.chain.heads import HeadsCollector, HeadSubscription, endpoint_label
from node.chain.hub import HubClient
from node.chain.watcher import LogFollower, MemoryCursor
from node.devnet.processes import Anvil, free_port
from node.log import redact_text
from tests.loopback_proxy import LoopbackProxy
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """on_head / on_change / sleep callbacks that remember what they saw."""

    def __init__(self) -> None:
        self.heads: list[int] = []
        self.changes: list[bool] = []
        self.sleeps: list[float] = []

    def on_head(self, n: int) -> None:
        self.heads.append(n)

    def on_change(self, up: bool) -> None:
        self.changes.append(up)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0.05)  # the real wait is short; the asked-for delay is what is checked


def subscription(url: str, rec: Recorder, **kw: Any) -> HeadSubscription:
    return HeadSubscription(
        url, on_head=rec.on_head, on_change=rec.on_change, sleep=rec.sleep, open_timeout_s=2, **kw
    )


async def test_heads_wake_and_a_cut_socket_resubscribes_with_backoff(anvil: Anvil) -> None:
    w3 = HubClient.web3(anvil.rpc_url)
    proxy = LoopbackProxy(anvil.port)
    await proxy.start()
    rec = Recorder()
    sub = subscription(proxy.ws_url, rec, first_backoff_s=0.5, max_backoff_s=2.0)
    task = asyncio.create_task(sub.run())
    try:
        await until(lambda: sub.stats.connected, "subscribed")
        await w3.provider.make_request("anvil_mine", ["0x2"])  # type: ignore[arg-type]
        head = int(await w3.eth.block_number)
        await until(lambda: head in rec.heads, "the mined head pushed")
        assert rec.changes == [True]

        await proxy.cut()
        await until(lambda: len(rec.sleeps) >= 4, "retries while the endpoint is gone")
        assert not sub.stats.connected and rec.changes == [True, False]
        # Doubling from the first delay (a head had arrived on that connection), capped.
        assert rec.sleeps[:4] == [0.5, 1.0, 2.0, 2.0]
        assert sub.stats.last_error is not None and sub.stats.reconnects == 0

        await proxy.restore()
        await until(lambda: sub.stats.connected, "subscribed again")
        await w3.provider.make_request("anvil_mine", ["0x1"])  # type: ignore[arg-type]
        head = int(await w3.eth.block_number)
        await until(lambda: head in rec.heads, "heads pushed after the reconnect")
        assert rec.changes == [True, False, True]
        assert sub.stats.connects == 2 and sub.stats.reconnects == 1 and sub.stats.last_head == head
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await proxy.cut()
    assert not sub.stats.connected and rec.changes[-1] is False


async def test_an_unreachable_endpoint_backs_off_and_never_raises() -> None:
    rec = Recorder()
    sub = subscription(f"ws://127.0.0.1:{free_port()}/v3/some-api-key", rec, max_backoff_s=4.0)
    task = asyncio.create_task(sub.run())
    await until(lambda: len(rec.sleeps) >= 6, "six failed attempts")
    assert not task.done()  # it keeps trying, it does not end or raise
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.sleeps[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert rec.changes == [] and rec.heads == [] and sub.stats.connects == 0
    assert sub.endpoint == f"ws://127.0.0.1:{sub.url.split(':')[2].split('/')[0]}"  # no path: no key in logs


def test_only_websocket_urls_are_accepted_and_their_keys_stay_out_of_logs() -> None:
    with pytest.raises(ValueError, match="ws://"):
        HeadSubscription("http://127.0.0.1:8545/key", on_head=lambda _n: None)
    assert endpoint_label("wss://user:pw@rpc.example.org/ws/v3/KEY?x=1") == "wss://rpc.example.org"
    HeadSubscription("wss://rpc.example.org/v3/0123abcdAPIKEY", on_head=lambda _n: None)
    assert "0123abcdAPIKEY" not in redact_text("Connecting to: wss://rpc.example.org/v3/0123abcdAPIKEY")
    assert "0123abcdAPIKEY" not in redact_text("GET /v3/0123abcdAPIKEY")
    # web3's own per-connection lines ("Connecting to: <url>") are below the level that gets out.
    assert not logging.getLogger("web3.providers.WebSocketProvider").isEnabledFor(logging.INFO)


def test_collector_exports_configured_subscriptions_only() -> None:
    sub = HeadSubscription("ws://127.0.0.1:1", on_head=lambda _n: None)
    sub.stats.connected, sub.stats.connects, sub.stats.heads = True, 3, 7
    registry = CollectorRegistry()
    registry.register(HeadsCollector("inferd_test", lambda: {31337: sub, 5: None}))
    text = generate_latest(registry).decode()
    assert 'inferd_test_ws_connected{chain_id="31337"} 1.0' in text
    assert 'inferd_test_ws_reconnects_total{chain_id="31337"} 2.0' in text
    assert 'inferd_test_ws_heads_total{chain_id="31337"} 7.0' in text
    assert 'chain_id="5"' not in text


def test_follower_polls_slowly_only_while_pushed_heads_are_trusted() -> None:
    w3 = HubClient.web3("http://127.0.0.1:1")
    address = "0x" + "11" * 20
    plain = LogFollower(w3, address=address, decode=lambda e: e, cursor=MemoryCursor(), poll_interval_s=0.5)
    assert plain.heads is None and plain._idle_interval() == 0.5
    f = LogFollower(
        w3, address=address, decode=lambda e: e, cursor=MemoryCursor(), poll_interval_s=0.5,
        ws_url="ws://127.0.0.1:1", push_poll_interval_s=20,
    )  # fmt: skip
    assert f.heads is not None
    assert f._idle_interval() == 0.5  # not connected (yet, or any more): poll as without a socket
    f.heads.stats.connected = True
    f.stats.head = 10
    assert f._idle_interval() == 20  # heads arrive by push: polling is only a safety net
    f._on_head(11)
    assert f._idle_interval() == 0.5  # the socket announced a head the HTTP node has not shown yet
    f.stats.head = 11
    assert f._idle_interval() == 20
