"""Seating: what each hub event does to our journaled jobs (the miner's event → journal policy).

Apart from the daemon because this is the one place that decides, event by event, whether we hold
a seat, when its job starts, is queued for the chain, or is closed; the daemon only feeds it events
(watcher batches, our own receipts, reorgs) and runs what it schedules.

Work (protocol v2) is a seat: `InferenceAssigned` naming us, `AuditOpened` with us as auditor, or
`CommitteeOpened` with us among the members. All three mean "run this input document, commit to the
output digest, reveal it when the reveal window opens". `InferenceRequested` (one block earlier)
is kept for what it declared: the max tokens the fee paid for, and the request block's time that
every seat's output document carries. Our own commits and reveals seen on chain move a job on; a
finalization or refund without our result closes it; dispute events go to `node.miner.disputes`.

Speculative seats (`miner.speculate`, on by default): the hub fixes a request's seats when its
block N is mined (seed `blockhash(N)`, the pool at the end of N) but writes them a block later
(`assign()`). On `InferenceRequested` (fresh, not a replay) we draw them ourselves
(`node.chain.draw`) and, holding one, journal an assignee job (the request block as its block,
`N + 1 + timeoutBlocks` as a provisional deadline: the real one is never earlier) and run it at
once: fetch, engine, signed result and deltas over MQTT. Nothing goes on chain from the draw: the
submitter's check waits while the request is `Pending`; `InferenceAssigned` re-journals the job with
its real block and deadline (the output kept) and queues the commit, and an assignment naming
others or a refund closes it like any reassignment. One row per request id, one commit, as ever.

A reorg sends every job the replaced blocks touched back to its last state still on chain, for the
submitter to check again; the watcher's re-scan re-seats what still exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
)
from node.chain.hub import ModelInfo
from node.chain.watcher import Reorg
from node.log import get_logger
from node.miner.disputes import Disputes
from node.miner.hubview import MinerEvent
from node.miner.journal import COMMIT_STATES, OPEN, REVEAL_STATES, JobState, Journal, Role
from node.miner.metrics import MinerMetrics
from node.miner.submitter import Submitter
from node.supervise import Supervisor

log = get_logger("inferd.miner")


class Seats:
    """One miner's seating policy: hub events in, journal marks, scheduled jobs and queued sends out.

    The daemon's parts it acts through are passed in: `schedule(rid)` starts producing a `new` job,
    `cancel(rid)` stops one in production, `accepting()` is false once shutting down, `head()` is the
    latest block seen and `model()` the model we serve (None before the start-up check).
    """

    def __init__(
        self,
        *,
        address: str,
        journal: Journal,
        submitter: Submitter,
        disputes: Disputes,
        draw: SeatDraw,
        metrics: MinerMetrics,
        loops: Supervisor,
        speculate: bool,
        confirmations: int,
        schedule: Callable[[int], None],
        cancel: Callable[[int], None],
        accepting: Callable[[], bool],
        head: Callable[[], int],
        model: Callable[[], ModelInfo | None],
    ) -> None:
        self.address = address
        self.journal = journal
        self.submitter = submitter
        self.disputes = disputes
        self.draw = draw
        self.metrics = metrics
        self.loops = loops
        self.speculate = speculate
        self.confirmations = confirmations
        self._schedule = schedule
        self._cancel = cancel
        self._accepting = accepting
        self._head = head
        self._model = model
        self.start_head = 0
        """The chain head when the daemon started: events from blocks up to it are the start-up scan's."""
        self._speculative: set[int] = set()
        """Request ids seated from our own draw whose `InferenceAssigned` we have not seen yet."""
        self._held: set[int] = set()
        """Speculative seats uploaded before their `InferenceAssigned`, which queues their commit."""
        self._drawing: set[asyncio.Task[None]] = set()
        self._overtaken: dict[int, bool] = {}
        """Draws in progress: True once the request's assignment or refund was seen meanwhile."""

    def uploaded(self, rid: int) -> None:
        """A job's result is journaled: queue its commit, or hold it while its seat is only drawn."""
        if rid in self._speculative:
            # not committable before its assignment, which queues the commit (`on_event`); a
            # refund or another seat closes the job instead: no chain check to ask meanwhile
            self._held.add(rid)
        else:
            self.submitter.enqueue(rid, fresh=True)

    def on_event(self, ev: MinerEvent, timestamps: dict[int, int]) -> None:
        me = self.address
        model = self._model()
        if isinstance(ev, InferenceRequested):
            if model is None or ev.model_id == model.model_id:
                self.journal.record_request(
                    ev.id, max_tokens=ev.max_tokens, block_number=ev.log.block_number,
                    created=timestamps.get(ev.log.block_number, 0),
                )  # fmt: skip
                # not a replay of the start-up scan: mined since we started, or near the head (a
                # loaded box's follower can be several automined blocks behind a fresh request)
                fresh = ev.log.block_number > self.start_head or (
                    ev.log.block_number + self.confirmations + 2 >= self._head()
                )
                if self.speculate and fresh and model is not None and self.journal.get(ev.id) is None:
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
                self.close(ev.id, JobState.EXPIRED, "reassigned to other miners")
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
                self.close(ev.id, JobState.EXPIRED, "finalized without our result")
            return
        if isinstance(ev, InferenceRefunded) and job.state in OPEN:
            self.close(ev.id, JobState.EXPIRED, "refunded")

    async def _speculate(self, ev: InferenceRequested) -> None:
        """Draw the request's seats from its block; seat ourselves at once when we hold one."""
        model = self._model()
        assert model is not None
        with self.loops.guard("draw", request_id=ev.id):
            try:
                seats = await self.draw.seats(
                    model.model_id, model.redundancy, ev.id, ev.log.block_number, ev.log.block_hash
                )
            finally:
                overtaken = self._overtaken.pop(ev.id, True)
            if overtaken or self.address not in seats or not self._accepting():
                return
            if self.journal.get(ev.id) is not None:  # a seat from the chain came first
                return
            self._speculative.add(ev.id)
            provisional = ev.log.block_number + 1 + model.timeout_blocks  # the real one is never earlier
            self._seat(ev.id, Role.ASSIGNEE, ev.input_digest, provisional, ev)
            self.metrics.speculative_seats.inc()

    def close(self, rid: int, state: JobState, reason: str) -> None:
        """End a seat's job off the happy path (reassigned, refunded, finalized without us)."""
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
            self._schedule(rid)
        elif changed and job.state == JobState.UPLOADED:
            self.submitter.enqueue(rid)

    def on_reorg(self, reorg: Reorg) -> None:
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
