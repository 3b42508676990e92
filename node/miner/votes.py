"""A seat's escalation votes: commitVote, revealVote, then claimVote when its digest won.

Every active miner of a model that is not seated may vote on an escalation (protocol v2); the
daemon journals a vote job per escalation it joins (`node.miner.disputes`), and the submitter hands
each such job here. Votes are rare, so each step is one transaction, checked against the chain
first (`getRequest`, `getEscalation`) exactly as the submitter checks a commit or reveal; a vote
sent before a crash is recognised by the hub's revert (AlreadyCommitted, AlreadyRevealed,
NothingToClaim) and counts as done.
"""

from __future__ import annotations

from collections.abc import Callable

from node.chain.errors import decode_revert
from node.chain.hub import Phase
from node.chain.sender import TxSender, TxWouldRevert
from node.log import get_logger
from node.miner.hubview import HubView
from node.miner.journal import COMMIT_STATES, Job, JobState, Journal
from node.miner.metrics import MinerMetrics
from node.miner.money import receipt_fee_wei

log = get_logger("inferd.miner.submitter")  # the submitter's logger: its events did not change with the split


class Votes:
    """One step at a time of a vote job (`step`); `settle(job, (action, reason))` ends a job as the
    submitter ends any other, `requeue(ids, delay)` checks it again later."""

    def __init__(
        self,
        *,
        journal: Journal,
        hub: HubView,
        sender: TxSender,
        miner: str,
        metrics: MinerMetrics,
        extra_gas: int,
        settle: Callable[[Job, tuple[str, str]], None],
        requeue: Callable[[list[int], float], None],
    ) -> None:
        self.journal = journal
        self.hub = hub
        self.sender = sender
        self.miner = miner
        self.metrics = metrics
        self.extra_gas = extra_gas
        self.settle = settle
        self.requeue = requeue

    async def step(self, job: Job, head: int) -> None:
        """One step of an escalation vote: commitVote, revealVote after the commit window, then
        claimVote once final if our digest won (single transactions; votes are rare)."""
        rid = job.request_id
        try:
            info = await self.hub.get_request(rid)
            esc = await self.hub.hub.get_escalation(rid)
        except Exception as exc:
            log.warning("chain_check_failed", request_id=rid, error=f"{type(exc).__name__}: {exc}")
            self.requeue([rid], 2.0)
            return
        if info is None or esc.challenger is None:
            self.settle(job, ("dropped", "no escalation on chain (reorg?)"))
            return
        digest = job.output_digest or b""
        if job.state == JobState.REVEALED:
            if info.phase != Phase.FINAL:
                return  # InferenceFinalized enqueues the claim
            if digest == info.output_digest and esc.voter_share > 0:
                await self._tx(job, "claim")
            self.journal.mark(
                rid, JobState.FINALIZED, "vote won" if digest == info.output_digest else "vote lost"
            )
            return
        if info.phase != Phase.VOTE:
            self.settle(job, ("expired", f"escalation over (phase {info.phase.name})"))
        elif job.state in COMMIT_STATES:
            if head + 1 > esc.commit_end:
                self.settle(job, ("dropped", f"vote commit window closed at {esc.commit_end}"))
            elif await self._tx(job, "commit"):
                self.journal.mark_committed(rid, None)
        elif head + 1 <= esc.commit_end:
            return  # reveal from block commitEnd + 1 (the sweeper re-checks committed jobs)
        elif head + 1 > esc.reveal_end:
            self.settle(job, ("expired", f"vote reveal window closed at {esc.reveal_end}"))
        elif await self._tx(job, "reveal"):
            self.journal.mark_revealed(rid, None)

    async def _tx(self, job: Job, action: str) -> bool:
        """Send one vote transaction; True when it (or an earlier one) is on chain."""
        rid = job.request_id
        data = self.hub.vote_calldata(action, self.miner, rid, job.output_digest or b"")
        state = {"commit": JobState.COMMITTING, "reveal": JobState.REVEALING}.get(action)

        def on_signed(tx_hash: str) -> None:
            if state is not None:
                self.journal.mark_sending([rid], tx_hash, state)

        try:
            receipt = await self.sender.send(
                self.hub.address, data, extra_gas=self.extra_gas, on_signed=on_signed
            )
        except TxWouldRevert as exc:
            name = decode_revert(exc.data if isinstance(exc.data, str | bytes) else None).name
            if name in ("AlreadyCommitted", "AlreadyRevealed", "NothingToClaim"):
                return True  # sent before a crash, or nothing to collect
            log.warning("vote_would_revert", request_id=rid, action=action, error=str(exc))
            self.requeue([rid], 2.0)
            return False
        except Exception as exc:
            self.metrics.txs.labels("error").inc()
            log.warning("vote_failed", request_id=rid, action=action, error=f"{type(exc).__name__}: {exc}")
            self.requeue([rid], 2.0)
            return False
        self.metrics.txs.labels("ok").inc()
        self.metrics.gas_spent_wei.inc(receipt_fee_wei(receipt))
        log.info("vote_sent", request_id=rid, action=action, block=int(receipt["blockNumber"]))
        return True


__all__ = ["Votes"]
