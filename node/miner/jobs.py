"""Jobs as the miner's journal holds them: the record, its states and the transitions allowed.

This is the state machine of a seat, kept apart from its storage (`node.miner.journal`) because
most of the miner (seats, submitter, votes, disputes, resume, the daemon) reasons about jobs and
their states without touching SQLite, and the diagram below is read beside the states it names.

A job is one seat of this miner on one request (protocol v2): an assignee seat (`InferenceAssigned`),
an audit (`AuditOpened`) or a committee seat (`CommitteeOpened`), or a vote on an escalated request
(`EscalationOpened`; voters hold no seat). Every role does the same work (run the input document,
commit to the output's digest, reveal it), and a job's state advances only after its effect is
durable:

    new ─▶ uploaded ─▶ committing ─▶ committed ─▶ revealing ─▶ revealed ─▶ finalized
     │        │            │             │            │            └─────▶ expired (refunded, or the
     │        │            │             │            │                     outcome went on without us)
     └────────┴────────────┴─────────────┴────────────┴─────────────────▶ dropped / expired
                                                                         failed (unrecoverable)

* `new`: the seat (request id, role, input digest, commit deadline, the request's declared max tokens
  and block timestamp) is on disk.
* Fetching and inference have no durable effect of their own, so they are not journaled states: a
  crash there simply redoes them (the output is deterministic, so the redo writes the same bytes).
* `uploaded`: the output document is stored under its CID and its digest and signature are here (or
  the digest is `UNAVAILABLE`: the input could not be fetched before the deadline's margin).
* `committing` / `revealing`: the signed transaction's hash is recorded *before* it is broadcast, so
  after a crash the daemon looks that hash up (and the request on chain) instead of sending again.
  Commit and reveal each have their own list of hashes: each is broadcast once across crashes.
* `committed` / `revealed`: a receipt or an event shows our commitment / digest on chain.
* `finalized`: InferenceFinalized was seen (whatever the outcome: money moves are the hub's events).

`TRANSITIONS` is what `Journal` enforces on every state change (`InvalidTransition` otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    """Where a job is; see the module docstring for what each state guarantees."""

    NEW = "new"
    UPLOADED = "uploaded"
    COMMITTING = "committing"
    COMMITTED = "committed"
    REVEALING = "revealing"
    REVEALED = "revealed"
    FINALIZED = "finalized"
    EXPIRED = "expired"
    DROPPED = "dropped"
    FAILED = "failed"


class Role(StrEnum):
    """Why this miner holds a seat on the request."""

    ASSIGNEE = "assignee"
    AUDITOR = "auditor"
    COMMITTEE = "committee"
    VOTER = "voter"  # not a seat: an escalation vote (commitVote / revealVote / claimVote)


UNFINISHED = frozenset(
    {JobState.NEW, JobState.UPLOADED, JobState.COMMITTING, JobState.COMMITTED, JobState.REVEALING}
)
"""States in which this miner still owes work; every one of them is resumed on restart."""
OPEN = UNFINISHED | {JobState.REVEALED}
"""States in which the request is not settled yet (we still follow its events)."""
TERMINAL = frozenset({JobState.FINALIZED, JobState.EXPIRED, JobState.DROPPED, JobState.FAILED})
SENDING = {JobState.COMMITTING: "commit_txs", JobState.REVEALING: "reveal_txs"}
COMMIT_STATES = (JobState.UPLOADED, JobState.COMMITTING)
"""States of a job whose commit (or vote commit) is still to land."""
REVEAL_STATES = (JobState.COMMITTED, JobState.REVEALING)
"""States of a job whose reveal (or vote reveal) is still to land."""

_S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.NEW: frozenset({_S.UPLOADED, _S.COMMITTED} | TERMINAL),
    _S.UPLOADED: frozenset({_S.COMMITTING, _S.COMMITTED, _S.NEW} | TERMINAL),
    _S.COMMITTING: frozenset({_S.COMMITTING, _S.COMMITTED, _S.UPLOADED, _S.NEW} | TERMINAL),
    _S.COMMITTED: frozenset({_S.REVEALING, _S.REVEALED, _S.UPLOADED, _S.NEW} | TERMINAL),
    _S.REVEALING: frozenset({_S.REVEALING, _S.REVEALED, _S.COMMITTED, _S.UPLOADED} | TERMINAL),
    _S.REVEALED: frozenset({_S.COMMITTED, _S.UPLOADED, _S.NEW} | TERMINAL),
    # Back from a settled state only after a reorg (re-checked against the chain) or a new seat.
    _S.FINALIZED: frozenset({_S.NEW, _S.UPLOADED, _S.COMMITTED, _S.REVEALED}),
    _S.EXPIRED: frozenset({_S.NEW, _S.UPLOADED, _S.COMMITTED, _S.REVEALED, _S.FINALIZED}),
    _S.DROPPED: frozenset({_S.NEW, _S.UPLOADED, _S.COMMITTED, _S.REVEALED, _S.FINALIZED}),
    _S.FAILED: frozenset({_S.NEW}),
}
"""For each state, the states a job may move to (staying put is always allowed)."""


@dataclass(frozen=True)
class Job:
    """One assigned request, as the journal holds it."""

    request_id: int
    input_digest: bytes
    deadline: int  # the seat's commit deadline (block)
    block_number: int  # of the event that gave us the seat
    block_hash: str
    created: int  # the request block's timestamp (output documents' `created`); 0: not known yet
    state: JobState
    role: Role = Role.ASSIGNEE
    max_tokens: int | None = None  # declared on chain by the requester; None: not known yet
    output_digest: bytes | None = None
    signature: str | None = None
    commit_txs: tuple[str, ...] = ()
    commit_block: int | None = None
    commitment: bytes | None = None  # what our ResultCommitted carried (a leaf, or a batch root)
    reveal_txs: tuple[str, ...] = ()
    reveal_block: int | None = None
    reason: str | None = None
    attempts: int = 0
    assigned_at: float = 0.0
    updated_at: float = 0.0

    @property
    def tx_hashes(self) -> tuple[str, ...]:
        """Every transaction hash recorded for this job (commits, then reveals)."""
        return self.commit_txs + self.reveal_txs


__all__ = [
    "COMMIT_STATES",
    "OPEN",
    "REVEAL_STATES",
    "SENDING",
    "TERMINAL",
    "TRANSITIONS",
    "UNFINISHED",
    "Job",
    "JobState",
    "Role",
]
