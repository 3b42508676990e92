"""The miner daemon: watch → journal → fetch → infer → upload → commit → reveal → confirm.

Wiring and policy live here; each step is its own module (watcher, journal, pipeline, submitter,
stream publisher, metrics, money). Crash safety comes from the journal: on start every unfinished
job is resumed from its last durable state, and the submitter checks the chain before sending
anything, so a commit and a reveal are each broadcast once. Graceful shutdown (SIGTERM): stop taking
jobs, give in-flight work `grace_s` to finish, leave the rest journaled for the next start.

Work (protocol v2) is a seat: `InferenceAssigned` naming us, `AuditOpened` with us as auditor, or
`CommitteeOpened` with us among the members. All three mean "run this input document, commit to the
output digest, reveal it when the reveal window opens". `InferenceRequested` (one block earlier)
is kept for what it declared: the max tokens the fee paid for, and the request block's time that
every seat's output document carries. An input still unfetchable `unavailable_margin_blocks` before
the commit deadline is committed and revealed as `UNAVAILABLE` rather than left silent.

Speculative seats (`miner.speculate`, on by default): the hub fixes a request's seats when its
block N is mined (seed `blockhash(N)`, the pool at the end of N) but writes them a block later
(`assign()`). On `InferenceRequested` (fresh, not a replay) the daemon draws them itself
(`node.chain.draw`) and, holding one, journals an assignee job (the request block as its block,
`N + 1 + timeoutBlocks` as a provisional deadline: the real one is never earlier) and runs it at
once: fetch, engine, signed result and deltas over MQTT. Nothing goes on chain from the draw: the
submitter's check waits while the request is `Pending`; `InferenceAssigned` re-journals the job with
its real block and deadline (the output kept) and queues the commit, and an assignment naming
others or a refund closes it like any reassignment. One row per request id, one commit, as ever.

Disputes live in `node.miner.disputes`: escalating a provisional outcome our seat lost
(`InferenceResolved` for another digest than ours; `miner.escalate`), voting on others' escalations
(`EscalationOpened` on our model where we hold no seat), and the sweeper's `timeoutMany` for
requests we are owed money on (a phase deadline passed).

Start-up refuses an engine whose class differs from the model's on-chain `engineClass` (its outputs
would disagree with every other miner's), and a key that is not registered for a model.

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
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount

from node import __version__
from node.chain.draw import SeatDraw
from node.chain.events import (
    AuditOpened,
    CommitteeOpened,
    InferenceAssigned,
    InferenceFinalized,
    InferenceRefunded,
    InferenceRequested,
    ResultCommitted,
    ResultRevealed,
    RevealOpened,
    VoteCommitted,
    VoteRevealed,
)
from node.chain.hub import MAX_BATCH, HubClient, ModelInfo, Phase
from node.chain.keepalive import close as close_rpc
from node.chain.sender import TxSender
from node.chain.watcher import LogBatch, LogFollower, Reorg
from node.content.errors import InputUnavailable
from node.content.store import ContentStore
from node.log import bound, get_logger
from node.miner.disputes import Disputes
from node.miner.hubview import HubView, MinerEvent
from node.miner.journal import (
    COMMIT_STATES,
    OPEN,
    REVEAL_STATES,
    TERMINAL,
    UNFINISHED,
    Job,
    JobState,
    Journal,
    Role,
)
from node.miner.metrics import MinerMetrics, OpsServer
from node.miner.money import refresh_money
from node.miner.pipeline import EngineLike, Pipeline
from node.miner.submitter import Submitter
from node.stream.publisher import StreamPublisher
from node.supervise import Supervisor, describe, wait_task

log = get_logger("inferd.miner")

BATCH_RECORD_TTL_S = 7 * 24 * 3600.0
"""How long a batch root's record is kept: far past any reveal window (timeoutBlocks after commit)."""


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


class MinerStartError(RuntimeError):
    """The daemon must not start: not registered, or an engine of another class than the model's."""


def engine_class_id(engine: object) -> bytes | None:
    """The engine's bytes32 class: `engine.engine_class.id` (node.engine) or `engine.engine_class_id`."""
    ec = getattr(engine, "engine_class", None)
    if ec is not None and hasattr(ec, "id"):
        return bytes(ec.id)
    raw = getattr(engine, "engine_class_id", None)
    return bytes(raw) if raw is not None else None


def _lean_middleware(w3: Any) -> None:
    """Drop web3 middleware that costs CPU on every call and buys the miner nothing.

    `validation` asks the node for its chain id on each transaction-shaped call and `ens_name_to_address`
    inspects every argument for ENS names; the miner signs locally with an explicit chainId and only
    uses hex addresses. On a 2-core box every millisecond here is taken from inference.
    """
    for name in ("validation", "ens_name_to_address"):
        with contextlib.suppress(Exception):
            w3.middleware_onion.remove(name)


def _by(ev: object, me: str, committing: bool) -> bool:
    """Whether `ev` is our commit (`committing`) or reveal, of a seat or of a vote."""
    if committing:
        return (isinstance(ev, ResultCommitted) and ev.miner == me) or (
            isinstance(ev, VoteCommitted) and ev.voter == me
        )
    return (isinstance(ev, ResultRevealed) and ev.miner == me) or (
        isinstance(ev, VoteRevealed) and ev.voter == me
    )


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
        self._start_head = 0
        """The chain head when `run` started: events from blocks up to it are the start-up scan's."""
        self._started_at = time.time()
        self._last_chain_ok = 0.0
        self.ready = asyncio.Event()
        self.disputes = Disputes(self)
        self.draw = SeatDraw(hub)
        self._speculative: set[int] = set()
        """Request ids seated from our own draw whose `InferenceAssigned` we have not seen yet."""
        self._held: set[int] = set()
        """Speculative seats uploaded before their `InferenceAssigned`, which queues their commit."""
        self._drawing: set[asyncio.Task[None]] = set()
        self._overtaken: dict[int, bool] = {}
        """Draws in progress: True once the request's assignment or refund was seen meanwhile."""

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
            if request_id in self._speculative:
                # not committable before its assignment, which queues the commit (`_on_event`); a
                # refund or another seat closes the job instead: no chain check to ask meanwhile
                self._held.add(request_id)
            else:
                self.submitter.enqueue(request_id, fresh=True)
            return

    # ------------------------------------------------------------------ chain events

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

    def _on_event(self, ev: MinerEvent, timestamps: dict[int, int]) -> None:
        me = self.address
        if isinstance(ev, InferenceRequested):
            if self.model is None or ev.model_id == self.model.model_id:
                self.journal.record_request(
                    ev.id, max_tokens=ev.max_tokens, block_number=ev.log.block_number,
                    created=timestamps.get(ev.log.block_number, 0),
                )  # fmt: skip
                # not a replay of the start-up scan: mined since we started, or near the head (a
                # loaded box's follower can be several automined blocks behind a fresh request)
                fresh = ev.log.block_number > self._start_head or (
                    ev.log.block_number + self.config.confirmations + 2 >= self._head
                )
                if (
                    self.config.speculate
                    and fresh
                    and self.model is not None
                    and self.journal.get(ev.id) is None
                ):
                    self._overtaken[ev.id] = False
                    task = asyncio.create_task(self._speculate(ev), name=f"draw-{ev.id}")
                    self._drawing.add(task)
                    task.add_done_callback(self._drawing.discard)
            return
        if isinstance(ev, (InferenceAssigned, InferenceRefunded)):
            self._speculative.discard(ev.id)
            held = ev.id in self._held
            self._held.discard(ev.id)
            if ev.id in self._overtaken:
                self._overtaken[ev.id] = True  # a draw still reading the pool must not seat us now
        if isinstance(ev, InferenceAssigned):
            if me in ev.assignees:
                self._seat(ev.id, Role.ASSIGNEE, ev.input_digest, ev.deadline, ev)
                job = self.journal.get(ev.id)
                if held and job is not None and job.state == JobState.UPLOADED and not job.commit_txs:
                    # uploaded here from our own draw, never sent, and now the chain's seat with its
                    # real deadline: as fresh as a seat seen first (the estimate still checks)
                    self.submitter.enqueue(ev.id, fresh=True)
                return
            job = self.journal.get(ev.id)
            if job is not None and job.role == Role.ASSIGNEE and job.state in OPEN:
                self._close(ev.id, JobState.EXPIRED, "reassigned to other miners")
            return
        if isinstance(ev, AuditOpened):
            if ev.auditor == me:
                self._seat(ev.id, Role.AUDITOR, ev.input_digest, ev.deadline, ev)
            return
        if isinstance(ev, CommitteeOpened):
            if me in ev.members:
                self._seat(ev.id, Role.COMMITTEE, ev.input_digest, ev.deadline, ev)
            return
        job = self.journal.get(ev.id)
        if self.disputes.on_event(ev, job) or job is None:
            return
        if isinstance(ev, ResultCommitted):
            if ev.miner == me and job.state in COMMIT_STATES:
                self.journal.mark_committed(ev.id, ev.log.block_number, ev.commitment)
                self.submitter.enqueue(ev.id)
            return
        if isinstance(ev, RevealOpened):
            if job.state in REVEAL_STATES:
                self.submitter.enqueue(ev.id)
            return
        if isinstance(ev, ResultRevealed):
            if ev.miner == me and job.state in REVEAL_STATES:
                self.journal.mark_revealed(ev.id, ev.log.block_number)
            return
        if isinstance(ev, InferenceFinalized) and job.state in OPEN:
            if job.role == Role.VOTER:
                self.submitter.enqueue(ev.id)  # claim a won vote, or settle
            elif job.state == JobState.REVEALED:
                self.journal.mark(ev.id, JobState.FINALIZED)
                self.metrics.jobs_done.labels("finalized").inc()
            elif job.state in REVEAL_STATES:
                self.submitter.enqueue(ev.id)  # revealed in the same block? the chain check settles it
            else:
                self._close(ev.id, JobState.EXPIRED, "finalized without our result")
            return
        if isinstance(ev, InferenceRefunded) and job.state in OPEN:
            self._close(ev.id, JobState.EXPIRED, "refunded")

    async def _speculate(self, ev: InferenceRequested) -> None:
        """Draw the request's seats from its block; seat ourselves at once when we hold one."""
        model = self.model
        assert model is not None
        with self.loops.guard("draw", request_id=ev.id):
            try:
                seats = await self.draw.seats(
                    model.model_id, model.redundancy, ev.id, ev.log.block_number, ev.log.block_hash
                )
            finally:
                overtaken = self._overtaken.pop(ev.id, True)
            if overtaken or self.address not in seats or not self._accepting:
                return
            if self.journal.get(ev.id) is not None:  # a seat from the chain came first
                return
            self._speculative.add(ev.id)
            provisional = ev.log.block_number + 1 + model.timeout_blocks  # the real one is never earlier
            self._seat(ev.id, Role.ASSIGNEE, ev.input_digest, provisional, ev)
            self.metrics.speculative_seats.inc()

    def _close(self, rid: int, state: JobState, reason: str) -> None:
        log.warning("job_closed", request_id=rid, state=state.value, reason=reason)
        self._cancel(rid)
        self.journal.mark(rid, state, reason)
        self.metrics.jobs_done.labels(state.value).inc()

    def _seat(self, rid: int, role: Role, input_digest: bytes, deadline: int, ev: MinerEvent) -> None:
        job, changed = self.journal.assign(
            rid, input_digest=input_digest, deadline=deadline, block_number=ev.log.block_number,
            block_hash=ev.log.block_hash, role=role,
        )  # fmt: skip
        if changed:
            log.info(
                "job_assigned", request_id=rid, role=role.value, deadline=deadline, state=job.state.value
            )
        if job.state == JobState.NEW:
            self.schedule(rid)
        elif changed and job.state == JobState.UPLOADED:
            self.submitter.enqueue(rid)

    def _cancel(self, rid: int) -> None:
        task = self._producing.get(rid)
        if task is not None:
            task.cancel()

    async def _on_reorg(self, reorg: Reorg) -> None:
        """Re-check every job the replaced blocks touched; the re-scan re-assigns what still exists."""
        self.metrics.reorgs.inc()
        fork = reorg.fork_block
        self.submitter.on_reorg(fork)
        touched = [
            j for j in self.journal.jobs()
            if j.block_number >= fork
            or (j.commit_block is not None and j.commit_block >= fork)
            or (j.reveal_block is not None and j.reveal_block >= fork)
        ]  # fmt: skip
        for job in touched:
            if job.state in (JobState.NEW, JobState.FAILED) or job.output_digest is None:
                continue
            back = (
                JobState.COMMITTED
                if job.commit_block is not None and job.commit_block < fork
                else JobState.UPLOADED
            )
            if job.state != back:
                self.journal.mark(job.request_id, back, f"re-check after reorg at {reorg.fork_block}")
            self.submitter.enqueue(job.request_id)
        log.warning("reorg_handled", fork_block=reorg.fork_block, depth=reorg.depth, rechecked=len(touched))

    async def _watch(self) -> None:
        assert self.follower is not None
        async for item in self.follower.follow():
            self._last_chain_ok = time.time()
            if isinstance(item, Reorg):
                with self.loops.guard("watcher", fork_block=item.fork_block):
                    await self._on_reorg(item)
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
        """Pick up every unfinished job from its last durable state."""
        jobs = self.journal.jobs(OPEN)
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
            with self.loops.guard("resume", request_id=job.request_id, state=job.state.value):
                await self._resume_job(job)
        if jobs:
            log.info("resumed_jobs", **counts)
        self.disputes.resume()

    async def _resume_job(self, job: Job) -> None:
        if job.state == JobState.NEW:
            self.schedule(job.request_id)
        elif job.state in (JobState.COMMITTING, JobState.REVEALING):
            await self._resolve_sending(job)
        elif job.state in (JobState.UPLOADED, JobState.COMMITTED):
            self.submitter.enqueue(job.request_id)
        elif job.state == JobState.REVEALED:
            await self._check_revealed(job)

    async def _resolve_sending(self, job: Job) -> None:
        """A crash after recording a tx hash: did any of those transactions land?"""
        committing = job.state == JobState.COMMITTING
        for tx_hash in reversed(job.commit_txs if committing else job.reveal_txs):
            try:
                receipt = await self.hub.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except Exception as exc:
                log.info("receipt_lookup_failed", tx_hash=tx_hash, error=f"{type(exc).__name__}: {exc}")
                continue
            if receipt is None or int(receipt["status"]) != 1:
                continue
            events = self.view.decode_receipt(receipt)
            mine = [
                e
                for e in events
                if _by(e, self.address, committing) and getattr(e, "id", None) == job.request_id
            ]
            if mine:
                block = int(receipt["blockNumber"])
                if committing:  # the commitment: our leaf, or the root of a commitBatch
                    self.journal.mark_committed(job.request_id, block, getattr(mine[0], "commitment", None))
                else:
                    self.journal.mark_revealed(job.request_id, block)
                    if any(isinstance(e, InferenceFinalized) and e.id == job.request_id for e in events):
                        self.journal.mark(job.request_id, JobState.FINALIZED)
                        return
                break
        self.submitter.enqueue(job.request_id)  # the chain check decides: send again, wait or settle

    async def _check_revealed(self, job: Job) -> None:
        try:
            info = await self.view.get_request(job.request_id)
        except Exception:
            return
        if info is None:
            self.journal.mark(job.request_id, JobState.UPLOADED, "request vanished (reorg)")
            self.submitter.enqueue(job.request_id)
        elif info.phase == Phase.FINAL:
            self.journal.mark(job.request_id, JobState.FINALIZED)
        elif info.phase == Phase.REFUNDED:
            self.journal.mark(job.request_id, JobState.EXPIRED, "refunded")

    async def _check_start(self) -> None:
        """Refuse to run unregistered, or with an engine of another class than the model's."""
        info = await self.hub.get_miner(self.address)
        if info.model_id is None:
            raise MinerStartError(
                f"{self.address} is not registered on hub {self.hub.address}: "
                "`inferd miner register --stake AMOUNT` first"
            )
        self.model = await self.hub.get_model(info.model_id)
        mine = engine_class_id(self.engine) or self.config.engine_class
        required = self.model.engine_class
        if mine is None:
            raise MinerStartError("the engine has no engine class: it cannot be checked against the model's")
        if mine != required:
            ec = getattr(self.engine, "engine_class", None)
            if ec is not None and hasattr(ec, "text"):
                from node.engine.engine_class import check_engine_class

                try:
                    check_engine_class(required, ec)
                except Exception as exc:  # EngineClassMismatch: its message names the class text
                    raise MinerStartError(str(exc)) from exc
            raise MinerStartError(
                f"this engine's class 0x{mine.hex()} is not model {self.model.name!r}'s on-chain engine "
                f"class 0x{required.hex()}: its outputs would not match the other miners' (and be slashed)"
            )

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down gracefully."""
        head = await self._wait_for_chain(stop)
        if head is None:
            return
        self._head = self._start_head = head
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

    async def _wait_for_chain(self, stop: asyncio.Event) -> int | None:
        """The head block, retrying with backoff while the RPC is unreachable (None: stopped)."""
        delay = 0.5
        while not stop.is_set():
            try:
                return int(await self.hub.w3.eth.block_number)
            except Exception as exc:
                self.metrics.rpc_errors.labels("startup").inc()
                log.warning("chain_unreachable", rpc_error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)
        return None

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
