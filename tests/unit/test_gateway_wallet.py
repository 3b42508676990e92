"""The gateway's wallet on /metrics: a supervised balance loop per chain (real anvil), gas by chain."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from eth_account import Account

from node.chain.hub import HubClient
from node.devnet.processes import Anvil
from node.gateway.metrics import GatewayMetrics, watch_wallets
from node.supervise import Supervisor


async def test_wallet_balance_per_chain_from_a_real_node(anvil: Anvil, anvil_keys: list[str]) -> None:
    w3 = HubClient.web3(anvil.rpc_url)
    address = Account.from_key(anvil_keys[8]).address
    link = SimpleNamespace(hub=SimpleNamespace(w3=w3), sender=SimpleNamespace(address=address))
    backend = SimpleNamespace(loops=Supervisor("gateway"), links={31337: link})
    metrics = GatewayMetrics()
    watch_wallets(backend, metrics, interval_s=0.05)
    try:
        assert set(backend.loops.tasks) == {"wallet-31337"}
        want = float(await w3.eth.get_balance(address))
        for _ in range(200):  # the loop's first read lands within a few event-loop turns
            got = metrics.registry.get_sample_value("inferd_gateway_wallet_wei", {"chain_id": "31337"})
            if got:
                break
            await asyncio.sleep(0.05)
        assert got == want and want > 0
    finally:
        await backend.loops.close()
    text = metrics.render().decode()
    assert 'inferd_build_info{python="' in text


def test_fake_backends_get_no_wallet_loops_and_gas_is_by_chain() -> None:
    metrics = GatewayMetrics()
    watch_wallets(SimpleNamespace(), metrics)  # a test backend without chain links: nothing to watch
    metrics.gas_spent.labels(chain_id="1").inc(21_000 * 10**9)
    assert metrics.registry.get_sample_value("inferd_gateway_gas_spent_wei_total", {"chain_id": "1"}) == 21e12
