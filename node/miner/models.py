"""Several models on one box: one engine and one `MinerDaemon` per `[[miner.models]]` entry.

The hub registers an address for exactly one model, so serving several models means several keys,
and each key is its own daemon (own journal, sender nonce, watcher, MQTT topic) exactly as when it
runs alone: nothing in `node.miner.daemon` knows it has neighbours. What the daemons share is what
costs to duplicate and carries no per-key state: the content store, the process (one event loop,
one signal), and one `/metrics` + `/healthz` server.

Metrics: each daemon keeps its own registry (as in tests that run several daemons); `/metrics`
serves them merged, every series with a `model="<entry name>"` label, then the default registry
once (vLLM's engine metrics and the process collectors). `/healthz` is ok when every daemon is, and
shows each one's health under its name with its address.

MQTT: each daemon keeps its own `StreamPublisher` connection (its topics and retained heartbeat are
per miner address); a shared connection would need the publisher to multiplex topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable, Mapping
from typing import Any, cast

from eth_account.signers.local import LocalAccount
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from node.config import Settings, per_model_settings
from node.content.factory import open_store
from node.log import get_logger
from node.miner.daemon import MinerDaemon, MinerStartError
from node.miner.keys import load_account
from node.miner.metrics import MinerMetrics, OpsServer
from node.miner.run import (
    MinerConfigError,
    build_daemon,
    check_fake_engine_chain,
    open_engine,
    required_engine_class,
)

log = get_logger("inferd.miner")


class ModelLabelCollector:
    """Several daemons' registries as one collector: families merged by name, every sample
    labelled `model=<entry name>` (one HELP/TYPE per family, as the exposition format requires)."""

    def __init__(self, registries: Mapping[str, CollectorRegistry]) -> None:
        self.registries = dict(registries)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for model, registry in self.registries.items():
            for family in registry.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                out.samples.extend(s._replace(labels={**s.labels, "model": model}) for s in family.samples)
        return merged.values()


class MergedMetrics:
    """What `/metrics` serves for several daemons (`render()`, like `MinerMetrics`)."""

    def __init__(self, metrics: Mapping[str, MinerMetrics]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ModelLabelCollector({name: m.registry for name, m in metrics.items()}))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry)) + bytes(generate_latest(REGISTRY))


class ModelsRuntime:
    """The daemons of one box, by entry name, their engines' closers and the shared ops server."""

    def __init__(self, settings: Settings, daemons: dict[str, MinerDaemon], closers: list[Any]) -> None:
        self.settings = settings
        self.daemons = daemons
        self._closers = closers
        self.metrics = MergedMetrics({name: d.metrics for name, d in daemons.items()})
        self.ops: OpsServer | None = None

    @classmethod
    async def open(cls, settings: Settings, *, fake_engine: bool = False) -> ModelsRuntime:
        """Load every entry's key (all before any engine), then start each engine and build its daemon.

        Raises `MinerConfigError` for two entries with the same key, an unregistered key or an engine
        of another class than its model's; engines already started are shut down first."""
        per_model = per_model_settings(settings)
        accounts: dict[str, LocalAccount] = {}
        for name, entry in per_model.items():
            accounts[name] = load_account(entry.chain)
            if fake_engine and entry.chain.chain_id is not None:
                check_fake_engine_chain(entry.chain.chain_id, "chain.chain_id in the settings")
        by_address: dict[str, str] = {}
        for name, account in accounts.items():
            other = by_address.setdefault(str(account.address), name)
            if other != name:
                raise MinerConfigError(
                    f"[[miner.models]] {other!r} and {name!r} use the same key {account.address}: the hub "
                    "registers an address for one model, give each entry its own key"
                )
        store = open_store(settings.content, settings.content_path())
        daemons: dict[str, MinerDaemon] = {}
        closers: list[Any] = []
        try:
            for name, entry in per_model.items():
                try:
                    expected = await required_engine_class(entry, accounts[name])
                    engine, close = await open_engine(entry, fake=fake_engine, expected_class=expected)
                except MinerStartError as exc:
                    raise MinerConfigError(f"model {name!r}: {exc}") from exc
                except Exception as exc:
                    if type(exc).__name__ == "EngineClassMismatch":  # node.engine's, without importing vLLM
                        raise MinerConfigError(f"model {name!r}: {exc}") from exc
                    raise
                if close is not None:
                    closers.append(close)
                daemons[name] = await build_daemon(
                    entry, engine, accounts[name], fake_engine=fake_engine, store=store,
                    metrics=MinerMetrics(include_default=False), own_ops_server=False,
                )  # fmt: skip
        except BaseException:
            await _close_all(closers)
            for d in daemons.values():
                d.journal.close()
            raise
        return cls(settings, daemons, closers)

    def health(self) -> dict[str, Any]:
        models = {name: {"miner": d.address, **d.health()} for name, d in self.daemons.items()}
        return {"ok": all(h["ok"] for h in models.values()), "models": models}

    async def run(self, stop: asyncio.Event) -> None:
        """Run every daemon until `stop` is set; a daemon that refuses to start (`MinerStartError`)
        stops the others and raises `MinerConfigError` naming its entry."""
        miner = self.settings.miner
        self.ops = OpsServer(
            cast(MinerMetrics, self.metrics),  # OpsServer only calls render()
            self.health, miner.metrics_host, miner.metrics_port,
        )  # fmt: skip
        await self.ops.start()
        tasks = {asyncio.create_task(d.run(stop), name=f"miner-{n}"): n for n, d in self.daemons.items()}
        failed: tuple[str, BaseException] | None = None
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is not None and failed is None:
                        failed = (tasks[task], exc)
                        stop.set()  # one refused to start: stop the others gracefully
        finally:
            await self.ops.stop()
        if failed is not None:
            name, exc = failed
            if isinstance(exc, MinerStartError):
                raise MinerConfigError(f"model {name!r}: {exc}") from exc
            raise exc

    async def close(self) -> None:
        for d in self.daemons.values():
            d.journal.close()
        await _close_all(self._closers)


async def _close_all(closers: list[Any]) -> None:
    for close in closers:
        result = close()
        if asyncio.iscoroutine(result):
            await result


async def run_models(settings: Settings, *, fake_engine: bool = False) -> None:
    """`inferd miner run` with `[[miner.models]]`: every entry's daemon until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runtime = await ModelsRuntime.open(settings, fake_engine=fake_engine)
    log.info("miner_models", models={name: d.address for name, d in runtime.daemons.items()})
    try:
        await runtime.run(stop)
    finally:
        await runtime.close()


__all__ = ["MergedMetrics", "ModelLabelCollector", "ModelsRuntime", "run_models"]
