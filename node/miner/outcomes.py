"""What the submitter learnt, written to the journal: a verdict that sends nothing, a mined receipt.

Split out of the submitter, which decides what to send and sends it; this is the other half of a
job's step, after the chain answered. Each outcome marks the journal and says where the job goes
next: settled (`on_settled`), on to its next transaction now (`enqueue`), or looked at again
later (`requeue`, when a receipt lacks the job's event and the chain check has to sort it out).
A commit receipt of an r = 1 assignee seat is also kept (`OwnCommits`): it answers the reveal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from node.chain.events import InferenceFinalized, ResultCommitted, ResultRevealed
from node.log import get_logger
from node.miner.journal import COMMIT_STATES, REVEAL_STATES, TERMINAL, Job, JobState, Journal, Role
from node.miner.metrics import MinerMetrics
from node.miner.verdict import OwnCommits, Verdict

log = get_logger("inferd.miner.submitter")  # the submitter's logger: its events did not change with the split


class Outcomes:
    """Applies verdicts (`settle`) and receipts (`after_commit`, `after_reveal`) to the journal.

    `redundancy`: the model's r (None while unknown); `enqueue(id)`: act on a job soon;
    `requeue(ids, delay)`: look at jobs again after `delay` seconds; `on_settled(job)`: a job
    reached a state this process no longer acts on (revealed, finalized, dropped, expired).
    """

    def __init__(
        self,
        *,
        journal: Journal,
        metrics: MinerMetrics,
        miner: str,
        redundancy: Callable[[], int | None],
        own_commits: OwnCommits,
        enqueue: Callable[[int], None],
        requeue: Callable[[list[int], float], None],
        on_settled: Callable[[Job], None] | None,
    ) -> None:
        self.journal = journal
        self.metrics = metrics
        self.miner = miner
        self.redundancy = redundancy
        self.own_commits = own_commits
        self.enqueue = enqueue
        self.requeue = requeue
        self.on_settled = on_settled

    def settle(self, job: Job, v: Verdict, block: int | None = None) -> None:
        """Apply a verdict that sends nothing to the journal."""
        rid = job.request_id
        current = self.journal.get(rid)
        if current is None or current.state in TERMINAL:
            return
        if v.action == "recommit":
            self.journal.mark(rid, JobState.UPLOADED, v.reason)
            self.enqueue(rid)
            return
        if v.action in ("committed", "revealed", "finalized") and current.state in COMMIT_STATES:
            current = self.journal.mark_committed(rid, block)
            if v.action == "committed":
                self.enqueue(rid)  # on to the reveal
                return
        if v.action in ("revealed", "finalized") and current.state in REVEAL_STATES:
            current = self.journal.mark_revealed(rid, block)
        if v.action == "finalized":
            current = self.journal.mark(rid, JobState.FINALIZED, v.reason)
        elif v.action in ("dropped", "expired"):
            state = JobState.DROPPED if v.action == "dropped" else JobState.EXPIRED
            log.warning("job_closed", request_id=rid, state=state.value, reason=v.reason)
            current = self.journal.mark(rid, state, v.reason)
        else:
            return
        self.metrics.jobs_done.labels(current.state.value).inc()
        if self.on_settled is not None:
            self.on_settled(current)

    def after_commit(
        self, jobs: list[Job], events: Sequence[object], block: int, block_hash: bytes | None
    ) -> None:
        """Our commit of `jobs` was mined in `block` with these (decoded) `events`."""
        done = {
            e.id: e.commitment for e in events if isinstance(e, ResultCommitted) and e.miner == self.miner
        }
        single = self.redundancy() == 1
        for job in jobs:
            rid = job.request_id
            if rid not in done:
                self.requeue([rid], 0.5)
                continue
            current = self.journal.get(rid) or job
            if current.state in COMMIT_STATES:
                current = self.journal.mark_committed(rid, block, done[rid])
            # The follower may have marked it committed from the same block's ResultCommitted first.
            ours = current.state == JobState.COMMITTED and current.commit_block == block
            if ours and single and block_hash is not None and job.role == Role.ASSIGNEE:
                # an r = 1 seat's commit from phase Assigned: Reveal now, marked at this block
                self.own_commits.remember(rid, block, block_hash)
            self.enqueue(rid)  # the reveal: the chain check says when (now, or after RevealOpened)

    def after_reveal(
        self, jobs: list[Job], events: Sequence[object], block: int, withheld: frozenset[int] = frozenset()
    ) -> None:
        """Our reveal of `jobs` was mined in `block`; `withheld`: ids of a root revealed by their leaf."""
        done = {e.id for e in events if isinstance(e, ResultRevealed) and e.miner == self.miner}
        finalized = {e.id for e in events if isinstance(e, InferenceFinalized)}
        for job in jobs:
            rid = job.request_id
            if rid in withheld:  # its leaf is on chain now: on to openAudit, then the single reveal
                current = self.journal.get(rid) or job
                if current.state == JobState.REVEALING:
                    self.journal.mark(rid, JobState.COMMITTED, "withheld for audit")
                self.enqueue(rid)
                continue
            if rid not in done:
                self.requeue([rid], 0.5)
                continue
            current = self.journal.get(rid) or job
            if current.state in REVEAL_STATES:
                current = self.journal.mark_revealed(rid, block)
            self.metrics.job_latency.observe(max(0.0, time.time() - job.assigned_at))
            if rid in finalized and current.state == JobState.REVEALED:
                current = self.journal.mark(rid, JobState.FINALIZED)
                self.metrics.jobs_done.labels(current.state.value).inc()
            if self.on_settled is not None:
                self.on_settled(current)


__all__ = ["Outcomes"]
