"""The journal's file format: its tables, the job row's columns, and in-place upgrades.

Kept apart from `node.miner.journal` (which reads and writes these tables) because the layout and
its migrations change together and only together: a schema bump edits `SCHEMA`, `SCHEMA_VERSION`
and `MIGRATIONS` here, and an operator's existing journal is upgraded in place on open (`migrate`),
so the miner can be upgraded over its data dir without losing jobs in flight.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from node.miner.jobs import Job, JobState, Role

SCHEMA = """
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
COLUMNS = (
    "request_id, input_digest, deadline, block_number, block_hash, created, state, role, max_tokens, "
    "output_digest, signature, commit_txs, commit_block, reveal_txs, reveal_block, commitment, reason, "
    "attempts, assigned_at, updated_at"
)
SCHEMA_VERSION = "3"
MIGRATIONS = {
    # 2 -> 3: batch roots (`batches`, created by SCHEMA) and each job's on-chain commitment.
    "2": ("ALTER TABLE jobs ADD COLUMN commitment BLOB",),
}
"""Schema upgrades in place, keyed by the version they start from (each ends one version later)."""


def row_to_job(row: Any) -> Job:
    """A `jobs` row, selected as `COLUMNS`, as a `Job`."""
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


def migrate(tx: Callable[[], AbstractContextManager[sqlite3.Connection]], schema: str | None) -> str | None:
    """Upgrade an older journal in place (operators upgrade the miner over its data dir); each
    step is one transaction (`tx`), so a crash mid-upgrade leaves the file at a version it can
    resume. Returns the version the file is at afterwards."""
    while schema in MIGRATIONS:
        nxt = str(int(schema) + 1)
        with tx() as db:
            for statement in MIGRATIONS[schema]:
                db.execute(statement)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema', ?)", (nxt,))
        schema = nxt
    return schema


__all__ = ["COLUMNS", "MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "migrate", "row_to_job"]
