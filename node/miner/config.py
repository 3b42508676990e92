"""The knobs of one miner daemon, apart from the daemon that reads them.

A plain dataclass with defaults: `node.miner.run` builds it from `Settings`, and tests, benches and
devnets build it by hand; none of them needs the daemon's wiring to say how a miner should behave.
The daemon re-exports it (`node.miner.daemon.DaemonConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DaemonConfig:
    """The knobs of one daemon (built from `Settings` by `node.miner.run`)."""

    chain_id: int
    max_concurrency: int = 64
    batch_max: int = 32
    batch_wait_s: float = 0.5
    confirmations: int = 0
    poll_interval_s: float = 1.0
    log_range_blocks: int = 1000
    gas_margin: float = 1.2
    lookback_blocks: int = 1000
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    grace_s: float = 30.0
    stuck_after_s: float = 30.0
    sweep_interval_s: float = 2.0
    unavailable_margin_blocks: int = 3
    """Commit UNAVAILABLE for an input still unfetchable this many blocks before the commit deadline."""
    recheck_s: float = 5.0
    """How often a seat waiting on other seats (committed, not revealable yet) is re-checked on chain."""
    money_interval_s: float = 15.0
    engine_class: bytes | None = None
    """The engine's class id when the engine does not carry one (`engine.engine_class.id`)."""
    ws_url: str | None = None
    """`chain.ws_url`: new heads pushed over it wake the watcher (`node.chain.heads`); None: poll only."""
    escalate: bool = True
    """`miner.escalate`: challenge (bond minStake) a provisional outcome our revealed seat lost."""
    speculate: bool = True
    """Start a seat at its request's block, drawn off chain (`node.chain.draw`), before
    `InferenceAssigned`; nothing goes on chain before the assignment confirms the seat."""
