"""Build a `MinerDaemon` from `Settings` and run it until SIGTERM/SIGINT (what `inferd miner run` does).

Before the engine loads, the model's on-chain engine class is read and handed to it: an engine of
another class (other weights, build, device family, dtype, ...) refuses to start, as does a key
that is not registered (`MinerStartError`).

`--fake-engine` answers with made-up text that is still signed and submitted: on a real chain that
is a staked miner publishing garbage (and being slashed for it). It runs only on the devnet's chain
id (anvil's 31337); anywhere else `FakeEngineRefused` stops the miner before it loads anything.

A config with `[[miner.models]]` entries runs one daemon per entry in this process instead
(`node.miner.models`: several models on one box, one key each).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from eth_account.signers.local import LocalAccount

from node.chain.hub import HubClient
from node.chain.keepalive import keep_alive
from node.chain.pubkeys import public_key_of
from node.config import Settings
from node.content.factory import open_store
from node.content.store import ContentStore
from node.engine.cores import keep_tree_off_engine
from node.log import get_logger
from node.miner.daemon import DaemonConfig, MinerDaemon, MinerStartError
from node.miner.journal import Journal
from node.miner.keys import load_account
from node.miner.metrics import MinerMetrics
from node.miner.pipeline import EngineLike
from node.miner.private import NO_ENVELOPE_SOURCE, HttpEnvelopeSource
from node.stream.connection import credentials
from node.stream.publisher import StreamPublisher

log = get_logger("inferd.miner")


DEVNET_CHAIN_ID = 31337
"""anvil's default chain id, the one `inferd devnet up` runs: the only chain a fake engine serves."""


class MinerConfigError(RuntimeError):
    """Settings that cannot start a miner (no hub address, wrong chain id, ...)."""


class FakeEngineRefused(MinerConfigError):
    """`--fake-engine` on a chain other than the devnet's."""

    def __init__(self, chain_id: int, where: str) -> None:
        super().__init__(
            f"--fake-engine refuses chain id {chain_id} ({where}): the fake engine's outputs are made up, "
            f"so it only serves the devnet's chain {DEVNET_CHAIN_ID}"
        )
        self.chain_id = chain_id


def check_fake_engine_chain(chain_id: int, where: str) -> None:
    """Raise `FakeEngineRefused` unless `chain_id` is the devnet's."""
    if chain_id != DEVNET_CHAIN_ID:
        raise FakeEngineRefused(chain_id, where)


async def open_engine(
    settings: Settings, fake: bool = False, expected_class: bytes | None = None
) -> tuple[EngineLike, Any]:
    """The engine (and a closer). `fake` uses the deterministic FakeEngine (devnet without vLLM).

    `expected_class`: the model's on-chain engine class; a real engine of another class raises
    `EngineClassMismatch` before vLLM loads anything.
    """
    if fake:
        from node.miner.testing import FakeEngine

        return FakeEngine(model_name=settings.engine.model), None
    from node.engine.engine import Engine  # heavy: vLLM

    engine = await Engine.start(settings.engine, expected_class=expected_class)
    cpus, moved = keep_tree_off_engine()  # on a CPU engine: our own work off its workers' cores
    if cpus:
        log.info("host_work_moved_off_engine_cores", engine_cores=sorted(cpus), threads=moved)
    return engine, engine.shutdown


async def required_engine_class(settings: Settings, account: LocalAccount) -> bytes | None:
    """The engine class of the model this key is registered for, read before the engine starts.

    None when the chain cannot be read yet (the daemon checks again once it is reachable).
    Raises `MinerStartError` when the key is not registered.
    """
    chain = settings.chain
    if not chain.hub_address:
        raise MinerConfigError("chain.hub_address is not set: pass the deployed InferenceHub address")
    hub = HubClient(HubClient.web3(chain.rpc_url, timeout=chain.rpc_timeout_s), chain.hub_address)
    try:
        info = await hub.get_miner(str(account.address))
        if info.model_id is None:
            raise MinerStartError(
                f"{account.address} is not registered on hub {hub.address}: "
                "`inferd miner register --stake AMOUNT` first"
            )
        return (await hub.get_model(info.model_id)).engine_class
    except MinerStartError:
        raise
    except Exception as exc:
        log.warning("engine_class_unread", error=f"{type(exc).__name__}: {exc}", note="checked at start")
        return None


async def build_daemon(
    settings: Settings,
    engine: EngineLike,
    account: LocalAccount | None = None,
    *,
    fake_engine: bool = False,
    store: ContentStore | None = None,
    metrics: MinerMetrics | None = None,
    own_ops_server: bool = True,
) -> MinerDaemon:
    """One daemon from `settings`. Several models per box (`node.miner.models`) pass the shared
    `store`, a per-daemon `metrics` without the default registry, and `own_ops_server=False`: one
    `/metrics` + `/healthz` server serves them all."""
    chain = settings.chain
    if not chain.hub_address:
        raise MinerConfigError("chain.hub_address is not set: pass the deployed InferenceHub address")
    account = account or load_account(chain)
    w3 = HubClient.web3(chain.rpc_url, timeout=chain.rpc_timeout_s)
    await keep_alive(w3)  # one TCP connection per call otherwise (node.chain.keepalive)
    hub = HubClient(w3, chain.hub_address, "0x" + bytes(account.key).hex(), gas_margin=chain.gas_margin)
    chain_id = int(await w3.eth.chain_id)
    if chain.chain_id is not None and chain.chain_id != chain_id:
        raise MinerConfigError(
            f"chain.chain_id is {chain.chain_id} but {chain.rpc_url} serves chain {chain_id}"
        )
    if fake_engine:
        check_fake_engine_chain(chain_id, f"served by {chain.rpc_url}")
    miner = settings.miner
    config = DaemonConfig(
        chain_id=chain_id,
        max_concurrency=miner.max_concurrency,
        batch_max=miner.batch_max,
        batch_wait_s=miner.batch_wait_s,
        confirmations=chain.confirmations,
        poll_interval_s=chain.poll_interval_s,
        ws_url=chain.ws_url,
        log_range_blocks=chain.log_range_blocks,
        gas_margin=chain.gas_margin,
        metrics_host=miner.metrics_host,
        metrics_port=miner.metrics_port if own_ops_server else None,
        escalate=miner.escalate,
        speculate=miner.speculate,
    )
    journal = Journal(settings.journal_path(), scope=f"{chain_id}:{hub.address}:{account.address}")
    store = open_store(settings.content, settings.content_path()) if store is None else store
    publisher = None
    if settings.stream.enabled:
        publisher = StreamPublisher(
            settings.stream.broker_url,
            chain_id=chain_id,
            hub=hub.address,
            miner=str(account.address),
            heartbeat=lambda: {},
            heartbeat_s=settings.stream.heartbeat_s,
            **credentials(settings.stream),
        )
    daemon = MinerDaemon(
        config=config,
        hub=hub,
        account=account,
        engine=engine,
        store=store,
        journal=journal,
        publisher=publisher,
        metrics=metrics,
    )
    envelope_urls = list(miner.envelope_urls) or list(settings.content.gateway_urls)
    if envelope_urls:  # private inputs (issue 16): sealed envelopes from the requesters' gateways
        daemon.pipeline.envelopes = HttpEnvelopeSource(envelope_urls, max_connections=miner.max_concurrency)
    else:  # gateways are private by default: their inputs exist only as envelopes they serve
        log.warning("private_inputs_unreadable", reason=NO_ENVELOPE_SOURCE)
    if publisher is not None:
        public_key = public_key_of(bytes(account.key)).hex()  # self-authenticating (node.chain.pubkeys)
        publisher.heartbeat = lambda: {**daemon.heartbeat(), "public_key": public_key}
    return daemon


async def run_miner(settings: Settings, *, fake_engine: bool = False) -> None:
    """Run the miner until SIGTERM or SIGINT; in-flight work is finished or left journaled.

    With `[[miner.models]]` entries, one daemon per entry in this process (`node.miner.models`)."""
    if settings.miner.models:
        from node.miner.models import run_models

        await run_models(settings, fake_engine=fake_engine)
        return
    account = load_account(settings.chain)  # fail fast on a bad key, before loading the model
    if fake_engine and settings.chain.chain_id is not None:
        check_fake_engine_chain(settings.chain.chain_id, "chain.chain_id in the settings")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        expected = await required_engine_class(settings, account)
        engine, close = await open_engine(settings, fake=fake_engine, expected_class=expected)
    except MinerStartError as exc:
        raise MinerConfigError(str(exc)) from exc
    except Exception as exc:
        if type(exc).__name__ == "EngineClassMismatch":  # node.engine's, without importing vLLM here
            raise MinerConfigError(str(exc)) from exc
        raise
    try:
        daemon = await build_daemon(settings, engine, account, fake_engine=fake_engine)
        try:
            await daemon.run(stop)
        except MinerStartError as exc:
            raise MinerConfigError(str(exc)) from exc
        daemon.journal.close()
    finally:
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result


__all__ = [
    "DEVNET_CHAIN_ID",
    "FakeEngineRefused",
    "MinerConfigError",
    "build_daemon",
    "check_fake_engine_chain",
    "open_engine",
    "required_engine_class",
    "run_miner",
]
