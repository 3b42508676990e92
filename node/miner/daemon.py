"""The miner daemon: watch → journal → fetch → infer → upload → commit → reveal → confirm.

Wiring and policy live here; each step is its own module (watcher, journal, pipeline, submitter,
stream publisher, metrics, money). Crash safety comes from the journal: on start every unfinished
job is resumed from its last durable state (`node.miner.resume`), and the submitter checks the
chain before sending anything, so a commit and a reveal are each broadcast once. Graceful shutdown
(SIGTERM): stop taking jobs, give in-flight work `grace_s` to finish, leave the rest journaled for
the next start.

What each hub event does to our jobs (which events seat us, speculative seats drawn off chain
before `InferenceAssigned`, closing a seat we lost, re-checking after a reorg) is
`node.miner.seats`; the daemon feeds it the watcher's batches and our own receipts, and produces
the jobs it schedules. An input still unfetchable `unavailable_margin_blocks` before the commit
deadline is committed and revealed as `UNAVAILABLE` rather than left silent (the sweeper).

Disputes live in `node.miner.disputes`: escalating a provisional outcome our seat lost
(`InferenceResolved` for another digest than ours; `miner.escalate`), voting on others' escalations
(`EscalationOpened` on our model where we hold no seat), and the sweeper's `timeoutMany` for
requests we are owed money on (a phase deadline passed).

Start-up refuses an unregistered key and an engine whose class differs from the model's on-chain
`engineClass` (`node.miner.startup`).

Nothing dies of one task: every long-lived loop (watcher, sweeper, submitter, MQTT publisher) runs
under a `node.supervise.Supervisor`. An event whose handling raises is logged, counted and skipped;
a loop that crashes is restarted with backoff while the others go on, and `/healthz` says which
loop is not up. Only a stop signal ends the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

from eth_account.signers.local import LocalAccount

from node import __version__
from node.chain.draw import SeatDraw
from node.chain.hub import MAX_BATCH, HubClient, ModelInfo
from node.chain.keepalive import close as close_rpc
from node.chain.sender import TxSender
from node.chain.watcher import LogBatch, LogFollower, Reorg
from node.content.errors import InputUnavailable
from node.content.store import ContentStore
from node.log import bound, get_logger
from node.miner.config import DaemonConfig
from node.miner.disputes import Disputes
from node.miner.hubview import HubView, MinerEvent
from node.miner.journal import TERMINAL, UNFINISHED, Job, JobState, Journal
from node.miner.metrics import MinerMetrics, OpsServer
from node.miner.money import refresh_money
from node.miner.pipeline import EngineLike, Pipeline
from node.miner.resume import Resume
from node.miner.seats import Seats
from node.miner.startup import (
    MinerStartError,
    check_engine,
    engine_class_id,
    registered_model,
    wait_for_chain,
)
from node.miner.submitter import Submitter
from node.stream.publisher import StreamPublisher
from node.supervise import Supervisor, describe, wait_task

log = get_logger("inferd.miner")

BATCH_RECORD_TTL_S = 7 * 24 * 3600.0
"""How long a batch root's record is kept: far past any reveal window (timeoutBlocks after commit)."""


def _lean_middleware(w3: Any) -> None:
    """Drop web3 middleware that costs CPU on every call and buys the miner nothing.

    `validation` asks the node for its chain id on each transaction-shaped call and `ens_name_to_address`
    inspects every argument for ENS names; the miner signs locally with an explicit chainId and only
    uses hex addresses. On a 2-core box every millisecond here is taken from inference.
    """
    for name in ("validation", "ens_name_to_address"):
        with contextlib.suppress(Exception):
            w3.middleware_onion.remove(name)


class MinerDaemon:
    """One miner: one key, one hub, one engine, one journal."""

    def __init__(
        self,
        *,
        config: DaemonConfig,
        hub: HubClient,
        account: LocalAccount,
        engine: EngineLike,
        store: ContentStore,
        journal: Journal,
        publisher: StreamPublisher | None = None,
        metrics: MinerMetrics | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        _lean_middleware(hub.w3)
        self.view = HubView(hub)
        self.account = account
        self.address = str(account.address)
        self.engine = engine
        self.store = store
        self.journal = journal
        self.publisher = publisher
        self.metrics = metrics or MinerMetrics()
        self.loops = Supervisor("miner")
        self.metrics.track_loops(self.loops)
        self.metrics.track_heads(lambda: {config.chain_id: self.follower.heads if self.follower else None})
        self.sender = TxSender(
            hub.w3, account, chain_id=config.chain_id, gas_margin=config.gas_margin,
            stuck_after_s=config.stuck_after_s,
        )  # fmt: skip
        self.pipeline = Pipeline(
            engine=engine,
            store=store,
            private_key="0x" + bytes(account.key).hex(),
            chain_id=config.chain_id,
            hub=hub.address,
        )
        self.submitter = Submitter(
            journal=journal,
            hub=self.view,
            sender=self.sender,
            miner=self.address,
            metrics=self.metrics,
            batch_max=min(config.batch_max, MAX_BATCH),
            batch_wait_s=config.batch_wait_s,
            busy=lambda: len(self._running),  # results about to be ready: worth waiting for
            redundancy=lambda: self.model.redundancy if self.model is not None else None,
            audit_bps=lambda: self.model.audit_bps if self.model is not None else None,
            head=lambda: self._head,
        )
        self.follower: LogFollower[MinerEvent] | None = None
        self.ops: OpsServer | None = None
        self._sem = asyncio.Semaphore(config.max_concurrency)
        self._producing: dict[int, asyncio.Task[None]] = {}
        self._running: set[int] = set()  # jobs in the engine or uploading (holding `_sem`)
        self._job_crashes: dict[int, int] = {}
        self._accepting = True
        self._unfetched: set[int] = set()  # request ids whose input could not be fetched (yet)
        self._last_recheck = 0.0
        self.model: ModelInfo | None = None
        self._head = 0
        self._started_at = time.time()
        self._last_chain_ok = 0.0
        self.ready = asyncio.Event()
        self.disputes = Disputes(self)
        self.draw = SeatDraw(hub)
        self.seats = Seats(
            address=self.address, journal=journal, submitter=self.submitter, disputes=self.disputes,
            draw=self.draw, metrics=self.metrics, loops=self.loops, speculate=config.speculate,
            confirmations=config.confirmations, schedule=self.schedule, cancel=self._cancel,
            accepting=lambda: self._accepting, head=lambda: self._head, model=lambda: self.model,
        )  # fmt: skip

    # ------------------------------------------------------------------ status

    @property
    def head(self) -> int:
        """The latest block number seen (watcher batches, sweeper polls)."""
        return self._head

    def heartbeat(self) -> dict[str, Any]:
        return {
            "miner": self.address,
            "model": self.engine.model_name,
            "capacity": self.config.max_concurrency,
            "in_flight": len(self._producing),
            "queued_submissions": self.submitter.pending,
            "version": __version__,
            "fingerprint": self.engine.system_fingerprint,
            "cluster": getattr(self.engine, "cluster", {}),
            "ts": int(time.time()),
        }

    def health(self) -> dict[str, Any]:
        stats = self.follower.stats if self.follower else None
        chain_ok = time.time() - self._last_chain_ok < max(30.0, 10 * self.config.poll_interval_s)
        loops_ok = self.loops.healthy()
        return {
            "ok": self.ready.is_set() and self._accepting and chain_ok and loops_ok,
            "accepting": self._accepting,
            "loops_ok": loops_ok,
            "chain_ok": chain_ok,
            "head": stats.head if stats else None,
            "cursor": stats.cursor if stats else None,
            "in_flight": len(self._producing),
            "mqtt": self.publisher.stats.connected if self.publisher else None,
            "loops": self.loops.snapshot(),
        }

    def _refresh_gauges(self) -> None:
        for state, n in self.journal.counts().items():
            self.metrics.jobs.labels(state.value).set(n)
        self.metrics.in_flight.set(len(self._producing))

    # ------------------------------------------------------------------ production

    def schedule(self, request_id: int) -> None:
        """Start producing a `new` job (no-op if it already runs or we are shutting down)."""
        if not self._accepting or request_id in self._producing:
            return
        task = asyncio.create_task(self._produce(request_id), name=f"job-{request_id}")
        self._producing[request_id] = task
        task.add_done_callback(lambda t: self._producing.pop(request_id, None))

    async def _produce(self, request_id: int) -> None:
        with bound(request_id=request_id):
            try:
                async with self._sem:
                    self._running.add(request_id)
                    try:
                        await self._produce_once(request_id)
                    finally:  # before any await: the submitter sees it gone with the job it queued
                        self._running.discard(request_id)
                self._job_crashes.pop(request_id, None)
            except asyncio.CancelledError:
                log.info("job_interrupted", note="stays journaled, resumes on next start")
                raise
            except InputUnavailable as exc:  # not a crash: the input is not fetchable yet
                self._unfetched.add(request_id)
                log.info("input_unavailable", reason=exc.reason, retry_in_s=round(exc.retry_after_s, 1))
                await self._retry_later(request_id, exc.retry_after_s)
            except Exception as exc:
                # One job's crash stays that job's: retried with backoff (so a job that always
                # crashes does not hog the engine) until it succeeds or its deadline drops it.
                crashes = self._job_crashes[request_id] = self._job_crashes.get(request_id, 0) + 1
                delay = min(2.0 * 2 ** (crashes - 1), 60.0)
                self.metrics.job_crashes.inc()
                log.exception("job_crashed", error=describe(exc), crashes=crashes, retry_in_s=delay)
                await self._retry_later(request_id, delay)

    async def _retry_later(self, request_id: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._accepting:
            asyncio.get_running_loop().call_soon(self._reschedule, request_id)

    def _reschedule(self, request_id: int) -> None:
        job = self.journal.get(request_id)
        if job is not None and job.state == JobState.NEW:
            self.schedule(request_id)
        else:
            self._job_crashes.pop(request_id, None)

    async def _produce_once(self, request_id: int) -> None:
        while True:
            job = self.journal.get(request_id)
            if job is None or job.state != JobState.NEW:
                return
            if self._head + 1 > job.deadline:
                log.warning(
                    "job_dropped", reason=f"deadline {job.deadline} passed before work began", head=self._head
                )
                self.journal.mark(request_id, JobState.DROPPED, "deadline passed before work began")
                self.metrics.jobs_done.labels("dropped").inc()
                return
            if job.max_tokens is None or job.created == 0:
                job = await self._request_meta(job)
                if job is None:
                    return
            deltas = None
            if self.publisher is not None:
                deltas = functools.partial(self.publisher.publish_delta, request_id)

            self.metrics.in_flight.set(len(self._producing))
            produced = await self.pipeline.produce(job, deltas=deltas)
            self._unfetched.discard(request_id)
            self.metrics.stage_latency.labels("fetch").observe(produced.fetch_s)
            self.metrics.stage_latency.labels("infer").observe(produced.infer_s)
            self.metrics.stage_latency.labels("upload").observe(produced.upload_s)
            self.metrics.tokens.inc(produced.completion_tokens)
            self.metrics.prompt_tokens.inc(produced.prompt_tokens)
            now = self.journal.get(request_id)
            if now is None or now.state != JobState.NEW:
                return  # settled meanwhile (finalized by others, expired, dropped)
            if (now.created, now.input_digest, now.max_tokens) != (
                job.created,
                job.input_digest,
                job.max_tokens,
            ):
                continue  # the request changed under us (reorg): redo
            if self.publisher is not None:  # the gateway's answer first: MQTT, then HTTP
                self.publisher.publish_result(request_id, produced.output.decode("utf-8"), produced.signature)
            if produced.sealed:
                # Before the journal: a journaled result goes on chain even after a crash, and a sealed
                # answer lives only here until its gateway has it. A crash before this line redoes
                # the job on restart (the same bytes and signature: the engine is deterministic).
                await self.pipeline.deliver(produced)
            self.journal.mark_uploaded(request_id, produced.output_digest, produced.signature)
            log.info(
                "job_uploaded", output_cid=produced.output_cid, generated=produced.completion_tokens,
                error=produced.error_code, infer_s=round(produced.infer_s, 3),
            )  # fmt: skip
            self.seats.uploaded(request_id)  # queued for commit, or held while the seat is only drawn
            return

    async def _request_meta(self, job: Job) -> Job | None:
        """Fill in the declared max tokens and request time of a seat whose request we did not see."""
        ev = await self.view.requested(job.request_id, near_block=job.block_number)
        if ev is None:
            log.warning("request_unknown", request_id=job.request_id, note="no InferenceRequested on chain")
            self.journal.mark(job.request_id, JobState.DROPPED, "no InferenceRequested on chain (reorg?)")
            return None
        block = await self.hub.w3.eth.get_block(ev.log.block_number)
        return self.journal.set_request_meta(
            job.request_id, max_tokens=ev.max_tokens, created=int(block["timestamp"])
        )

    def _cancel(self, rid: int) -> None:
        task = self._producing.get(rid)
        if task is not None:
            task.cancel()

    # ------------------------------------------------------------------ chain events

    def _on_event(self, ev: MinerEvent, timestamps: dict[int, int]) -> None:
        """Every event, the watcher's and our own receipts', goes to the seating policy through here."""
        self.seats.on_event(ev, timestamps)

    async def _watch(self) -> None:
        assert self.follower is not None
        async for item in self.follower.follow():
            self._last_chain_ok = time.time()
            if isinstance(item, Reorg):
                with self.loops.guard("watcher", fork_block=item.fork_block):
                    self.seats.on_reorg(item)
                continue
            self._head = max(self._head, item.head)
            self._handle_batch(item)

    def _handle_batch(self, batch: LogBatch[MinerEvent]) -> None:
        """Each event on its own: one that raises is logged, counted and skipped (the cursor moves on).
        Their journal writes are one transaction (`Journal.batch`: one fsync per block, not per event)."""
        with self.journal.batch():
            self._handle_events(batch)
        self.metrics.last_block.set(batch.to_block)

    def _handle_events(self, batch: LogBatch[MinerEvent]) -> None:
        for ev in batch.events:
            with self.loops.guard(
                "watcher", request_id=getattr(ev, "id", None), kind=type(ev).__name__,
                block=ev.log.block_number,
            ):  # fmt: skip
                self._on_event(ev, batch.timestamps)

    # ------------------------------------------------------------------ housekeeping

    async def _sweep(self) -> None:
        """Drop seats whose deadline passed, answer UNAVAILABLE in time, re-check waiting seats,
        collect timeouts; keep gauges fresh."""
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                self._head = max(self._head, int(await self.hub.w3.eth.block_number))
                self._last_chain_ok = time.time()
            except Exception:
                self.metrics.rpc_errors.labels("sweeper").inc()
            for job in self.journal.jobs([JobState.NEW]):
                with self.loops.guard("sweeper", request_id=job.request_id):
                    self._sweep_job(job)
            now = time.monotonic()
            if now - self._last_recheck >= self.config.recheck_s:
                self._last_recheck = now
                for job in self.journal.jobs([JobState.COMMITTED]):
                    self.submitter.enqueue(job.request_id)
                with self.loops.guard("sweeper", step="timeouts"):
                    await self.disputes.collect_timeouts()
                self.journal.forget_batches(before=time.time() - BATCH_RECORD_TTL_S)
            self._refresh_gauges()

    def _sweep_job(self, job: Job) -> None:
        rid = job.request_id
        if self._head + 1 > job.deadline:
            self._cancel(rid)
            log.warning("job_dropped", request_id=rid, reason=f"deadline {job.deadline} passed")
            self.journal.mark(rid, JobState.DROPPED, "deadline passed")
            self.metrics.jobs_done.labels("dropped").inc()
        elif rid in self._unfetched and self._head + self.config.unavailable_margin_blocks >= job.deadline:
            self._cancel(rid)
            self._unfetched.discard(rid)
            digest, signature = self.pipeline.unavailable_result(job)
            log.warning("input_unavailable_answered", request_id=rid, deadline=job.deadline, head=self._head)
            self.journal.mark_uploaded(rid, digest, signature)
            self.submitter.enqueue(rid, fresh=True)
        elif rid not in self._producing:
            self.schedule(rid)

    def handle_receipt(self, receipt: Any) -> None:
        """Apply the events of our own transaction now (the watcher sees them again, idempotently)."""
        for ev in self.view.decode_receipt(receipt):
            with self.loops.guard("sweeper", request_id=getattr(ev, "id", None)):
                self._on_event(ev, {})

    async def _money(self) -> None:
        await refresh_money(
            self.hub, self.address, self.metrics, engine=self.engine, interval_s=self.config.money_interval_s
        )

    async def _publish(self) -> None:
        """The MQTT publisher's own task, watched: if it dies it is started afresh (by the supervisor)."""
        publisher = self.publisher
        assert publisher is not None
        task = publisher._task
        if task is None or task.done():
            publisher._task = None
            publisher.start()
            task = publisher._task
        assert task is not None
        await wait_task(task)

    async def _resume(self) -> None:
        """Pick up every unfinished job and escalation from its last durable state."""
        await Resume(
            address=self.address, hub=self.hub, view=self.view, journal=self.journal,
            submitter=self.submitter, loops=self.loops, schedule=self.schedule,
        ).jobs()  # fmt: skip
        self.disputes.resume()

    async def _check_start(self) -> None:
        """Refuse to run unregistered, or with an engine of another class than the model's."""
        self.model = await registered_model(self.hub, self.address)
        check_engine(self.engine, self.model, self.config.engine_class)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down gracefully."""
        head = await wait_for_chain(self.hub.w3, stop, self.metrics)
        if head is None:
            return
        self._head = self.seats.start_head = head
        self._last_chain_ok = time.time()
        await self._check_start()
        start = max(0, head - self.config.lookback_blocks)
        self.follower = LogFollower(
            self.hub.w3,
            address=self.hub.address,
            decode=self.view.decode,
            cursor=self.journal,
            topics=self.view.topics,
            start_block=start,
            confirmations=self.config.confirmations,
            range_blocks=self.config.log_range_blocks,
            poll_interval_s=self.config.poll_interval_s,
            on_rpc_error=lambda exc: self.metrics.rpc_errors.labels("watcher").inc(),
            ws_url=self.config.ws_url,
        )
        if self.config.metrics_port is not None:
            self.ops = OpsServer(
                self.metrics, self.health, self.config.metrics_host, self.config.metrics_port
            )
            await self.ops.start()
        if self.publisher is not None:
            self.loops.spawn("publisher", self._publish)
        self.loops.spawn("submitter", self.submitter.run)
        self.loops.spawn("sweeper", self._sweep)
        self.loops.spawn("money", self._money)
        await self._resume()
        self.loops.spawn("watcher", self._watch)
        self.ready.set()
        log.info(
            "miner_started", miner=self.address, hub=self.hub.address, chain_id=self.config.chain_id,
            model=self.engine.model_name, from_block=self.journal.load_cursor() or start, head=head,
        )  # fmt: skip
        await stop.wait()  # a crashed loop is restarted by `self.loops`; only a signal ends the daemon
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop taking jobs, let in-flight work finish for `grace_s`, leave the rest journaled."""
        log.info("miner_stopping", in_flight=len(self._producing), grace_s=self.config.grace_s)
        self._accepting = False
        self.loops.stop_restarts()
        if self.follower is not None:
            self.follower.stop()
        deadline = time.monotonic() + self.config.grace_s
        if self._producing:
            await asyncio.wait(set(self._producing.values()), timeout=max(0.0, deadline - time.monotonic()))
        # Let the submitter flush what is ready (its batch window) and wait for in-flight txs.
        while self.submitter.pending and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded flush
            await asyncio.sleep(0.1)
        await self.submitter.drain(max(0.0, deadline - time.monotonic()))
        producing = list(self._producing.values())
        for task in producing:
            task.cancel()
        for task in producing:
            with contextlib.suppress(BaseException):
                await task
        await self.disputes.close()
        await self.loops.close()
        if self.publisher is not None:
            await self.publisher.close()
        close_envelopes = getattr(self.pipeline.envelopes, "close", None)
        if close_envelopes is not None:  # the envelope source's kept-alive HTTP connections
            with contextlib.suppress(Exception):
                await close_envelopes()
        if self.ops is not None:
            await self.ops.stop()
        await close_rpc(self.hub.w3)  # the kept-alive JSON-RPC connections (`node.chain.keepalive`)
        self._refresh_gauges()
        left = {s.value: n for s, n in self.journal.counts().items() if s in UNFINISHED and n}
        log.info("miner_stopped", unfinished=left)

    @property
    def settled_states(self) -> frozenset[JobState]:
        return TERMINAL


__all__ = ["DaemonConfig", "MinerDaemon", "MinerStartError", "engine_class_id"]
