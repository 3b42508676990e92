"""The miner's job journal: SQLite in WAL mode with `synchronous=FULL`, the source of crash safety.

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

The same database keeps the chain watcher's cursor and recent block hashes (reorg detection), and a
small `requests` table of what `InferenceRequested` declared (max tokens, block timestamp): a seat is
drawn in a later block than the request, and the output's `created` is the request block's time.

A commit of several r = 1 assignee seats goes on chain as one batch root (`commitBatch`, see
`node.miner.batchroot`); its reveal (`revealBatch`) must name the very same ids and leaves. So the
`batches` table keeps, for each root, the ids and digests it was built from, written with the
commit's transaction hash *before* the broadcast; and a job's `commitment` column keeps what its
`ResultCommitted` event carried (the leaf, or the root for a batch) once a receipt or an event shows
it, NULL while unknown (then the reveal asks the chain for the root).

An `escalations` table records this miner's own challenges (`escalate`, bonded with minStake) of a
provisional outcome its seat lost: `sending` with the signed transaction's hash before broadcast,
then `sent`, or `missed` (the window closed first). A request is escalated at most once across
crashes (`node.miner.disputes`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


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


class EscalationState(StrEnum):
    """Our own challenge of a provisional outcome (see the module docstring)."""

    SENDING = "sending"
    SENT = "sent"
    MISSED = "missed"


@dataclass(frozen=True)
class EscalationRecord:
    request_id: int
    state: EscalationState
    txs: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class BatchRecord:
    """One batch root as we built it: `root = batch_root(ids, [commitment(d, miner, id)...])`,
    ids strictly ascending, digests in the same order."""

    root: bytes
    ids: tuple[int, ...]
    digests: tuple[bytes, ...]


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
_ALLOWED: dict[JobState, frozenset[JobState]] = {
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


class JournalError(RuntimeError):
    """The journal file cannot be used (corrupt, locked by another miner, wrong schema)."""


class InvalidTransition(JournalError):
    """A state change the state machine forbids: a bug, never a normal runtime event."""

    def __init__(self, request_id: int, old: JobState, new: JobState) -> None:
        super().__init__(f"job {request_id}: {old.value} -> {new.value} is not a valid transition")


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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    request_id    INTEGER PRIMARY KEY,
    input_digest  BLOB NOT NULL,
    deadline      INTEGER NOT NULL,
    block_number  INTEGER NOT NULL,
    block_hash    TEXT NOT NULL,
    created       INTEGER NOT NULL,
    state         TEXT NOT NULL,
    role          TEXT NOT NULL,
    max_tokens    INTEGER,
    output_digest BLOB,
    signature     TEXT,
    commit_txs    TEXT NOT NULL DEFAULT '[]',
    commit_block  INTEGER,
    reveal_txs    TEXT NOT NULL DEFAULT '[]',
    reveal_block  INTEGER,
    commitment    BLOB,
    reason        TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    assigned_at   REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS requests (
    request_id    INTEGER PRIMARY KEY,
    max_tokens    INTEGER NOT NULL,
    block_number  INTEGER NOT NULL,
    created       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS escalations (
    request_id    INTEGER PRIMARY KEY,
    state         TEXT NOT NULL,
    txs           TEXT NOT NULL DEFAULT '[]',
    reason        TEXT,
    updated_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    root          BLOB PRIMARY KEY,
    ids           TEXT NOT NULL,
    digests       TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS block_hashes (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
"""
_COLUMNS = (
    "request_id, input_digest, deadline, block_number, block_hash, created, state, role, max_tokens, "
    "output_digest, signature, commit_txs, commit_block, reveal_txs, reveal_block, commitment, reason, "
    "attempts, assigned_at, updated_at"
)
SCHEMA_VERSION = "3"
_MIGRATIONS = {
    # 2 -> 3: batch roots (`batches`, created by _SCHEMA) and each job's on-chain commitment.
    "2": ("ALTER TABLE jobs ADD COLUMN commitment BLOB",),
}
"""Schema upgrades in place, keyed by the version they start from (each ends one version later)."""


def _row_to_job(row: Any) -> Job:
    (
        rid,
        inp,
        deadline,
        bn,
        bh,
        created,
        state,
        role,
        mt,
        out,
        sig,
        ctx,
        cb,
        rtx,
        rb,
        commitment,
        reason,
        attempts,
        at,
        ut,
    ) = row
    return Job(
        request_id=int(rid),
        input_digest=bytes(inp),
        deadline=int(deadline),
        block_number=int(bn),
        block_hash=str(bh),
        created=int(created),
        state=JobState(str(state)),
        role=Role(str(role)),
        max_tokens=int(mt) if mt is not None else None,
        output_digest=bytes(out) if out is not None else None,
        signature=str(sig) if sig is not None else None,
        commit_txs=tuple(json.loads(str(ctx))),
        commit_block=int(cb) if cb is not None else None,
        reveal_txs=tuple(json.loads(str(rtx))),
        reveal_block=int(rb) if rb is not None else None,
        commitment=bytes(commitment) if commitment is not None else None,
        reason=str(reason) if reason is not None else None,
        attempts=int(attempts),
        assigned_at=float(at),
        updated_at=float(ut),
    )


class Journal:
    """Durable job records plus the watcher cursor; thread-safe, one writer process per file.

    Every write is a committed transaction with `synchronous=FULL`: when a method returns, the
    change survives a power cut. Calls are short (one row), so they run inline on the event loop.
    """

    def __init__(self, path: Path, scope: str = "") -> None:
        self.path = path
        self.scope = scope
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"cannot open the miner journal {path}: {exc}; move it away to start fresh"
            ) from exc
        self._lock = threading.RLock()
        self._batching = False
        self._check_scope()

    def _check_scope(self) -> None:
        """Refuse a journal written for another chain/hub/miner: its jobs and cursor mean nothing here."""
        stored = self.get_meta("scope")
        schema = self._migrate(self.get_meta("schema")) if stored is not None else None
        if stored is not None and schema != SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path} was written by an older miner (schema {schema}, protocol v1); "
                "move it away to start fresh (its jobs belong to an old hub)"
            )
        if stored is None:
            self.set_meta("scope", self.scope)
            self.set_meta("schema", SCHEMA_VERSION)
        elif self.scope and stored != self.scope:
            raise JournalError(
                f"journal {self.path} belongs to {stored!r}, not {self.scope!r}; "
                "use another miner.journal_path (or data_dir) per chain, hub and key"
            )

    def _migrate(self, schema: str | None) -> str | None:
        """Upgrade an older journal in place (operators upgrade the miner over its data dir); each
        step is one transaction, so a crash mid-upgrade leaves the file at a version it can resume."""
        while schema in _MIGRATIONS:
            nxt = str(int(schema) + 1)
            with self._tx() as db:
                for statement in _MIGRATIONS[schema]:
                    db.execute(statement)
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema', ?)", (nxt,))
            schema = nxt
        return schema

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._batching:  # inside `batch`: atomic on its own, durable when the batch commits
                self._db.execute("SAVEPOINT write")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK TO write")
                    self._db.execute("RELEASE write")
                    raise
                self._db.execute("RELEASE write")
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make the writes inside one transaction: one fsync instead of one each (issue 14: at load,
        a miner spent a fifth of its event loop in the commits of a block's events one by one).

        Each write stays atomic (a savepoint) and one that raises is undone alone; all become
        durable together when the block exits, so do nothing in it that relies on an earlier write
        being durable already (e.g. publishing a signature). Nested batches join the outer one.
        """
        with self._lock:
            if self._batching:
                yield
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._batching = True
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._batching = False
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ meta / cursor

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # The watcher's CursorStore protocol.

    def load_cursor(self) -> int | None:
        value = self.get_meta("cursor")
        return None if value is None else int(value)

    def save_cursor(self, block: int, hashes: dict[int, str], keep: int = 256) -> None:
        """Advance the cursor and remember block hashes in one transaction; prune old hashes."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO block_hashes(number, hash) VALUES (?, ?)", sorted(hashes.items())
            )
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('cursor', ?)", (str(block),))
            db.execute("DELETE FROM block_hashes WHERE number <= ?", (block - keep,))

    def recent_hashes(self) -> dict[int, str]:
        with self._lock:
            rows = self._db.execute("SELECT number, hash FROM block_hashes ORDER BY number").fetchall()
        return {int(n): str(h) for n, h in rows}

    def rewind(self, block: int) -> None:
        """Set the cursor back to `block` and forget hashes above it (after a reorg)."""
        with self._tx() as db:
            db.execute("DELETE FROM block_hashes WHERE number > ?", (block,))
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('cursor', ?)", (str(block),))

    # ------------------------------------------------------------------ jobs

    def get(self, request_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE request_id = ?",  # noqa: S608 - constant columns
                (request_id,),
            ).fetchone()
        return None if row is None else _row_to_job(row)

    def jobs(self, states: Iterable[JobState] | None = None) -> list[Job]:
        """Jobs in any of `states` (all when None), oldest request first."""
        with self._lock:
            if states is None:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY request_id").fetchall()  # noqa: S608 - column list is a constant
            else:
                wanted = [s.value for s in states]
                marks = ",".join("?" * len(wanted))
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY request_id",  # noqa: S608
                    wanted,
                ).fetchall()
        return [_row_to_job(r) for r in rows]

    def counts(self) -> dict[JobState, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(JobState, 0)
        for state, n in rows:
            out[JobState(state)] = int(n)
        return out

    # ------------------------------------------------------------------ requests (InferenceRequested)

    def record_request(self, request_id: int, *, max_tokens: int, block_number: int, created: int) -> None:
        """What the request declared, kept until a seat on it comes (idempotent; a reorg overwrites)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO requests(request_id, max_tokens, block_number, created) "
                "VALUES (?, ?, ?, ?)",
                (request_id, max_tokens, block_number, created),
            )
            db.execute(
                "UPDATE jobs SET max_tokens = ?, created = ? WHERE request_id = ? AND state IN ('new')",
                (max_tokens, created, request_id),
            )

    def request_meta(self, request_id: int) -> tuple[int, int] | None:
        """(max tokens, request block timestamp) from `InferenceRequested`, None when not seen."""
        with self._lock:
            row = self._db.execute(
                "SELECT max_tokens, created FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def forget_requests(self, before_block: int) -> None:
        """Drop request records older than `before_block` that no open job needs (bounded size)."""
        with self._tx() as db:
            db.execute("DELETE FROM requests WHERE block_number < ?", (before_block,))

    # ------------------------------------------------------------------ escalations (our challenges)

    def escalation(self, request_id: int) -> EscalationRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT request_id, state, txs, reason FROM escalations WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None:
            return None
        return EscalationRecord(
            int(row[0]), EscalationState(str(row[1])), tuple(json.loads(str(row[2]))), row[3]
        )

    def escalations(self, states: Iterable[EscalationState]) -> list[EscalationRecord]:
        wanted = [s.value for s in states]
        with self._lock:
            rows = self._db.execute(
                f"SELECT request_id FROM escalations WHERE state IN ({','.join('?' * len(wanted))}) "  # noqa: S608
                "ORDER BY request_id",
                wanted,
            ).fetchall()
        return [rec for (rid,) in rows if (rec := self.escalation(int(rid))) is not None]

    def mark_escalation(
        self,
        request_id: int,
        state: EscalationState,
        *,
        tx_hash: str | None = None,
        reason: str | None = None,
    ) -> EscalationRecord:
        """Record our escalation's state (and a signed transaction's hash, before it is broadcast)."""
        with self._tx() as db:
            row = db.execute("SELECT txs FROM escalations WHERE request_id = ?", (request_id,)).fetchone()
            txs: list[str] = json.loads(str(row[0])) if row is not None else []
            if tx_hash is not None and tx_hash not in txs:
                txs.append(tx_hash)
            db.execute(
                "INSERT OR REPLACE INTO escalations(request_id, state, txs, reason, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (request_id, state.value, json.dumps(txs), reason, time.time()),
            )
        return EscalationRecord(request_id, state, tuple(txs), reason)

    # ------------------------------------------------------------------ seats

    def assign(
        self,
        request_id: int,
        *,
        input_digest: bytes,
        deadline: int,
        block_number: int,
        block_hash: str,
        role: Role = Role.ASSIGNEE,
        created: int | None = None,
        max_tokens: int | None = None,
    ) -> tuple[Job, bool]:
        """Record a seat; returns (job, changed). Idempotent for a re-seen event.

        `created` / `max_tokens` default to what `record_request` kept. A job that already exists
        from the same event block is left alone. From another block (a reorg re-mined it, or a new
        seat: reassignment, audit, committee) the job keeps its output when the input is the same
        (the output depends only on request id, input and request time), and restarts from where
        the chain will tell: `committed`/`revealed` stay (the submitter re-checks them), a settled
        job reopens as `uploaded` (or `new` without output).
        """
        now = time.time()
        meta = self.request_meta(request_id)
        if meta is not None:
            max_tokens = max_tokens if max_tokens is not None else meta[0]
            created = created if created is not None else meta[1]
        with self._tx() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)).fetchone()  # noqa: S608 - column list is a constant
            if row is not None:
                job = _row_to_job(row)
                same_input = job.input_digest == input_digest
                if (
                    same_input
                    and job.block_hash == block_hash
                    and job.deadline == deadline
                    and job.role == role
                ):
                    return job, False
                if same_input and job.role == role and job.state == JobState.FINALIZED:
                    # Our result is final on chain: a late or replayed assignment (a seat started
                    # at its request's block finishes before the follower delivers its
                    # InferenceAssigned) changes nothing. A reorg of our blocks reopens the job
                    # first (`MinerDaemon._on_reorg`).
                    return job, False
                keep = same_input and job.output_digest is not None
                if not keep:
                    state = JobState.NEW
                elif job.state in TERMINAL or job.state == JobState.NEW:
                    state = JobState.UPLOADED
                else:
                    state = job.state
                if role != job.role and keep:  # a new seat on the same request: commit afresh
                    state = JobState.UPLOADED
                db.execute(
                    "UPDATE jobs SET input_digest=?, deadline=?, block_number=?, block_hash=?, role=?, "
                    "created=COALESCE(?, created), max_tokens=COALESCE(?, max_tokens), state=?, "
                    "output_digest=CASE WHEN ? THEN output_digest ELSE NULL END, "
                    "signature=CASE WHEN ? THEN signature ELSE NULL END, reason=NULL, updated_at=? "
                    "WHERE request_id=?",
                    (input_digest, deadline, block_number, block_hash, role.value, created, max_tokens,
                     state.value, keep, keep, now, request_id),
                )  # fmt: skip
            else:
                db.execute(
                    "INSERT INTO jobs(request_id, input_digest, deadline, block_number, block_hash, created, "
                    "state, role, max_tokens, assigned_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (request_id, input_digest, deadline, block_number, block_hash, created or 0,
                     JobState.NEW.value, role.value, max_tokens, now, now),
                )  # fmt: skip
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)).fetchone()  # noqa: S608 - column list is a constant
        return _row_to_job(row), True

    def set_request_meta(self, request_id: int, *, max_tokens: int, created: int) -> Job:
        """Fill in a seat's declared max tokens and request time (looked up after the seat came)."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET max_tokens = ?, created = ?, updated_at = ? WHERE request_id = ?",
                (max_tokens, created, time.time(), request_id),
            )
        job = self.get(request_id)
        if job is None:
            raise JournalError(f"job {request_id} is not in the journal")
        return job

    def _advance(
        self, request_id: int, new: JobState, sets: str = "", params: tuple[object, ...] = ()
    ) -> Job:
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
            if row is None:
                raise JournalError(f"job {request_id} is not in the journal")
            old = JobState(row[0])
            if old != new and new not in _ALLOWED[old]:
                raise InvalidTransition(request_id, old, new)
            extra = f", {sets}" if sets else ""
            db.execute(
                f"UPDATE jobs SET state = ?, updated_at = ?{extra} WHERE request_id = ?",  # noqa: S608
                (new.value, time.time(), *params, request_id),
            )
            out = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)).fetchone()  # noqa: S608 - column list is a constant
        return _row_to_job(out)

    def mark_uploaded(self, request_id: int, output_digest: bytes, signature: str) -> Job:
        """The output document is stored under its CID (or the digest is UNAVAILABLE): record it."""
        return self._advance(
            request_id, JobState.UPLOADED, "output_digest = ?, signature = ?", (output_digest, signature)
        )

    def mark_sending(
        self, request_ids: Iterable[int], tx_hash: str, state: JobState, *, batch: BatchRecord | None = None
    ) -> None:
        """Record a signed commit (`COMMITTING`) or reveal (`REVEALING`) transaction's hash before it
        is broadcast, for every job in its batch; `batch`: the root a `commitBatch` commits, kept in
        the same transaction (its reveal must rebuild it exactly)."""
        column = SENDING[state]
        before = JobState.UPLOADED if state == JobState.COMMITTING else JobState.COMMITTED
        with self._tx() as db:
            if batch is not None:
                db.execute(
                    "INSERT OR IGNORE INTO batches(root, ids, digests, created_at) VALUES (?, ?, ?, ?)",
                    (batch.root, json.dumps(list(batch.ids)), json.dumps([d.hex() for d in batch.digests]),
                     time.time()),
                )  # fmt: skip
            for rid in request_ids:
                row = db.execute(f"SELECT state, {column} FROM jobs WHERE request_id = ?", (rid,)).fetchone()  # noqa: S608 - column from a constant table
                if row is None:
                    raise JournalError(f"job {rid} is not in the journal")
                old = JobState(row[0])
                if old not in (before, state):
                    raise InvalidTransition(rid, old, state)
                hashes = json.loads(row[1])
                if tx_hash not in hashes:
                    hashes.append(tx_hash)
                db.execute(
                    f"UPDATE jobs SET state = ?, {column} = ?, attempts = attempts + 1, updated_at = ? "  # noqa: S608
                    "WHERE request_id = ?",
                    (state.value, json.dumps(hashes), time.time(), rid),
                )

    def mark_committing(self, request_ids: Iterable[int], tx_hash: str) -> None:
        self.mark_sending(request_ids, tx_hash, JobState.COMMITTING)

    def mark_revealing(self, request_ids: Iterable[int], tx_hash: str) -> None:
        self.mark_sending(request_ids, tx_hash, JobState.REVEALING)

    def mark_committed(self, request_id: int, block: int | None, commitment: bytes | None = None) -> Job:
        """Our commitment is on chain; `commitment`: what its ResultCommitted carried (None: unknown)."""
        return self._advance(
            request_id, JobState.COMMITTED, "commit_block = ?, commitment = ?", (block, commitment)
        )

    def mark_revealed(self, request_id: int, block: int | None) -> Job:
        return self._advance(request_id, JobState.REVEALED, "reveal_block = ?", (block,))

    def set_commitment(self, request_id: int, commitment: bytes | None) -> None:
        """What our ResultCommitted carried, learnt after the job was marked committed (None: unsure
        again, e.g. a reveal of that root was refused; the chain is asked next time)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET commitment = ? WHERE request_id = ?", (commitment, request_id))

    def batch_record(self, root: bytes) -> BatchRecord | None:
        """The ids and digests a batch root was built from (None: not built by this journal)."""
        with self._lock:
            row = self._db.execute("SELECT ids, digests FROM batches WHERE root = ?", (root,)).fetchone()
        if row is None:
            return None
        ids = tuple(int(i) for i in json.loads(str(row[0])))
        return BatchRecord(root, ids, tuple(bytes.fromhex(d) for d in json.loads(str(row[1]))))

    def forget_batches(self, before: float) -> None:
        """Drop batch records written before `before` (unix time): a root is needed only until its
        reveal window (timeoutBlocks after the commit) closes."""
        with self._tx() as db:
            db.execute("DELETE FROM batches WHERE created_at < ?", (before,))

    def mark(self, request_id: int, state: JobState, reason: str | None = None) -> Job:
        """Any other transition (finalized, expired, dropped, failed, back to new/uploaded/committed)."""
        return self._advance(request_id, state, "reason = ?", (reason,))


__all__ = [
    "OPEN",
    "SENDING",
    "TERMINAL",
    "UNFINISHED",
    "BatchRecord",
    "EscalationRecord",
    "EscalationState",
    "InvalidTransition",
    "Job",
    "JobState",
    "Journal",
    "JournalError",
    "Role",
]
