"""Submit results on chain: batch ready jobs through `submitResults`, check the chain first.

A batch is collected until `batch_max` results are ready or `batch_wait_s` passed since the first
one; several batches may be in flight at once (the sender hands out consecutive nonces). Before a
job goes into a transaction the chain is asked whether it still can: the request must exist, be
open, be assigned to us, not be past its deadline and not already carry our result. That check is
what makes resubmission after a crash or reorg safe; the journal records the signed transaction's
hash before broadcast, and the contract rejects a second result from the same miner anyway.

`submitResults` is atomic, so a batch whose estimate reverts (a race with a deadline) is split
into single submissions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.chain.events import InferenceFinalized, ResultSubmitted
from node.chain.sender import TxError, TxReverted, TxSender, TxWouldRevert
from node.log import get_logger
from node.miner.hubview import HubView, RequestStatus, submitted_by
from node.miner.journal import TERMINAL, Job, JobState, Journal
from node.miner.metrics import MinerMetrics
from node.miner.money import receipt_fee_wei

log = get_logger("inferd.miner.submitter")


@dataclass(frozen=True)
class Verdict:
    """What the chain says about submitting one job now."""

    action: str  # "submit" | "submitted" | "finalized" | "dropped" | "expired" | "wait"
    reason: str = ""


class Submitter:
    """Owns the queue of uploaded jobs and turns them into (batched) transactions."""

    def __init__(
        self,
        *,
        journal: Journal,
        hub: HubView,
        sender: TxSender,
        miner: str,
        metrics: MinerMetrics,
        batch_max: int,
        batch_wait_s: float,
        max_in_flight: int = 4,
        head: Callable[[], int] | None = None,
        on_settled: Callable[[Job], None] | None = None,
    ) -> None:
        self.journal = journal
        self.hub = hub
        self.sender = sender
        self.miner = miner
        self.metrics = metrics
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.on_settled = on_settled
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._queued: set[int] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._fresh: set[int] = set()

    def enqueue(self, request_id: int, *, fresh: bool = False) -> None:
        """A job reached `uploaded` (or must be re-checked): submit it soon.

        `fresh`: uploaded by this process from an assignment it saw itself, and never sent: the full
        chain check is skipped (the gas estimate still catches a closed request, which then goes
        through the check). Resumed, reorged and retried jobs are always checked.
        """
        if fresh:
            self._fresh.add(request_id)
        if request_id not in self._queued:
            self._queued.add(request_id)
            self._queue.put_nowait(request_id)

    @property
    def pending(self) -> int:
        return len(self._queued)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self) -> None:
        """Collect batches forever; cancel to stop (in-flight batches are awaited by `drain`)."""
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            until = loop.time() + self.batch_wait_s
            while len(batch) < self.batch_max:
                left = until - loop.time()
                if left <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(left, 0.0001)))
                except TimeoutError:
                    break
            await self._slots.acquire()
            for rid in batch:
                self._queued.discard(rid)
            task = asyncio.create_task(self._submit_batch(batch), name=f"submit-{batch[0]}")
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("submit_batch_crashed", error=repr(task.exception()))

    async def drain(self, timeout_s: float) -> None:
        """Wait for in-flight transactions (their jobs are journaled either way)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    # ------------------------------------------------------------------ checks

    async def verdict(self, job: Job, head: int) -> Verdict:
        """Ask the chain whether `job` may be submitted now (see the module docstring)."""
        info = await self.hub.get_request(job.request_id)
        if info is None:
            return Verdict("dropped", "request unknown on chain (reorged out?)")
        mine = submitted_by(info, self.miner)
        if mine is not None:
            if info.status == RequestStatus.FINALIZED:
                return Verdict("finalized", "our result is on chain")
            return Verdict("submitted", "our result is on chain")
        if info.status == RequestStatus.FINALIZED:
            return Verdict("finalized", "finalized without our result")
        if info.status == RequestStatus.REFUNDED:
            return Verdict("expired", "request refunded")
        if self.miner not in info.assignees:
            return Verdict("dropped", "no longer assigned to us")
        if info.input_digest != job.input_digest:
            return Verdict("dropped", "input digest changed on chain (reorg)")
        if head + 1 > info.deadline:
            return Verdict("dropped", f"deadline {info.deadline} passed (head {head})")
        return Verdict("submit")

    def _settle(self, job: Job, v: Verdict, block: int | None = None) -> None:
        """Apply a non-submit verdict to the journal."""
        rid = job.request_id
        current = self.journal.get(rid)
        if current is None or current.state in TERMINAL:
            return
        if v.action in ("submitted", "finalized") and current.state in (
            JobState.UPLOADED,
            JobState.SUBMITTING,
        ):
            current = self.journal.mark_submitted(rid, block)
        if v.action == "finalized":
            current = self.journal.mark(rid, JobState.FINALIZED, v.reason)
        elif v.action in ("dropped", "expired"):
            state = JobState.DROPPED if v.action == "dropped" else JobState.EXPIRED
            log.warning("job_dropped", request_id=rid, reason=v.reason)
            current = self.journal.mark(rid, state, v.reason)
        self.metrics.jobs_done.labels(current.state.value).inc()
        if self.on_settled is not None:
            self.on_settled(current)

    # ------------------------------------------------------------------ sending

    async def _submit_batch(self, ids: list[int]) -> None:
        head = int(await self._retry_head())
        ready: list[Job] = []
        for rid in ids:
            job = self.journal.get(rid)
            fresh = rid in self._fresh
            self._fresh.discard(rid)
            if job is None or job.state not in (JobState.UPLOADED, JobState.SUBMITTING):
                continue
            if fresh and job.state == JobState.UPLOADED and head + 1 <= job.deadline:
                ready.append(job)
                continue
            try:
                v = await self.verdict(job, head)
            except Exception as exc:
                log.warning("chain_check_failed", request_id=rid, error=f"{type(exc).__name__}: {exc}")
                self.metrics.rpc_errors.labels("submitter").inc()
                self._requeue_later([rid])
                continue
            if v.action == "submit":
                if job.state == JobState.SUBMITTING:
                    job = self.journal.mark(rid, JobState.UPLOADED, "resubmitting")
                ready.append(job)
            else:
                self._settle(job, v)
        if ready:
            await self._send(ready)

    async def _retry_head(self) -> int:
        delay = 0.2
        while True:
            try:
                return int(await self.hub.hub.w3.eth.block_number)
            except Exception:
                self.metrics.rpc_errors.labels("submitter").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _requeue_later(self, ids: list[int], delay: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        for rid in ids:
            loop.call_later(delay, self.enqueue, rid)

    async def _send(self, jobs: list[Job]) -> None:
        ids = [j.request_id for j in jobs]
        digests = [j.output_digest or b"" for j in jobs]
        data = self.hub.submit_calldata(ids, digests)
        started = time.monotonic()

        def on_signed(tx_hash: str) -> None:
            self.journal.mark_submitting(ids, tx_hash)

        try:
            receipt = await self.sender.send(self.hub.address, data, on_signed=on_signed)
        except TxWouldRevert as exc:
            self.metrics.txs.labels("would_revert").inc()
            if len(jobs) > 1:
                log.info("batch_would_revert_splitting", size=len(jobs), error=str(exc))
                for job in jobs:
                    await self._send([job])
                return
            # A single job: let the chain check decide (deadline, already submitted, ...).
            job = jobs[0]
            log.warning("submit_would_revert", request_id=job.request_id, error=str(exc))
            head = await self._retry_head()
            v = await self.verdict(job, head)
            if v.action == "submit":
                self._requeue_later(ids, 2.0)
            else:
                self._settle(job, v)
            return
        except TxReverted as exc:
            self.metrics.txs.labels("reverted").inc()
            self.metrics.gas_spent_wei.inc(receipt_fee_wei(exc.receipt))  # a revert pays gas too
            log.warning("submit_reverted", ids=ids, tx_hash=exc.tx_hash)
            self._requeue_later(ids, 0.5)  # the chain check sorts out each job
            return
        except (TxError, Exception) as exc:
            self.metrics.txs.labels("error").inc()
            log.warning("submit_failed", ids=ids, error=f"{type(exc).__name__}: {exc}")
            self._requeue_later(ids, 2.0)
            return
        block = int(receipt["blockNumber"])
        gas = int(receipt.get("gasUsed", 0))
        self.metrics.txs.labels("ok").inc()
        self.metrics.tx_gas.inc(gas)
        self.metrics.gas_spent_wei.inc(receipt_fee_wei(receipt))
        self.metrics.batch_size.observe(len(jobs))
        events = self.hub.decode_receipt(receipt)
        submitted = {e.id for e in events if isinstance(e, ResultSubmitted) and e.miner == self.miner}
        finalized = {e.id for e in events if isinstance(e, InferenceFinalized)}
        log.info(
            "results_submitted",
            count=len(jobs),
            block=block,
            gas=gas,
            tx_s=round(time.monotonic() - started, 3),
        )
        for job in jobs:
            rid = job.request_id
            if rid not in submitted:
                self._requeue_later([rid], 0.5)
                continue
            current = self.journal.get(rid) or job
            if current.state in (JobState.UPLOADED, JobState.SUBMITTING):
                current = self.journal.mark_submitted(rid, block)
            self.metrics.job_latency.observe(max(0.0, time.time() - job.assigned_at))
            if rid in finalized and current.state == JobState.SUBMITTED:
                current = self.journal.mark(rid, JobState.FINALIZED)
            self.metrics.jobs_done.labels(current.state.value).inc()
            if self.on_settled is not None:
                self.on_settled(current)


__all__ = ["Submitter", "Verdict"]
