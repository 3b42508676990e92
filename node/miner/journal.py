"""The miner's job journal: SQLite in WAL mode with `synchronous=FULL`, the source of crash safety.

It holds one job per seat of this miner on a request, and a job's state advances only after its
effect is durable: the states, what each guarantees and the transitions allowed are in
`node.miner.jobs`; the tables, the job row and the in-place schema upgrades in
`node.miner.journal_schema`. Both are re-exported here, so `node.miner.journal` stays the one
import for the miner's durable state.

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
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from node.miner.jobs import (
    COMMIT_STATES,
    OPEN,
    REVEAL_STATES,
    SENDING,
    TERMINAL,
    TRANSITIONS,
    UNFINISHED,
    Job,
    JobState,
    Role,
)
from node.miner.journal_db import JournalDB, JournalError
from node.miner.journal_schema import COLUMNS, SCHEMA, SCHEMA_VERSION, migrate, row_to_job


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


class InvalidTransition(JournalError):
    """A state change the state machine forbids: a bug, never a normal runtime event."""

    def __init__(self, request_id: int, old: JobState, new: JobState) -> None:
        super().__init__(f"job {request_id}: {old.value} -> {new.value} is not a valid transition")


class Journal(JournalDB):
    """Durable job records plus the watcher cursor; thread-safe, one writer process per file.

    Every write is a committed transaction with `synchronous=FULL` (or joins a `batch`; see
    `node.miner.journal_db`): when a method returns, the change survives a power cut. Calls are
    short (one row), so they run inline on the event loop.
    """

    def __init__(self, path: Path, scope: str = "") -> None:
        self.path = path
        self.scope = scope
        super().__init__(path, SCHEMA)
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
        """Upgrade an older journal in place (`node.miner.journal_schema.migrate`)."""
        return migrate(self._tx, schema)

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
                f"SELECT {COLUMNS} FROM jobs WHERE request_id = ?",  # noqa: S608 - constant columns
                (request_id,),
            ).fetchone()
        return None if row is None else row_to_job(row)

    def jobs(self, states: Iterable[JobState] | None = None) -> list[Job]:
        """Jobs in any of `states` (all when None), oldest request first."""
        with self._lock:
            if states is None:
                rows = self._db.execute(f"SELECT {COLUMNS} FROM jobs ORDER BY request_id").fetchall()  # noqa: S608 - column list is a constant
            else:
                wanted = [s.value for s in states]
                marks = ",".join("?" * len(wanted))
                rows = self._db.execute(
                    f"SELECT {COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY request_id",  # noqa: S608
                    wanted,
                ).fetchall()
        return [row_to_job(r) for r in rows]

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
            row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)).fetchone()  # noqa: S608 - column list is a constant
            if row is not None:
                job = row_to_job(row)
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
                    # first (`Seats.on_reorg`, node.miner.seats).
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
            row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)).fetchone()  # noqa: S608 - column list is a constant
        return row_to_job(row), True

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
            if old != new and new not in TRANSITIONS[old]:
                raise InvalidTransition(request_id, old, new)
            extra = f", {sets}" if sets else ""
            db.execute(
                f"UPDATE jobs SET state = ?, updated_at = ?{extra} WHERE request_id = ?",  # noqa: S608
                (new.value, time.time(), *params, request_id),
            )
            out = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)).fetchone()  # noqa: S608 - column list is a constant
        return row_to_job(out)

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
    "COMMIT_STATES",
    "OPEN",
    "REVEAL_STATES",
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
