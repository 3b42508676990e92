"""Money you can see: the miner's wallet, stake, credits, fees, slashes and gas on `/metrics`.

An operator's first questions are money questions (is the key funded for gas? is the stake above
the model's minimum, am I still assigned work? what did I earn, what did gas cost, was I
slashed?), and the alerts in deploy/alerts.yml ask them every minute. The answers come from the
parts of the hub that every protocol version keeps, `getMiner(address)` (stake, credits, active,
model) and the chain itself (the key's balance, the head block), plus the receipts of the miner's
own transactions for gas (`receipt_fee_wei`, called by the submitter).

Fees earned and slashes are derived from two consecutive reads, so nothing depends on the hub's
event layout:

- fees earned = increases of `credits` (withdraw() only ever lowers them; a fee credited and
  withdrawn between two reads, `interval_s` apart, is not seen);
- a slash = a decrease of `stake` while the miner stays registered to the same model
  (`withdrawStake` unregisters, `addStake` only raises it).

The counters start at 0 with the process (Prometheus' `increase()` handles restarts); the first read
is the baseline. `refresh_money` is one of the daemon's supervised loops: an RPC error is logged,
counted (`inferd_miner_rpc_errors_total{component="money"}`) and retried at the next interval,
never raised. The same loop samples the engine's liveness (`inferd_miner_engine_up`), which needs
no RPC. `watch_balance` is the wallet-only loop the gateway runs per chain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from node.log import get_logger
from node.miner.metrics import MinerMetrics
from node.supervise import describe

log = get_logger("inferd.miner.money")
DEFAULT_INTERVAL_S = 15.0
Sleep = Callable[[float], Awaitable[Any]]


class MinerView(Protocol):
    """What `getMiner(address)` returns, as far as money goes (`node.chain.hub.MinerInfo`)."""

    @property
    def model_id(self) -> bytes | None: ...
    @property
    def stake(self) -> int: ...
    @property
    def credits(self) -> int: ...
    @property
    def active(self) -> bool: ...


@dataclass(frozen=True)
class MoneySnapshot:
    """One read of the miner's money (wei)."""

    balance: int
    stake: int
    credits: int
    active: bool
    model_id: bytes | None
    head: int
    min_stake: int | None = None  # None: the model's minimum could not be read


def receipt_fee_wei(receipt: Any) -> int:
    """Wei a mined transaction cost its sender: gasUsed × effectiveGasPrice (0 when unknown)."""
    try:
        return int(receipt.get("gasUsed", 0)) * int(receipt.get("effectiveGasPrice", 0))
    except (AttributeError, TypeError, ValueError):
        return 0


def engine_alive(engine: object | None) -> bool:
    """The engine's own `alive` flag (node.engine.Engine); an engine without one counts as up."""
    alive = getattr(engine, "alive", True)
    return bool(alive() if callable(alive) else alive)


class MoneyTracker:
    """Turns consecutive snapshots into the gauges and counters of `MinerMetrics`."""

    def __init__(self, metrics: MinerMetrics) -> None:
        self.metrics = metrics
        self.last: MoneySnapshot | None = None

    def observe(self, snap: MoneySnapshot, now: float | None = None) -> None:
        m = self.metrics
        m.wallet_wei.set(snap.balance)
        m.stake_wei.set(snap.stake)
        m.credits_wei.set(snap.credits)
        m.active.set(1 if snap.active else 0)
        m.registered.set(1 if snap.model_id is not None else 0)
        m.chain_head.set(snap.head)
        if snap.min_stake is not None:
            m.min_stake_wei.set(snap.min_stake)
        prev = self.last
        if prev is not None:
            if snap.credits > prev.credits:
                m.fees_earned_wei.inc(snap.credits - prev.credits)
            if snap.stake < prev.stake and snap.model_id is not None and snap.model_id == prev.model_id:
                taken = prev.stake - snap.stake
                m.slashed_wei.inc(taken)
                m.slashes.inc()
                log.warning("stake_slashed", taken_wei=taken, stake_wei=snap.stake, head=snap.head)
        m.money_refreshed.set(time.time() if now is None else now)
        self.last = snap


async def read_money(hub: Any, address: str) -> MoneySnapshot:
    """One read: balance and head from the chain, the miner's row from the hub.

    `hub` is a `node.chain.hub.HubClient` (`w3`, `get_miner`, `get_model`). The model's minimum
    stake is optional: a failure to read it (another protocol version's `getModel`) leaves it None.
    """
    balance = int(await hub.w3.eth.get_balance(address))
    head = int(await hub.w3.eth.block_number)
    info: MinerView = await hub.get_miner(address)
    min_stake: int | None = None
    if info.model_id is not None:
        try:
            min_stake = int((await hub.get_model(info.model_id)).min_stake)
        except Exception as exc:
            log.debug("min_stake_unreadable", error=describe(exc))
    return MoneySnapshot(
        balance=balance,
        stake=int(info.stake),
        credits=int(info.credits),
        active=bool(info.active),
        model_id=info.model_id,
        head=head,
        min_stake=min_stake,
    )


async def refresh_money(
    hub: Any,
    address: str,
    metrics: MinerMetrics,
    *,
    engine: object | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    sleep: Sleep = asyncio.sleep,
    rounds: int | None = None,
) -> None:
    """Refresh the money gauges (and `inferd_miner_engine_up`) every `interval_s`, forever.

    Meant for `Supervisor.spawn("money", functools.partial(refresh_money, hub, address, metrics,
    engine=engine))`. `rounds` stops after that many reads (tests).
    """
    tracker = MoneyTracker(metrics)
    failing = False
    done = 0
    while rounds is None or done < rounds:
        metrics.engine_up.set(1 if engine_alive(engine) else 0)
        try:
            snap = await read_money(hub, address)
        except Exception as exc:
            metrics.rpc_errors.labels("money").inc()
            if not failing:  # one line per outage, not one per interval
                log.warning("money_refresh_failed", error=describe(exc), retry_every_s=interval_s)
            failing = True
        else:
            if failing:
                log.info("money_refresh_recovered")
            failing = False
            tracker.observe(snap)
        done += 1
        if rounds is None or done < rounds:
            await sleep(interval_s)


async def watch_balance(
    w3: Any,
    address: str,
    on_balance: Callable[[int], None],
    *,
    on_error: Callable[[BaseException], None] | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    sleep: Sleep = asyncio.sleep,
    rounds: int | None = None,
) -> None:
    """Report `address`'s balance (wei) to `on_balance` every `interval_s`; errors go to `on_error`."""
    done = 0
    while rounds is None or done < rounds:
        try:
            on_balance(int(await w3.eth.get_balance(address)))
        except Exception as exc:
            if on_error is not None:
                on_error(exc)
        done += 1
        if rounds is None or done < rounds:
            await sleep(interval_s)


__all__ = [
    "DEFAULT_INTERVAL_S",
    "MinerView",
    "MoneySnapshot",
    "MoneyTracker",
    "engine_alive",
    "read_money",
    "receipt_fee_wei",
    "refresh_money",
    "watch_balance",
]
