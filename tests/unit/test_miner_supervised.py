"""The miner daemon under its loop supervisor, on real anvil (and mosquitto) with the fake engine:

- a chain event whose handler raises is skipped and counted, and the watcher keeps following:
  a later request is still answered and finalized;
- the watcher loop crashing outright is restarted; the batch it was handling is re-read (the cursor
  had not moved), so no request is lost;
- the MQTT publisher's task dying is noticed and the publisher started afresh;
- `/healthz` and `/metrics` show the loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from node.chain.events import InferenceRequested
from node.chain.hub import HubClient
from node.content.documents import ChatInputDocument, ChatParams, UserMessage, to_canonical_bytes
from node.content.local import LocalStore
from node.devnet.processes import Anvil, Mosquitto, free_port
from node.engine.engine import EngineError
from node.miner.daemon import DaemonConfig, MinerDaemon
from node.miner.journal import JobState, Journal
from node.miner.testing import DevHub, FakeEngine, deploy_dev_hub, dev_request, local_daemon
from node.supervise import LoopState

pytestmark = pytest.mark.timeout(180)


def chat_doc(i: int) -> bytes:
    doc = ChatInputDocument(
        model="fake-model",
        messages=[UserMessage(role="user", content=f"supervised question {i}")],
        params=ChatParams(max_tokens=4, seed=i),
    )
    return to_canonical_bytes(doc)


class Env:
    def __init__(
        self, anvil: Anvil, hub: DevHub, miner_key: str, requester: HubClient, data_dir: Path
    ) -> None:
        self.anvil, self.hub, self.miner_key, self.requester = anvil, hub, miner_key, requester
        self.data_dir = data_dir
        self.store = LocalStore(data_dir / "blocks")

    async def request(self, i: int) -> int:
        data = chat_doc(i)
        await self.store.put(data)
        return await dev_request(self.requester, self.hub.model, data)

    def config(self) -> DaemonConfig:
        return DaemonConfig(
            chain_id=31337, poll_interval_s=0.1, batch_wait_s=0.1, sweep_interval_s=0.5,
            metrics_port=free_port(),
        )  # fmt: skip

    def daemon(self) -> MinerDaemon:
        account = Account.from_key(self.miner_key)
        hub = HubClient(HubClient.web3(self.anvil.rpc_url), self.hub.owner.address, self.miner_key)
        journal = Journal(self.data_dir / "journal.sqlite", scope=f"31337:{hub.address}:{account.address}")
        return MinerDaemon(
            config=self.config(), hub=hub, account=account, engine=FakeEngine(), store=self.store,
            journal=journal,
        )  # fmt: skip


@pytest.fixture()
async def env(anvil: Anvil, anvil_keys: list[str], data_dir: Path) -> AsyncIterator[Env]:
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[3]], timeout_blocks=200)
    yield Env(anvil, hub, anvil_keys[3], HubClient(hub.owner.w3, hub.owner.address, anvil_keys[4]), data_dir)


async def running(daemon: MinerDaemon, until: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:  # noqa: ASYNC109
    """Run the daemon until `until()` holds (the daemon must not stop by itself meanwhile)."""
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not await until():
                assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


def finalized(daemon: MinerDaemon, rid: int) -> bool:
    job = daemon.journal.get(rid)
    return job is not None and job.state == JobState.FINALIZED


async def test_a_poisoned_event_is_skipped_and_the_watcher_keeps_following(env: Env) -> None:
    daemon = env.daemon()
    original = daemon._on_event
    poisoned: list[int] = []

    def on_event(ev: Any, timestamps: dict[int, int]) -> None:
        if isinstance(ev, InferenceRequested) and not poisoned:
            poisoned.append(ev.id)
            raise ValueError("a handler bug triggered by one event")
        original(ev, timestamps)

    daemon._on_event = on_event  # type: ignore[method-assign]
    first = await env.request(1)
    later: list[int] = []
    seen: dict[str, Any] = {}

    async def later_request_finalized() -> bool:
        if poisoned and not later:
            later.append(await env.request(2))
        if not later or not finalized(daemon, later[0]):
            return False
        assert daemon.ops is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.ops.port}") as client:
            seen["health"] = (await client.get("/healthz")).json()
            seen["metrics"] = (await client.get("/metrics")).text
        return True

    await running(daemon, later_request_finalized)
    assert poisoned == [first]
    watcher = daemon.loops.loops["watcher"]
    assert watcher.event_errors == 1 and watcher.last_error == "ValueError" and watcher.restarts == 0
    health = seen["health"]
    assert health["ok"] is True and health["loops"]["watcher"]["event_errors"] == 1
    assert {"watcher", "sweeper", "submitter"} <= set(health["loops"])
    assert 'inferd_miner_loop_event_errors_total{loop="watcher"} 1.0' in seen["metrics"]
    assert 'inferd_miner_loop_up{loop="watcher"} 1.0' in seen["metrics"]


async def test_a_crashed_watcher_is_restarted_and_loses_no_request(env: Env) -> None:
    daemon = env.daemon()
    original = daemon._handle_batch
    crashes: list[int] = []

    def handle_batch(batch: Any) -> None:
        if batch.events and not crashes:
            crashes.append(batch.to_block)
            raise RuntimeError("the watcher loop itself dies")
        original(batch)

    daemon._handle_batch = handle_batch  # type: ignore[method-assign]
    ids = [await env.request(10 + i) for i in range(3)]

    async def all_final() -> bool:
        return all(finalized(daemon, rid) for rid in ids)

    await running(daemon, all_final)
    assert len(crashes) == 1
    watcher = daemon.loops.loops["watcher"]
    assert watcher.restarts == 1 and watcher.last_error == "RuntimeError"
    assert watcher.state == LoopState.DOWN  # after shutdown


async def test_a_dead_publisher_task_is_started_again(
    env: Env, mosquitto: Mosquitto, anvil_keys: list[str]
) -> None:
    hub = HubClient(HubClient.web3(env.anvil.rpc_url), env.hub.owner.address, env.miner_key)
    daemon = local_daemon(
        hub=hub, miner_key=env.miner_key, engine=FakeEngine(), store=env.store,
        journal_path=env.data_dir / "journal-pub.sqlite", broker_url=mosquitto.url, config=env.config(),
    )  # fmt: skip
    publisher = daemon.publisher
    assert publisher is not None
    killed: list[asyncio.Task[None]] = []

    async def restarted_and_connected() -> bool:
        task = publisher._task
        if not killed:
            if task is not None and publisher.stats.connected:
                task.cancel()  # the publisher's own task dies under it
                killed.append(task)
            return False
        return daemon.loops.loops["publisher"].restarts == 1 and publisher.stats.connected

    await running(daemon, restarted_and_connected)
    assert publisher.stats.connects >= 2
    assert daemon.loops.loops["publisher"].last_error == "LoopEnded"


class CrashOnceEngine(FakeEngine):
    """Raises on the first attempt at each request: a bug that one retry gets past."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed: set[int] = set()

    async def stream(self, input_doc: Any, *, request_id: int, input_cid: str, created: int) -> Any:
        if request_id not in self.crashed:
            self.crashed.add(request_id)
            raise EngineError("engine hiccup on this job")
        async for item in super().stream(
            input_doc, request_id=request_id, input_cid=input_cid, created=created
        ):
            yield item

    async def generate(self, input_doc: Any, *, request_id: int, input_cid: str, created: int) -> Any:
        if request_id not in self.crashed:
            self.crashed.add(request_id)
            raise EngineError("engine hiccup on this job")
        return await super().generate(input_doc, request_id=request_id, input_cid=input_cid, created=created)


async def test_a_crashing_job_is_retried_alone_and_other_jobs_go_on(env: Env) -> None:
    daemon = env.daemon()
    daemon.engine = daemon.pipeline.engine = CrashOnceEngine()
    ids = [await env.request(20 + i) for i in range(2)]

    async def all_final() -> bool:
        return all(finalized(daemon, rid) for rid in ids)

    await running(daemon, all_final)
    assert daemon.metrics.job_crashes._value.get() == 2
    assert all(s.restarts == 0 and s.event_errors == 0 for s in daemon.loops.loops.values())
