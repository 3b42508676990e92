"""What a job may do now: the chain's answer (`chain_verdict`), or our own receipt's (`OwnCommits`).

Split out of the submitter, which only acts on the answer: this module reads, it sends nothing
and marks nothing.

Before a job goes into a transaction the chain is asked what it may do now: commit while its
seat's commit window is open and nothing of ours is on chain; reveal once the reveal window is
open. For an r = 1 assignee the reveal comes in a later block than the commit, and only if the
result was not drawn for audit (`auditDrawn`, evaluated on the pending block): when it was,
`openAudit` is sent instead and the reveal waits for the auditor's commit (`RevealOpened`). That
check is what makes resending after a crash or reorg safe; the journal records each signed
transaction's hash before broadcast, and the contract rejects a second commit or reveal anyway.

The reveal right after our own r = 1 commit receipt skips the chain's view (an eth_call per job)
because this process already knows the answer: that receipt put the request in phase Reveal with
the commit block as its mark, and the audit draw is `hubview.audit_draw` over the receipt's block
hash and the model's auditBps (registered once, never changed). Each receipt is used once; a
reorg of the commit block, a restart or a retry goes through the chain check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node.chain.hub import Phase, RequestFlag
from node.miner.hubview import BLOCKHASH_WINDOW, COMMIT_PHASES, REVEAL_PHASES, HubView, audit_draw
from node.miner.journal import COMMIT_STATES, REVEAL_STATES, Job, JobState, Journal

OWN_COMMITS_KEPT = 10_000
"""Our r = 1 commit receipts remembered for the reveal (oldest forgotten first: then the chain says)."""


@dataclass(frozen=True)
class Verdict:
    """What the chain says about one job now.

    action: "commit" | "reveal" | "reveal_batch" | "open_audit" | "wait" | "committed" | "revealed"
    | "finalized" | "expired" | "dropped" | "recommit". `mark`: the root's commit block
    ("reveal_batch").
    """

    action: str
    reason: str = ""
    mark: int | None = None


@dataclass(frozen=True)
class OwnCommit:
    """Our receipt of an r = 1 assignee commit: the block that is now the request's mark."""

    block: int
    block_hash: bytes


async def chain_verdict(hub: HubView, miner: str, job: Job, head: int) -> Verdict:
    """Ask the chain what `job` of `miner` may do now, `head` being the latest block known."""
    info = await hub.get_request(job.request_id)
    if info is None:
        return Verdict("dropped", "request unknown on chain (reorged out?)")
    if info.input_digest != job.input_digest:
        return Verdict("dropped", "input digest changed on chain (reorg)")
    me = miner
    if info.phase == Phase.FINAL:
        if info.has_revealed(me):
            return Verdict("finalized", "our result is on chain")
        return Verdict("expired", "finalized without our result")
    if info.phase == Phase.REFUNDED:
        return Verdict("expired", "request refunded")
    if info.phase == Phase.PENDING:  # a seat we drew ourselves (miner.speculate)
        return Verdict("wait", "not assigned yet: InferenceAssigned queues the commit")
    if info.seat_of(me) is None:
        return Verdict("dropped", "no longer seated (reassigned)")
    if info.has_revealed(me):
        return Verdict("revealed", "our digest is on chain")
    if not info.has_committed(me):
        if job.state in REVEAL_STATES:
            return Verdict("recommit", "our commitment is not on chain (reorg)")
        if info.phase not in COMMIT_PHASES:
            return Verdict("dropped", f"commit window closed (phase {info.phase.name})")
        if head + 1 > info.mark:
            return Verdict("dropped", f"deadline {info.mark} passed (head {head})")
        return Verdict("commit")
    if job.state in COMMIT_STATES:
        return Verdict("committed", "our commitment is on chain")
    ph = info.phase
    if ph == Phase.REVEAL and info.redundancy == 1 and RequestFlag.BATCH in info.flags:
        return Verdict("reveal_batch", "committed under a root", info.mark)
    if ph == Phase.REVEAL and info.redundancy == 1 and RequestFlag.AUDITED not in info.flags:
        if await hub.audit_drawn(job.request_id):
            return Verdict("open_audit", "drawn for audit")
        return Verdict("reveal")
    if ph in REVEAL_PHASES:
        if head + 1 > info.mark:
            return Verdict("expired", f"reveal window closed at {info.mark} (head {head})")
        return Verdict("reveal")
    if ph in (Phase.RESOLVED, Phase.VOTE):
        return Verdict("expired", "resolved without our reveal")
    return Verdict("wait", f"phase {ph.name}: other seats are committing")


class OwnCommits:
    """Our r = 1 assignee commit receipts, each the answer for one reveal without the chain.

    `redundancy` and `audit_bps` are the model's (None while unknown: every reveal asks the chain).
    """

    def __init__(
        self,
        *,
        journal: Journal,
        redundancy: Callable[[], int | None],
        audit_bps: Callable[[], int | None],
        kept: int = OWN_COMMITS_KEPT,
    ) -> None:
        self.journal = journal
        self.redundancy = redundancy
        self.audit_bps = audit_bps
        self.kept = kept
        self._commits: dict[int, OwnCommit] = {}

    def remember(self, request_id: int, block: int, block_hash: bytes) -> None:
        """Our receipt put `request_id` in phase Reveal, marked at `block` (oldest forgotten first)."""
        self._commits[request_id] = OwnCommit(block, block_hash)
        while len(self._commits) > self.kept:
            del self._commits[next(iter(self._commits))]

    def forget_from(self, fork_block: int) -> None:
        """Forget receipts from replaced blocks: their jobs go through the chain check."""
        for rid in [r for r, own in self._commits.items() if own.block >= fork_block]:
            del self._commits[rid]

    def verdict(self, job: Job, head: int) -> Verdict | None:
        """The reveal of a job right after our own r = 1 commit receipt, without the chain (module
        docstring); None: unsure (not ours to judge, already tried, too old), ask the chain."""
        own = self._commits.get(job.request_id)
        if own is None or job.state != JobState.COMMITTED or job.commit_block != own.block:
            self._commits.pop(job.request_id, None)
            return None
        if job.commitment is not None and self.journal.batch_record(job.commitment) is not None:
            return Verdict("reveal_batch", "committed under a root (our receipt)", own.block)
        drawn = self.draws([job.request_id], own.block, head)
        if drawn is None:
            return None
        if drawn[job.request_id]:
            return Verdict("open_audit", "drawn for audit (our receipt's block)")
        return Verdict("reveal")

    def draws(self, ids: Sequence[int], mark: int, head: int) -> dict[int, bool] | None:
        """The audit draw of each id from our commit receipts of block `mark` (used once: a retry
        asks the chain); None when one of them is not ours to judge."""
        owns = [self._commits.pop(i, None) for i in ids]
        bps = self.audit_bps()
        if bps is None or self.redundancy() != 1 or not mark <= head < mark + BLOCKHASH_WINDOW // 2:
            return None
        if any(own is None or own.block != mark for own in owns):
            return None
        return {i: audit_draw(own.block_hash, i, bps) for i, own in zip(ids, owns, strict=True) if own}


__all__ = ["OWN_COMMITS_KEPT", "OwnCommit", "OwnCommits", "Verdict", "chain_verdict"]
