"""The miner's job journal: SQLite in WAL mode with `synchronous=FULL`, the source of crash safety.

A job's state advances only after its effect is durable:

    new ──▶ uploaded ──▶ submitting ──▶ submitted ──▶ finalized
     │         │             │              └──────▶ expired   (deadline passed without quorum)
     └─────────┴─────────────┴─────────────────────▶ dropped   (deadline passed before we submitted,
                                                                reassigned away, or reorged out)
                                                     failed    (unrecoverable, with the reason)

* `new`: the assignment (request id, input digest, deadline, request block) is on disk.
* Fetching and inference have no durable effect of their own, so they are not journaled states: a
  crash there simply redoes them (the output is deterministic, so the redo writes the same bytes).
* `uploaded`: the output document is stored under its CID and its digest and signature are here.
* `submitting`: the signed transaction's hash is recorded *before* it is broadcast, so after a crash
  the daemon looks that hash up (and the request on chain) instead of blindly sending again.
* `submitted`: a receipt shows our result on chain; `finalized`: InferenceFinalized was seen.

The same database keeps the chain watcher's cursor and recent block hashes (reorg detection), so
"job recorded" and "cursor advanced" live in one file with one durability story.
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
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    FINALIZED = "finalized"
    EXPIRED = "expired"
    DROPPED = "dropped"
    FAILED = "failed"


UNFINISHED = frozenset({JobState.NEW, JobState.UPLOADED, JobState.SUBMITTING})
"""States in which this miner still owes work; every one of them is resumed on restart."""
OPEN = UNFINISHED | {JobState.SUBMITTED}
"""States in which the request is not settled yet (we still follow its events)."""
TERMINAL = frozenset({JobState.FINALIZED, JobState.EXPIRED, JobState.DROPPED, JobState.FAILED})

_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.NEW: frozenset({JobState.UPLOADED, JobState.SUBMITTED, JobState.FINALIZED} | TERMINAL),
    JobState.UPLOADED: frozenset({JobState.SUBMITTING, JobState.SUBMITTED, JobState.NEW} | TERMINAL),
    JobState.SUBMITTING: frozenset(
        {JobState.SUBMITTING, JobState.SUBMITTED, JobState.UPLOADED, JobState.NEW} | TERMINAL
    ),
    JobState.SUBMITTED: frozenset({JobState.UPLOADED, JobState.NEW} | TERMINAL),
    # Back from a settled state only after a reorg (re-checked against the chain) or a reassignment.
    JobState.FINALIZED: frozenset({JobState.NEW, JobState.UPLOADED, JobState.SUBMITTED}),
    JobState.EXPIRED: frozenset({JobState.NEW, JobState.UPLOADED}),
    JobState.DROPPED: frozenset({JobState.NEW, JobState.UPLOADED, JobState.SUBMITTED, JobState.FINALIZED}),
    JobState.FAILED: frozenset({JobState.NEW}),
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
    deadline: int
    block_number: int
    block_hash: str
    created: int
    state: JobState
    output_digest: bytes | None = None
    signature: str | None = None
    tx_hashes: tuple[str, ...] = ()
    submit_block: int | None = None
    reason: str | None = None
    attempts: int = 0
    assigned_at: float = 0.0
    updated_at: float = 0.0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    request_id    INTEGER PRIMARY KEY,
    input_digest  BLOB NOT NULL,
    deadline      INTEGER NOT NULL,
    block_number  INTEGER NOT NULL,
    block_hash    TEXT NOT NULL,
    created       INTEGER NOT NULL,
    state         TEXT NOT NULL,
    output_digest BLOB,
    signature     TEXT,
    tx_hashes     TEXT NOT NULL DEFAULT '[]',
    submit_block  INTEGER,
    reason        TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    assigned_at   REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS block_hashes (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
"""
_COLUMNS = (
    "request_id, input_digest, deadline, block_number, block_hash, created, state, output_digest, "
    "signature, tx_hashes, submit_block, reason, attempts, assigned_at, updated_at"
)
SCHEMA_VERSION = "1"


def _row_to_job(row: Any) -> Job:
    (rid, inp, deadline, bn, bh, created, state, out, sig, txs, sb, reason, attempts, at, ut) = row
    return Job(
        request_id=int(rid),
        input_digest=bytes(inp),
        deadline=int(deadline),
        block_number=int(bn),
        block_hash=str(bh),
        created=int(created),
        state=JobState(str(state)),
        output_digest=bytes(out) if out is not None else None,
        signature=str(sig) if sig is not None else None,
        tx_hashes=tuple(json.loads(str(txs))),
        submit_block=int(sb) if sb is not None else None,
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
        self._check_scope()

    def _check_scope(self) -> None:
        """Refuse a journal written for another chain/hub/miner: its jobs and cursor mean nothing here."""
        stored = self.get_meta("scope")
        if stored is None:
            self.set_meta("scope", self.scope)
            self.set_meta("schema", SCHEMA_VERSION)
        elif self.scope and stored != self.scope:
            raise JournalError(
                f"journal {self.path} belongs to {stored!r}, not {self.scope!r}; "
                "use another miner.journal_path (or data_dir) per chain, hub and key"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
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

    def assign(
        self,
        request_id: int,
        *,
        input_digest: bytes,
        deadline: int,
        block_number: int,
        block_hash: str,
        created: int,
    ) -> tuple[Job, bool]:
        """Record an assignment; returns (job, changed). Idempotent for a re-seen event.

        A job that already exists from the same request block is left alone. One from another block
        (the request was re-mined after a reorg, or reassigned to us after an expiry) restarts from
        `new` unless our result is already on chain for it (`submitted`/`finalized`): the daemon
        re-checks those against the chain.
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)).fetchone()  # noqa: S608 - column list is a constant
            if row is not None:
                job = _row_to_job(row)
                same = job.block_hash == block_hash and job.input_digest == input_digest
                if same and job.deadline == deadline:
                    return job, False
                restart = job.state not in (JobState.SUBMITTED, JobState.FINALIZED) or not same
                new_state = JobState.NEW if restart else job.state
                db.execute(
                    "UPDATE jobs SET input_digest=?, deadline=?, block_number=?, block_hash=?, created=?, "
                    "state=?, output_digest=CASE WHEN ? THEN NULL ELSE output_digest END, "
                    "signature=CASE WHEN ? THEN NULL ELSE signature END, reason=NULL, updated_at=? "
                    "WHERE request_id=?",
                    (input_digest, deadline, block_number, block_hash, created, new_state.value,
                     restart, restart, now, request_id),
                )  # fmt: skip
            else:
                db.execute(
                    "INSERT INTO jobs(request_id, input_digest, deadline, block_number, block_hash, created, "
                    "state, assigned_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (request_id, input_digest, deadline, block_number, block_hash, created,
                     JobState.NEW.value, now, now),
                )  # fmt: skip
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)).fetchone()  # noqa: S608 - column list is a constant
        return _row_to_job(row), True

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
        """The output document is stored under its CID: record its digest and our signature."""
        return self._advance(
            request_id, JobState.UPLOADED, "output_digest = ?, signature = ?", (output_digest, signature)
        )

    def mark_submitting(self, request_ids: Iterable[int], tx_hash: str) -> None:
        """Record a signed transaction's hash before it is broadcast (all jobs in its batch)."""
        with self._tx() as db:
            for rid in request_ids:
                row = db.execute("SELECT state, tx_hashes FROM jobs WHERE request_id = ?", (rid,)).fetchone()
                if row is None:
                    raise JournalError(f"job {rid} is not in the journal")
                old = JobState(row[0])
                if old not in (JobState.UPLOADED, JobState.SUBMITTING):
                    raise InvalidTransition(rid, old, JobState.SUBMITTING)
                hashes = json.loads(row[1])
                if tx_hash not in hashes:
                    hashes.append(tx_hash)
                db.execute(
                    "UPDATE jobs SET state = ?, tx_hashes = ?, attempts = attempts + 1, updated_at = ? "
                    "WHERE request_id = ?",
                    (JobState.SUBMITTING.value, json.dumps(hashes), time.time(), rid),
                )

    def mark_submitted(self, request_id: int, block: int | None) -> Job:
        return self._advance(request_id, JobState.SUBMITTED, "submit_block = ?", (block,))

    def mark(self, request_id: int, state: JobState, reason: str | None = None) -> Job:
        """Any other transition (finalized, expired, dropped, failed, back to new/uploaded)."""
        return self._advance(request_id, state, "reason = ?", (reason,))


__all__ = [
    "OPEN",
    "TERMINAL",
    "UNFINISHED",
    "InvalidTransition",
    "Job",
    "JobState",
    "Journal",
    "JournalError",
]
