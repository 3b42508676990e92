"""A real gateway on a real anvil hub, with in-process fake-engine miners and no broker.

The chain-only gateway tests (batched requests, the v2 request -> audit path) each started the same
pieces in the same order: one miner daemon a key over a shared local content store, the gateway's
settings for that hub and wallet, an API key, the server, the miners told where the gateway's
`/envelope` route is, an authorised HTTP client, and the reverse on the way out. `gateway_on_anvil`
does that once, so a test says only what it sends and what it checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from node.chain.hub import HubClient
from node.config import load_settings
from node.content.local import LocalStore
from node.gateway.app import create_app
from node.gateway.auth import KeyStore
from node.gateway.requesting import ASSIGN_BATCH, Requester
from node.gateway.server import GatewayServer
from node.miner.daemon import DaemonConfig, MinerDaemon
from node.miner.testing import FakeEngine, local_daemon, serve_gateways


@dataclass
class GatewayRun:
    """What a test talks to: the gateway's authorised client, and what it may inspect."""

    http: httpx.AsyncClient
    server: GatewayServer
    store: LocalStore
    daemons: list[MinerDaemon]


def fake_miner(rpc_url: str, hub: str, key: str, model: str, store: LocalStore, journal: Path) -> MinerDaemon:
    """A fast-polling in-process miner with the fake engine of `model`, without MQTT."""
    return local_daemon(
        hub=HubClient(HubClient.web3(rpc_url), hub, key), miner_key=key, engine=FakeEngine(model),
        store=store, journal_path=journal, broker_url=None,
        config=DaemonConfig(chain_id=31337, poll_interval_s=0.1, batch_wait_s=0.05, sweep_interval_s=0.3),
    )  # fmt: skip


@asynccontextmanager
async def gateway_on_anvil(
    rpc_url: str,
    hub: str,
    *,
    model: str,
    miner_keys: Sequence[str],
    wallet_key: str,
    tmp_path: Path,
    gateway: dict[str, Any] | None = None,
) -> AsyncIterator[GatewayRun]:
    """Miners for `miner_keys` and a gateway paying from `wallet_key`, on the hub at `hub`.

    `gateway` adds `[gateway]` settings to the defaults (a 60 s request timeout). Everything is
    stopped on the way out, the miners last (they may still be finishing what the gateway sent).
    """
    store = LocalStore(tmp_path / "blocks")
    daemons = [
        fake_miner(rpc_url, hub, k, model, store, tmp_path / f"journal-{i}.sqlite")
        for i, k in enumerate(miner_keys)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(stop)) for d in daemons]
    settings = load_settings(
        data_dir=tmp_path,
        chain={"rpc_url": rpc_url, "hub_address": hub, "private_key": wallet_key, "poll_interval_s": 0.1},
        stream={"enabled": False},
        gateway={"request_timeout_s": 60.0, **(gateway or {})},
    )
    api_key, _ = KeyStore(tmp_path / "gateway" / "api_keys.json").add("test")
    server = GatewayServer(create_app(settings, store=store))
    try:
        await server.start()
        for d in daemons:  # the miners' `miner.envelope_urls`: private inputs are read there
            serve_gateways(d, [server.url])
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=90
        ) as http:
            yield GatewayRun(http=http, server=server, store=store, daemons=daemons)
    finally:
        await server.stop()
        stop.set()
        await asyncio.gather(*tasks)


def hold_assign(monkeypatch: Any) -> asyncio.Event:
    """Hold every gateway `assign` transaction back until the returned event is set (the gateway's
    only seats are then the ones it drew): tests fix the order of events with it, not timing."""
    release = asyncio.Event()
    send_assign = Requester._send_assign

    async def held(self: Requester, link: Any, count: int = ASSIGN_BATCH) -> Any:
        await release.wait()
        return await send_assign(self, link, count)

    monkeypatch.setattr(Requester, "_send_assign", held)
    return release


__all__ = ["GatewayRun", "fake_miner", "gateway_on_anvil", "hold_assign"]
