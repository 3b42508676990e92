"""The miner's money on /metrics: wallet, stake, credits, fees earned, slashes, gas, engine liveness.

`MoneyTracker` is fed snapshots directly; `refresh_money` runs against a stand-in hub (the hub's ABI
is being rewritten) and `watch_balance` against a real anvil (a balance needs no contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from prometheus_client import REGISTRY

from node.chain.hub import HubClient
from node.devnet.processes import Anvil
from node.miner.metrics import MinerMetrics
from node.miner.money import (
    MoneySnapshot,
    MoneyTracker,
    engine_alive,
    receipt_fee_wei,
    refresh_money,
    watch_balance,
)

MID = b"\x01" * 32
ETH = 10**18


def value(metrics: MinerMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    got = metrics.registry.get_sample_value(name, labels or {})
    assert got is not None, name
    return got


def snap(**kw: Any) -> MoneySnapshot:
    base: dict[str, Any] = dict(
        balance=2 * ETH, stake=ETH, credits=0, active=True, model_id=MID, head=100, min_stake=ETH
    )
    return MoneySnapshot(**(base | kw))


def test_tracker_counts_fees_and_slashes_from_consecutive_reads() -> None:
    m = MinerMetrics(include_default=False)
    t = MoneyTracker(m)
    t.observe(snap(credits=5), now=1000.0)  # baseline: nothing earned yet
    assert value(m, "inferd_miner_fees_earned_wei_total") == 0
    t.observe(snap(credits=25))  # +20 fees
    t.observe(snap(credits=0))  # withdraw(): not negative earnings
    t.observe(snap(credits=7))  # +7
    assert value(m, "inferd_miner_fees_earned_wei_total") == 27
    assert value(m, "inferd_miner_credits_wei") == 7

    t.observe(snap(stake=ETH - 10**17, active=False, credits=7))  # slashed below the minimum
    assert value(m, "inferd_miner_slashed_wei_total") == 10**17
    assert value(m, "inferd_miner_slashes_total") == 1
    assert value(m, "inferd_miner_active") == 0
    assert value(m, "inferd_miner_stake_wei") == ETH - 10**17
    t.observe(snap(stake=2 * ETH, credits=7))  # add-stake: not a slash
    t.observe(snap(stake=0, model_id=None, active=False, credits=7))  # withdrawStake: not a slash
    assert value(m, "inferd_miner_slashes_total") == 1
    assert value(m, "inferd_miner_registered") == 0
    assert value(m, "inferd_miner_wallet_wei") == 2 * ETH
    assert value(m, "inferd_miner_min_stake_wei") == ETH
    assert value(m, "inferd_miner_chain_head") == 100
    assert value(m, "inferd_miner_money_refreshed_timestamp_seconds") > 1000.0


@dataclass(frozen=True)
class Row:
    model_id: bytes | None
    stake: int
    credits: int
    active: bool


class FakeEth:
    def __init__(self) -> None:
        self.balance = 3 * ETH
        self.down = False

    async def get_balance(self, address: str) -> int:
        if self.down:
            raise OSError("connection refused")
        return self.balance

    @property
    def block_number(self) -> Any:
        async def head() -> int:
            return 7

        return head()


class FakeHub:
    def __init__(self) -> None:
        self.eth = FakeEth()
        self.w3 = self
        self.credits = 0
        self.model_broken = False

    async def get_miner(self, address: str) -> Row:
        return Row(MID, 5 * ETH, self.credits, True)

    async def get_model(self, mid: bytes) -> Any:
        if self.model_broken:
            raise ValueError("another protocol version's getModel")

        @dataclass
        class M:
            min_stake: int

        return M(4 * ETH)


class Engine:
    alive = True


async def test_refresh_money_survives_rpc_errors_and_samples_the_engine() -> None:
    hub, m, engine = FakeHub(), MinerMetrics(include_default=False), Engine()
    reads: list[float] = []

    async def tick(_s: float) -> None:  # the "sleep" between reads: change the world
        reads.append(_s)
        if len(reads) == 1:
            hub.credits = 3 * 10**15  # a fee was credited
        elif len(reads) == 2:
            hub.eth.down = True  # the RPC goes away
            engine.alive = False
        elif len(reads) == 3:
            hub.eth.down = False
            hub.model_broken = True

    await refresh_money(hub, "0x" + "11" * 20, m, engine=engine, interval_s=15.0, sleep=tick, rounds=4)
    assert reads == [15.0, 15.0, 15.0]
    assert value(m, "inferd_miner_fees_earned_wei_total") == 3 * 10**15
    assert value(m, "inferd_miner_rpc_errors_total", {"component": "money"}) == 1
    assert value(m, "inferd_miner_wallet_wei") == 3 * ETH
    assert value(m, "inferd_miner_stake_wei") == 5 * ETH
    assert value(m, "inferd_miner_min_stake_wei") == 4 * ETH  # kept from the read that worked
    assert value(m, "inferd_miner_engine_up") == 0


def test_engine_alive_and_receipt_fee() -> None:
    assert engine_alive(None) and engine_alive(object())  # fakes without the flag count as up
    assert not engine_alive(type("Dead", (), {"alive": False})())
    assert receipt_fee_wei({"gasUsed": 21_000, "effectiveGasPrice": 3 * 10**9}) == 63 * 10**12
    assert receipt_fee_wei({"gasUsed": 21_000}) == 0
    assert receipt_fee_wei(None) == 0


def test_metrics_page_has_build_info_and_the_default_registry() -> None:
    text = MinerMetrics().render().decode()
    assert 'inferd_build_info{python="' in text and 'vllm="' in text
    # vLLM's PrometheusStatLogger registers on the default registry, which the miner serves too.
    assert REGISTRY.get_sample_value("process_start_time_seconds") is not None
    assert "python_info{" in text
    assert "python_info{" not in MinerMetrics(include_default=False).render().decode()


async def test_watch_balance_on_real_anvil(anvil: Anvil, anvil_keys: list[str]) -> None:
    w3 = HubClient.web3(anvil.rpc_url)
    address = Account.from_key(anvil_keys[9]).address
    seen: list[int] = []
    errors: list[BaseException] = []
    await watch_balance(w3, address, seen.append, on_error=errors.append, rounds=1)
    assert errors == [] and seen == [int(await w3.eth.get_balance(address))] and seen[0] > 0
    dead = HubClient.web3("http://127.0.0.1:9/")  # nothing listens on the discard port
    await watch_balance(dead, address, seen.append, on_error=errors.append, rounds=1)
    assert len(seen) == 1 and len(errors) == 1
