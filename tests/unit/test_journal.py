"""The journal: durable states, allowed transitions, idempotent assignment, cursor and scope."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.miner.journal import UNFINISHED, InvalidTransition, JobState, Journal, JournalError

D1, D2, OUT = b"\x01" * 32, b"\x02" * 32, b"\x09" * 32


def assign(j: Journal, rid: int = 1, block_hash: str = "0xaa", digest: bytes = D1, deadline: int = 100):
    return j.assign(
        rid, input_digest=digest, deadline=deadline, block_number=5, block_hash=block_hash, created=7
    )


def test_wal_and_full_sync(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_happy_path_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path, scope="s")
    job, changed = assign(j)
    assert changed and job.state == JobState.NEW
    j.mark_uploaded(1, OUT, "0xsig")
    j.mark_submitting([1], "0xtx1")
    j.mark_submitting([1], "0xtx2")  # a replacement
    j.close()
    j = Journal(path, scope="s")  # "restart"
    job2 = j.get(1)
    assert job2 is not None and job2.state == JobState.SUBMITTING
    assert job2.tx_hashes == ("0xtx1", "0xtx2") and job2.output_digest == OUT and job2.signature == "0xsig"
    j.mark_submitted(1, 12)
    j.mark(1, JobState.FINALIZED)
    assert not j.jobs(UNFINISHED)
    assert j.counts()[JobState.FINALIZED] == 1


def test_assign_is_idempotent_and_restarts_on_new_block(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assign(j)
    j.mark_uploaded(1, OUT, "0xsig")
    job, changed = assign(j)  # the same event seen again (re-scan after a crash)
    assert not changed and job.state == JobState.UPLOADED
    job, changed = assign(j, block_hash="0xbb")  # re-mined in another block after a reorg
    assert changed and job.state == JobState.NEW and job.output_digest is None


def test_invalid_transitions_raise(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assign(j)
    with pytest.raises(InvalidTransition):
        j.mark_submitting([1], "0xtx")  # never broadcast before the output is uploaded
    j.mark(1, JobState.DROPPED, "deadline passed")
    with pytest.raises(InvalidTransition):
        j.mark_submitted(1, 3) if False else j.mark(1, JobState.SUBMITTING)
    with pytest.raises(JournalError):
        j.mark(99, JobState.FINALIZED)


def test_cursor_hashes_and_rewind(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assert j.load_cursor() is None
    j.save_cursor(10, {8: "0x8", 10: "0xa"})
    j.save_cursor(12, {12: "0xc"})
    assert j.load_cursor() == 12 and j.recent_hashes() == {8: "0x8", 10: "0xa", 12: "0xc"}
    j.rewind(9)
    assert j.load_cursor() == 9 and j.recent_hashes() == {8: "0x8"}


def test_scope_mismatch_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path / "j.sqlite", scope="31337:0xhub:0xminer").close()
    with pytest.raises(JournalError, match="belongs to"):
        Journal(tmp_path / "j.sqlite", scope="1:0xother:0xminer")


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(JournalError, match="move it away"):
        Journal(path)
    assert sqlite3.sqlite_version
