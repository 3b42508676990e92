"""How the miner's journal makes a write durable: one SQLite connection, WAL, `synchronous=FULL`.

Every table of `node.miner.journal` is written the same way, so the mechanism lives here once and
`Journal` reads as what the miner records rather than how: each write is its own committed
transaction (durable when the call returns), or, inside `batch`, a savepoint that is atomic on its
own and durable when the batch commits (one fsync for a block's events instead of one each). The
connection is shared by threads under one re-entrant lock; one writer process per file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class JournalError(RuntimeError):
    """The journal file cannot be used (corrupt, locked by another miner, wrong schema)."""


class JournalDB:
    """The journal's connection and its transactions; `node.miner.journal.Journal` builds on it."""

    def __init__(self, path: Path, schema: str) -> None:
        """Open (or create) the file at `path` and run `schema` (idempotent `CREATE ... IF NOT EXISTS`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(schema)
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"cannot open the miner journal {path}: {exc}; move it away to start fresh"
            ) from exc
        self._lock = threading.RLock()
        self._batching = False

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


__all__ = ["JournalDB", "JournalError"]
