"""Resume after a restart: every unfinished job picks up from its last durable journal state.

Apart from the daemon because it runs once, at start, and answers one question per job that the
running daemon never asks: what happened while we were down? A crash can fall between recording a
transaction's hash (`committing`/`revealing`) and seeing its receipt, so those receipts are read
back first: a commit or reveal that landed is journaled as such and never broadcast again; one that
did not is left to the submitter's chain check, which sends it again, waits or settles. A `new` job
is produced again (the engine is deterministic: the same bytes and signature), a result not yet
sent is queued, and a revealed job learns whether its request was finalized or refunded meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.chain.events import InferenceFinalized, ResultCommitted, ResultRevealed, VoteCommitted, VoteRevealed
from node.chain.hub import HubClient, Phase
from node.log import get_logger
from node.miner.hubview import HubView
from node.miner.journal import OPEN, Job, JobState, Journal
from node.miner.submitter import Submitter
from node.supervise import Supervisor

log = get_logger("inferd.miner")


def _by(ev: object, me: str, committing: bool) -> bool:
    """Whether `ev` is our commit (`committing`) or reveal, of a seat or of a vote."""
    if committing:
        return (isinstance(ev, ResultCommitted) and ev.miner == me) or (
            isinstance(ev, VoteCommitted) and ev.voter == me
        )
    return (isinstance(ev, ResultRevealed) and ev.miner == me) or (
        isinstance(ev, VoteRevealed) and ev.voter == me
    )


@dataclass(frozen=True)
class Resume:
    """The parts of one daemon that resuming its journal acts through; `schedule(rid)` produces a job."""

    address: str
    hub: HubClient
    view: HubView
    journal: Journal
    submitter: Submitter
    loops: Supervisor
    schedule: Callable[[int], None]

    async def jobs(self) -> None:
        """Pick up every unfinished job from its last durable state (one that raises is skipped)."""
        jobs = self.journal.jobs(OPEN)
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
            with self.loops.guard("resume", request_id=job.request_id, state=job.state.value):
                await self._job(job)
        if jobs:
            log.info("resumed_jobs", **counts)

    async def _job(self, job: Job) -> None:
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
        except Exception as exc:  # the follower's InferenceFinalized still settles it; the start goes on
            log.info("resume_check_failed", request_id=job.request_id, error=f"{type(exc).__name__}: {exc}")
            return
        if info is None:
            self.journal.mark(job.request_id, JobState.UPLOADED, "request vanished (reorg)")
            self.submitter.enqueue(job.request_id)
        elif info.phase == Phase.FINAL:
            self.journal.mark(job.request_id, JobState.FINALIZED)
        elif info.phase == Phase.REFUNDED:
            self.journal.mark(job.request_id, JobState.EXPIRED, "refunded")
