"""Put results on chain: commit in batches (`commitMany`), then reveal (`revealMany`); check first.

Every seat (assignee, auditor, committee member) does the same two steps. A job that reached
`uploaded` is queued for its commit, one that is `committed` for its reveal; a batch is collected
under the policy of `node.miner.batching` (sent at once when no other job is about to be ready —
`busy()`, from the daemon —, else until `batch_max` jobs are ready, nothing else is in flight or
`batch_wait_s` passed since the first one) and split into one commit and one reveal transaction.
Several batches may be in flight at once (the sender hands out consecutive nonces).

Before a job goes into a transaction the chain is asked what it may do now (`verdict`, read in
`node.miner.verdict`): commit, reveal, or for an r = 1 result drawn for audit `openAudit` instead
of the reveal. That check is what makes resending after a crash or reorg safe. Two cases skip the
chain's view (an eth_call per job) because this process already knows the answer: a *fresh*
commit (uploaded here from a seat it saw, never sent) and the reveal right after our own r = 1
commit receipt (`verdict.OwnCommits`). Either way the transaction's gas estimate still runs the
contract's checks; a job whose estimate reverts, a reorg of the commit block, a restart, a retry
all go through the chain check. A batch is checked against the latest head this process saw
(follower, sweeper, our receipts), not an eth_blockNumber per batch: a head a block behind only
errs towards sending, and a job whose estimate then reverts is checked against the chain's head.
What a verdict that sends nothing, or a mined receipt, does to the journal is
`node.miner.outcomes`.

`commitMany`/`revealMany` are atomic, so a batch whose estimate reverts (a race with a deadline) is
split into single transactions.

r = 1 assignee results that commit together (two or more) go under one root instead
(`node.miner.batchroot`): one `commitBatch(ids, root)`, the root recorded in the journal before the
broadcast. A request whose head says BATCH is revealed with every other id of its root in one
`revealBatch`; the ids drawn for audit are withheld (their leaf, not their digest) and then take
the single path above (`openAudit`, `reveal` after the auditor's commit). A batch commit whose
estimate reverts is checked job by job and sent again as one root (once), then singly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from node.chain.errors import decode_revert
from node.chain.sender import TxError, TxReverted, TxSender, TxWouldRevert
from node.log import get_logger
from node.miner import batchroot
from node.miner.batching import BatchCollector
from node.miner.hubview import HubView
from node.miner.journal import COMMIT_STATES, REVEAL_STATES, BatchRecord, Job, JobState, Journal, Role
from node.miner.metrics import MinerMetrics
from node.miner.money import receipt_fee_wei
from node.miner.outcomes import Outcomes
from node.miner.verdict import OWN_COMMITS_KEPT, OwnCommit, OwnCommits, Verdict, chain_verdict
from node.miner.votes import Votes

log = get_logger("inferd.miner.submitter")

# Gas a commit or reveal may need beyond its estimate: the estimate runs before other seats' txs in
# the same block, so ours may become the last commit (opens the reveal window) or the last reveal
# (tallies, pays every seat, may seat a committee). Unused gas is not charged, so the headroom only
# has to fit the wallet's balance at the fee cap.
TRANSITION_GAS = 300_000


class Submitter:
    """Owns the queue of jobs with something to send and turns them into (batched) transactions."""

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
        on_settled: Callable[[Job], None] | None = None,
        busy: Callable[[], int] | None = None,
        redundancy: Callable[[], int | None] | None = None,
        audit_bps: Callable[[], int | None] | None = None,
        head: Callable[[], int] | None = None,
    ) -> None:
        self.journal = journal
        self.hub = hub
        self.sender = sender
        self.miner = miner
        self.metrics = metrics
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.on_settled = on_settled
        self.redundancy = redundancy or (lambda: None)  # the model's r: 1 lets assignees use roots
        self.audit_bps = audit_bps or (lambda: None)  # the model's: None keeps every reveal on chain
        self.head = head  # the latest block the daemon saw (follower, sweeper); None: ask the chain
        self._receipt_head = 0  # the latest block of our own receipts (the follower may lag it)
        self._own_commits = OwnCommits(journal=journal, redundancy=self.redundancy, audit_bps=self.audit_bps)
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._queued: set[int] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._fresh: set[int] = set()
        self._audits_opened: set[int] = set()
        self._busy: set[int] = set()  # ids in a batch being checked or sent: never two at once
        self._waiting: set[int] = set()  # ids found busy: enqueued again once their holder lets go
        self._collector = BatchCollector(self._queue, batch_max=batch_max, wait_s=batch_wait_s, busy=busy)
        self._outcomes = Outcomes(
            journal=journal, metrics=metrics, miner=miner, redundancy=self.redundancy,
            own_commits=self._own_commits, enqueue=self.enqueue, requeue=self._requeue_later,
            on_settled=on_settled,
        )  # fmt: skip
        self.votes = Votes(
            journal=journal, hub=hub, sender=sender, miner=miner, metrics=metrics, extra_gas=TRANSITION_GAS,
            settle=lambda job, v: self._outcomes.settle(job, Verdict(*v)), requeue=self._requeue_later,
        )  # fmt: skip

    def enqueue(self, request_id: int, *, fresh: bool = False) -> None:
        """A job reached `uploaded` or `committed` (or must be re-checked): act on it soon.

        `fresh`: uploaded by this process from a seat it saw itself, and never sent: the chain check
        before the commit is skipped (the gas estimate still catches a closed window, which then
        goes through the check). Resumed, reorged, retried and reveal jobs are always checked.
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

    def on_reorg(self, fork_block: int) -> None:
        """Forget our commit receipts from replaced blocks: their jobs go through the chain check."""
        self._own_commits.forget_from(fork_block)
        self._receipt_head = min(self._receipt_head, fork_block - 1)

    async def run(self) -> None:
        """Collect batches forever; cancel to stop (in-flight batches are awaited by `drain`)."""
        while True:
            batch = await self._collector.next_batch()
            await self._slots.acquire()
            self._collector.take_ready(batch)  # what became ready while every slot was busy
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
        """Ask the chain what `job` may do now (`node.miner.verdict.chain_verdict`)."""
        return await chain_verdict(self.hub, self.miner, job, head)

    def _own_verdict(self, job: Job, head: int) -> Verdict | None:
        """The reveal right after our own r = 1 commit receipt; None: ask the chain."""
        return self._own_commits.verdict(job, head)

    # ------------------------------------------------------------------ sending

    async def _submit_batch(self, ids: list[int]) -> None:
        # Another batch is checking or sending some of these (e.g. the follower delivered our
        # ResultCommitted while the commit's receipt was on its way): look again once it is done.
        self._waiting.update(rid for rid in ids if rid in self._busy)
        ids = [rid for rid in ids if rid not in self._busy]
        self._busy.update(ids)
        try:
            await self._check_and_send(ids)
        finally:
            self._release(ids)

    def _release(self, ids: Sequence[int]) -> None:
        """Let go of ids claimed by a batch; those another batch found busy are enqueued again."""
        self._busy.difference_update(ids)
        for rid in ids:
            if rid in self._waiting:
                self._waiting.discard(rid)
                self.enqueue(rid)

    async def _check_and_send(self, ids: list[int]) -> None:
        head = await self._batch_head()
        commits: list[Job] = []
        reveals: list[Job] = []
        rooted: list[tuple[Job, int]] = []
        for rid in ids:
            job = self.journal.get(rid)
            fresh = rid in self._fresh
            self._fresh.discard(rid)
            if job is not None and job.role == Role.VOTER:
                if job.state in COMMIT_STATES + REVEAL_STATES + (JobState.REVEALED,):
                    await self.votes.step(job, head)
                continue
            if job is None or job.state not in COMMIT_STATES + REVEAL_STATES:
                continue
            if fresh and job.state == JobState.UPLOADED and head + 1 <= job.deadline:
                commits.append(job)
                continue
            try:
                v = self._own_verdict(job, head) or await self.verdict(job, head)
            except Exception as exc:
                log.warning("chain_check_failed", request_id=rid, error=f"{type(exc).__name__}: {exc}")
                self.metrics.rpc_errors.labels("submitter").inc()
                self._requeue_later([rid])
                continue
            if v.action == "commit":
                if job.state == JobState.COMMITTING:
                    job = self.journal.mark(rid, JobState.UPLOADED, "committing again")
                commits.append(job)
            elif v.action == "reveal":
                if job.state == JobState.REVEALING:
                    job = self.journal.mark(rid, JobState.COMMITTED, "revealing again")
                reveals.append(job)
            elif v.action == "reveal_batch" and v.mark is not None:
                if job.state == JobState.REVEALING:
                    job = self.journal.mark(rid, JobState.COMMITTED, "revealing again")
                rooted.append((job, v.mark))
            elif v.action == "open_audit":
                await self._open_audit(job)
            elif v.action != "wait":
                self._outcomes.settle(job, v)
        if commits:
            batched, singles = batchroot.plan_commits(
                commits, redundancy=self.redundancy(), enabled=self.hub.batch_roots
            )
            if batched:
                await self._send(batched, JobState.COMMITTING, batch=self._root(batched))
            if singles:
                await self._send(singles, JobState.COMMITTING)
        if reveals:
            await self._send(reveals, JobState.REVEALING)
        if rooted:
            await self._reveal_roots(rooted, set(ids), head)

    async def _batch_head(self) -> int:
        """The head a batch is checked against: the latest block this process saw (the follower's,
        the sweeper's, our receipts'), without an eth_blockNumber per batch. It may lag the chain by
        a block or two, which only errs towards trying: a commit or reveal past its window fails its
        gas estimate, and that job is checked again against the chain's head (`_retry_head`)."""
        known = max(self.head(), self._receipt_head) if self.head is not None else 0
        return known if known > 0 else await self._retry_head()

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

    async def _open_audit(self, job: Job) -> None:
        """Seat the auditor of our drawn result (once per process; the chain check guards restarts)."""
        rid = job.request_id
        if rid in self._audits_opened:
            self._requeue_later([rid], 1.0)
            return
        self._audits_opened.add(rid)
        try:
            receipt = await self.sender.send(self.hub.address, self.hub.open_audit_calldata(rid))
        except (TxError, Exception) as exc:
            self._audits_opened.discard(rid)
            self.metrics.txs.labels("error").inc()
            log.warning("open_audit_failed", request_id=rid, error=f"{type(exc).__name__}: {exc}")
            self._requeue_later([rid], 2.0)
            return
        self.metrics.txs.labels("ok").inc()
        self.metrics.gas_spent_wei.inc(receipt_fee_wei(receipt))
        log.info("audit_opened", request_id=rid, block=int(receipt["blockNumber"]))
        self._requeue_later([rid], 0.5)  # no auditor eligible: reveal now; else wait for RevealOpened

    def _root(self, jobs: Sequence[Job]) -> BatchRecord:
        return batchroot.build(self.miner, [(j.request_id, j.output_digest or b"") for j in jobs])

    async def _send(
        self,
        jobs: list[Job],
        state: JobState,
        *,
        batch: BatchRecord | None = None,
        withheld: frozenset[int] = frozenset(),
        retried: bool = False,
    ) -> None:
        """One commit or reveal transaction for `jobs`. `batch`: a root (`commitBatch` of exactly
        these jobs, or `revealBatch` of every id of the root, `jobs` being the journal's among them);
        `withheld`: ids of the root revealed by their leaf (drawn for audit)."""
        committing = state == JobState.COMMITTING
        ids = [j.request_id for j in jobs]
        digests = [j.output_digest or b"" for j in jobs]
        if batch is not None and committing:
            data = self.hub.commit_batch_calldata(self.miner, batch.ids, batch.digests)
        elif batch is not None:
            data = self.hub.reveal_batch_calldata(self.miner, batch.ids, batch.digests, withheld)
        elif committing:
            data = self.hub.commit_calldata(self.miner, ids, digests)
        else:
            data = self.hub.reveal_calldata(ids, digests)
        what = ("commit" if committing else "reveal") + ("_batch" if batch is not None else "")
        started = time.monotonic()

        def on_signed(tx_hash: str) -> None:
            self.journal.mark_sending(ids, tx_hash, state, batch=batch if committing else None)

        # A root's transaction changes no other seat: one transition's headroom is plenty.
        extra = TRANSITION_GAS if batch is not None else TRANSITION_GAS * len(jobs)
        try:
            receipt = await self.sender.send(self.hub.address, data, extra_gas=extra, on_signed=on_signed)
        except TxWouldRevert as exc:
            self.metrics.txs.labels("would_revert").inc()
            if batch is not None:
                await self._batch_would_revert(jobs, state, batch, exc, retried)
                return
            if len(jobs) > 1:
                log.info("batch_would_revert_splitting", action=what, size=len(jobs), error=str(exc))
                for job in jobs:
                    await self._send([job], state)
                return
            # A single job: let the chain check decide (deadline, already on chain, audit drawn, ...).
            job = jobs[0]
            log.warning(f"{what}_would_revert", request_id=job.request_id, error=str(exc))
            v = await self.verdict(job, await self._retry_head())
            if v.action in ("commit", "reveal", "reveal_batch"):
                self._requeue_later(ids, 2.0)
            elif v.action == "open_audit":
                await self._open_audit(job)
            elif v.action != "wait":
                self._outcomes.settle(job, v)
            return
        except TxReverted as exc:
            self.metrics.txs.labels("reverted").inc()
            self.metrics.gas_spent_wei.inc(receipt_fee_wei(exc.receipt))  # a revert pays gas too
            log.warning(f"{what}_reverted", ids=ids, tx_hash=exc.tx_hash)
            self._requeue_later(ids, 0.5)  # the chain check sorts out each job
            return
        except (TxError, Exception) as exc:
            self.metrics.txs.labels("error").inc()
            log.warning(f"{what}_failed", ids=ids, error=f"{type(exc).__name__}: {exc}")
            self._requeue_later(ids, 2.0)
            return
        block = int(receipt["blockNumber"])
        self._receipt_head = max(self._receipt_head, block)
        gas = int(receipt.get("gasUsed", 0))
        self.metrics.txs.labels("ok").inc()
        self.metrics.tx_gas.inc(gas)
        self.metrics.gas_spent_wei.inc(receipt_fee_wei(receipt))
        self.metrics.batch_size.observe(len(jobs))
        events = self.hub.decode_receipt(receipt)
        log.info("results_committed" if committing else "results_revealed", count=len(jobs), block=block,
                 gas=gas, tx_s=round(time.monotonic() - started, 3), root=batch is not None,
                 withheld=len(withheld))  # fmt: skip
        with self.journal.batch():  # one fsync for the whole batch's marks
            if committing:
                self._after_commit(jobs, events, block, _block_hash(receipt))
            else:
                self._outcomes.after_reveal(jobs, events, block, withheld)

    async def _batch_would_revert(
        self, jobs: list[Job], state: JobState, batch: BatchRecord, exc: TxWouldRevert, retried: bool
    ) -> None:
        """A root's estimate reverted. A commit: check each job, send what may still commit as one
        root again (once), then singly. A reveal cannot be split (the root is all or nothing): the
        chain check looks again, and asks the chain for the root if ours did not match."""
        name = decode_revert(exc.data if isinstance(exc.data, str | bytes) else None).name
        ids = [j.request_id for j in jobs]
        log.info("root_would_revert", state=state.value, size=len(batch.ids), error=name or str(exc))
        if state == JobState.REVEALING:
            if name == "CommitmentMismatch":
                for rid in ids:
                    self.journal.set_commitment(rid, None)
            self._requeue_later(ids, 2.0)
            return
        head = await self._retry_head()
        still: list[Job] = []
        for job in jobs:
            try:
                v = await self.verdict(job, head)
            except Exception as exc:  # RPC trouble: this job is checked again later, the others go on
                log.warning(
                    "chain_check_failed", request_id=job.request_id, error=f"{type(exc).__name__}: {exc}"
                )
                self.metrics.rpc_errors.labels("submitter").inc()
                self._requeue_later([job.request_id])
                continue
            if v.action == "commit":
                still.append(job)
            elif v.action != "wait":
                self._outcomes.settle(job, v)
        if not retried and len(still) >= batchroot.MIN_BATCH:
            await self._send(still, state, batch=self._root(still), retried=True)
            return
        for job in still:
            await self._send([job], state)

    async def _reveal_roots(self, rooted: list[tuple[Job, int]], held: set[int], head: int) -> None:
        """Reveal every root these batch-committed jobs belong to, each in one `revealBatch`.

        A root's other ids are claimed too (`_busy`); when another batch holds one of them, the
        jobs come back later. Ids drawn for audit are withheld.
        """
        done: set[int] = set()
        for job, mark in rooted:
            rid = job.request_id
            if rid in done:
                continue
            try:
                record = await batchroot.resolve(self.hub, self.journal, self.miner, job, mark)
            except Exception as exc:
                log.warning("chain_check_failed", request_id=rid, error=f"{type(exc).__name__}: {exc}")
                self.metrics.rpc_errors.labels("submitter").inc()
                self._requeue_later([rid], 2.0)
                continue
            if record is None:
                # Nothing we hold rebuilds the root on chain: the seat cannot be revealed (it will be
                # timed out as silent). Looked at again later in case a log was not served yet.
                log.error("batch_root_unknown", request_id=rid, commit_block=mark)
                self._requeue_later([rid], 10.0)
                continue
            done.update(record.ids)
            extra = [i for i in record.ids if i not in held]
            if any(i in self._busy for i in extra):
                self._requeue_later([i for i in record.ids if i in held], 0.5)
                continue
            self._busy.update(extra)
            try:
                await self._reveal_root(record, mark, self._own_commits.draws(record.ids, mark, head))
            finally:
                self._release(extra)

    async def _reveal_root(self, record: BatchRecord, mark: int, drawn: Mapping[int, bool] | None) -> None:
        """`drawn`: each id's audit draw from our commit receipt; None: the chain's `auditDrawn`."""
        if drawn is None:
            try:
                flags = await asyncio.gather(*(self.hub.audit_drawn(i) for i in record.ids))
            except Exception as exc:
                log.warning("chain_check_failed", ids=list(record.ids), error=f"{type(exc).__name__}: {exc}")
                self.metrics.rpc_errors.labels("submitter").inc()
                self._requeue_later(list(record.ids), 2.0)
                return
            drawn = dict(zip(record.ids, flags, strict=True))
        withheld = batchroot.withheld(record, drawn)
        jobs: list[Job] = []
        for job in batchroot.members(record, self.journal):
            if job.state in COMMIT_STATES:  # the chain has it under this root: committed
                job = self.journal.mark_committed(job.request_id, mark, record.root)
            if job.state in REVEAL_STATES:
                jobs.append(job)
        if not jobs:  # nothing of ours left open under this root (settled meanwhile)
            return
        await self._send(jobs, JobState.REVEALING, batch=record, withheld=withheld)

    def _after_commit(
        self, jobs: list[Job], events: Sequence[object], block: int, block_hash: bytes | None
    ) -> None:
        """Our commit was mined: mark the journal, keep an r = 1 receipt, queue the reveal."""
        self._outcomes.after_commit(jobs, events, block, block_hash)


def _block_hash(receipt: Any) -> bytes | None:
    """The receipt's block hash as 32 bytes (None when the provider gave none)."""
    value = receipt.get("blockHash")
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    elif isinstance(value, str):
        raw = bytes.fromhex(value.removeprefix("0x"))
    else:
        return None
    return raw if len(raw) == 32 else None


__all__ = ["COMMIT_STATES", "OWN_COMMITS_KEPT", "REVEAL_STATES", "OwnCommit", "Submitter", "Verdict"]
