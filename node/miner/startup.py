"""Start-up checks: what must hold before a miner takes its first seat.

Apart from the daemon because these are refusals, not policy: each ends the start with a
`MinerStartError` that says what to fix, before any loop runs or anything is journaled. A key that
is not registered for a model has no seats to take; an engine whose class differs from the model's
on-chain `engineClass` would produce outputs that disagree with every other miner's (and be slashed).
An unreachable chain is not a refusal: the daemon waits for it, with backoff, until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from node.chain.hub import HubClient, ModelInfo
from node.log import get_logger
from node.miner.metrics import MinerMetrics

log = get_logger("inferd.miner")


class MinerStartError(RuntimeError):
    """The daemon must not start: not registered, or an engine of another class than the model's."""


def engine_class_id(engine: object) -> bytes | None:
    """The engine's bytes32 class: `engine.engine_class.id` (node.engine) or `engine.engine_class_id`."""
    ec = getattr(engine, "engine_class", None)
    if ec is not None and hasattr(ec, "id"):
        return bytes(ec.id)
    raw = getattr(engine, "engine_class_id", None)
    return bytes(raw) if raw is not None else None


async def wait_for_chain(w3: Any, stop: asyncio.Event, metrics: MinerMetrics) -> int | None:
    """The head block, retrying with backoff while the RPC is unreachable (None: stopped)."""
    delay = 0.5
    while not stop.is_set():
        try:
            return int(await w3.eth.block_number)
        except Exception as exc:
            metrics.rpc_errors.labels("startup").inc()
            log.warning("chain_unreachable", rpc_error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)
    return None


async def registered_model(hub: HubClient, address: str) -> ModelInfo:
    """The model `address` is registered for on `hub`; refuse an unregistered key."""
    info = await hub.get_miner(address)
    if info.model_id is None:
        raise MinerStartError(
            f"{address} is not registered on hub {hub.address}: `inferd miner register --stake AMOUNT` first"
        )
    return await hub.get_model(info.model_id)


def check_engine(engine: object, model: ModelInfo, configured: bytes | None) -> None:
    """Refuse an engine of another class than `model`'s (`configured`: the class when the engine has none)."""
    mine = engine_class_id(engine) or configured
    required = model.engine_class
    if mine is None:
        raise MinerStartError("the engine has no engine class: it cannot be checked against the model's")
    if mine != required:
        ec = getattr(engine, "engine_class", None)
        if ec is not None and hasattr(ec, "text"):
            from node.engine.engine_class import check_engine_class

            try:
                check_engine_class(required, ec)
            except Exception as exc:  # EngineClassMismatch: its message names the class text
                raise MinerStartError(str(exc)) from exc
        raise MinerStartError(
            f"this engine's class 0x{mine.hex()} is not model {model.name!r}'s on-chain engine "
            f"class 0x{required.hex()}: its outputs would not match the other miners' (and be slashed)"
        )
