"""The journal: durable states, allowed transitions, idempotent assignment, cursor and scope."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.miner.journal import (
    UNFINISHED,
    BatchRecord,
    EscalationState,
    InvalidTransition,
    JobState,
    Journal,
    JournalError,
    Role,
)

D1, D2, OUT = b"\x01" * 32, b"\x02" * 32, b"\x09" * 32


def assign(
    j: Journal,
    rid: int = 1,
    block_hash: str = "0xaa",
    digest: bytes = D1,
    deadline: int = 100,
    role: Role = Role.ASSIGNEE,
):
    return j.assign(
        rid, input_digest=digest, deadline=deadline, block_number=5, block_hash=block_hash, created=7,
        max_tokens=32, role=role,
    )  # fmt: skip


def test_wal_and_full_sync(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_happy_path_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path, scope="s")
    job, changed = assign(j)
    assert changed and job.state == JobState.NEW and job.max_tokens == 32 and job.role == Role.ASSIGNEE
    j.mark_uploaded(1, OUT, "0xsig")
    j.mark_committing([1], "0xc1")
    j.mark_committing([1], "0xc2")  # a replacement
    j.close()
    j = Journal(path, scope="s")  # "restart"
    job2 = j.get(1)
    assert job2 is not None and job2.state == JobState.COMMITTING
    assert job2.commit_txs == ("0xc1", "0xc2") and job2.output_digest == OUT and job2.signature == "0xsig"
    j.mark_committed(1, 12)
    j.mark_revealing([1], "0xr1")
    j.close()
    j = Journal(path, scope="s")
    job3 = j.get(1)
    assert job3 is not None and job3.state == JobState.REVEALING and job3.commit_block == 12
    assert job3.reveal_txs == ("0xr1",) and job3.tx_hashes == ("0xc1", "0xc2", "0xr1")
    j.mark_revealed(1, 13)
    assert j.jobs(UNFINISHED) == []
    j.mark(1, JobState.FINALIZED)
    assert j.counts()[JobState.FINALIZED] == 1


def test_request_meta_fills_later_seats(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    j.record_request(4, max_tokens=64, block_number=3, created=1234)
    assert j.request_meta(4) == (64, 1234) and j.request_meta(5) is None
    job, _ = j.assign(4, input_digest=D1, deadline=50, block_number=4, block_hash="0x4", role=Role.AUDITOR)
    assert (job.max_tokens, job.created, job.role) == (64, 1234, Role.AUDITOR)
    job, _ = j.assign(5, input_digest=D1, deadline=50, block_number=4, block_hash="0x4")
    assert job.max_tokens is None and job.created == 0  # looked up by the daemon before producing
    assert j.set_request_meta(5, max_tokens=8, created=99).max_tokens == 8
    j.forget_requests(before_block=4)
    assert j.request_meta(4) is None


def test_assign_is_idempotent_and_keeps_deterministic_output(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assign(j)
    j.mark_uploaded(1, OUT, "0xsig")
    job, changed = assign(j)  # the same event seen again (re-scan after a crash)
    assert not changed and job.state == JobState.UPLOADED
    job, changed = assign(j, block_hash="0xbb")  # re-mined in another block after a reorg, same input
    assert changed and job.state == JobState.UPLOADED and job.output_digest == OUT
    job, changed = assign(j, block_hash="0xcc", digest=D2)  # another input: start over
    assert changed and job.state == JobState.NEW and job.output_digest is None
    j.mark(1, JobState.EXPIRED, "reassigned")
    job, changed = assign(j, block_hash="0xdd", digest=D2, role=Role.COMMITTEE)
    assert changed and job.state == JobState.NEW and job.role == Role.COMMITTEE


def test_a_final_job_is_not_reopened_by_its_late_assignment(tmp_path: Path) -> None:
    """A seat started at its request's block (journaled from that block, provisional deadline) can
    be final on chain before the follower delivers its InferenceAssigned: that event (another
    block, the real deadline) must not reopen the job, else it is settled, and counted, twice."""
    j = Journal(tmp_path / "j.sqlite")
    assign(j)
    j.mark_uploaded(1, OUT, "0xsig")
    j.mark_committing([1], "0xc")
    j.mark_committed(1, 12)
    j.mark_revealing([1], "0xr")
    j.mark_revealed(1, 13)
    j.mark(1, JobState.FINALIZED)
    job, changed = assign(j, block_hash="0xbb", deadline=99)
    assert not changed and job.state == JobState.FINALIZED
    job, changed = assign(j, block_hash="0xcc", role=Role.AUDITOR)  # another seat: a new job still
    assert changed and job.state == JobState.UPLOADED and job.role == Role.AUDITOR


def test_invalid_transitions_raise(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assign(j)
    with pytest.raises(InvalidTransition):
        j.mark_committing([1], "0xtx")  # never broadcast before the output is uploaded
    j.mark_uploaded(1, OUT, "0xsig")
    with pytest.raises(InvalidTransition):
        j.mark_revealing([1], "0xtx")  # never reveal before the commit is on chain
    j.mark(1, JobState.DROPPED, "deadline passed")
    with pytest.raises(InvalidTransition):
        j.mark(1, JobState.COMMITTING)
    with pytest.raises(JournalError):
        j.mark(99, JobState.FINALIZED)


def test_v1_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path, scope="s")
    j.set_meta("schema", "1")
    j.close()
    with pytest.raises(JournalError, match="older miner"):
        Journal(path, scope="s")


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


def test_escalation_records_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path, scope="s")
    assert j.escalation(7) is None
    j.mark_escalation(7, EscalationState.SENDING, tx_hash="0x01")
    j.mark_escalation(7, EscalationState.SENDING, tx_hash="0x02")  # a fee bump replaced it
    j.mark_escalation(8, EscalationState.MISSED, reason="window ended at 10")
    j.close()
    j = Journal(path, scope="s")
    rec = j.escalation(7)
    assert rec is not None and rec.state == EscalationState.SENDING and rec.txs == ("0x01", "0x02")
    assert [r.request_id for r in j.escalations([EscalationState.SENDING])] == [7]
    j.mark_escalation(7, EscalationState.SENT)
    rec = j.escalation(7)
    assert rec is not None and rec.state == EscalationState.SENT and rec.txs == ("0x01", "0x02")
    assert j.escalations([EscalationState.SENDING]) == []


def test_batch_commits_its_writes_together_and_undoes_a_failed_one_alone(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path, scope="s")
    with j.batch():
        assign(j, 1)
        assign(j, 2, digest=D2)
        with j.batch():  # nested: joins the outer transaction
            j.mark_uploaded(2, OUT, "0xsig")
        with pytest.raises(InvalidTransition):  # job 1 is not uploaded: the whole call is undone,
            j.mark_committing([2, 1], "0xtx")  # job 2's part included, and nothing else
        other = sqlite3.connect(path)  # another reader sees nothing before the batch commits
        assert other.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        other.close()
    j.close()
    j = Journal(path, scope="s")
    one, two = j.get(1), j.get(2)
    assert one is not None and one.state == JobState.NEW
    assert two is not None and two.state == JobState.UPLOADED and two.commit_txs == ()


def test_a_batch_that_raises_writes_nothing(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", scope="s")
    with pytest.raises(RuntimeError), j.batch():
        assign(j, 1)
        raise RuntimeError("boom")
    assert j.get(1) is None
    assign(j, 1)  # the journal is usable afterwards
    assert j.get(1) is not None


# The jobs table as the schema-2 miner wrote it (the release before batch roots).
_V2_JOBS = """
CREATE TABLE jobs (
    request_id INTEGER PRIMARY KEY, input_digest BLOB NOT NULL, deadline INTEGER NOT NULL,
    block_number INTEGER NOT NULL, block_hash TEXT NOT NULL, created INTEGER NOT NULL, state TEXT NOT NULL,
    role TEXT NOT NULL, max_tokens INTEGER, output_digest BLOB, signature TEXT,
    commit_txs TEXT NOT NULL DEFAULT '[]', commit_block INTEGER, reveal_txs TEXT NOT NULL DEFAULT '[]',
    reveal_block INTEGER, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, assigned_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('scope', 's'), ('schema', '2'), ('cursor', '41');
INSERT INTO jobs(request_id, input_digest, deadline, block_number, block_hash, created, state, role,
                 output_digest, signature, commit_txs, commit_block, assigned_at, updated_at)
VALUES (3, x'0101010101010101010101010101010101010101010101010101010101010101', 100, 5, '0xaa', 7,
        'committed', 'assignee', x'0909090909090909090909090909090909090909090909090909090909090909',
        '0xsig', '["0xc1"]', 12, 1.0, 1.0);
"""


def test_schema_2_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    """Operators upgrade the miner over its data dir: a schema-2 journal keeps its jobs and cursor,
    gains the batch-root columns and table, and a reopened upgraded file stays as it is."""
    path = tmp_path / "j.sqlite"
    old = sqlite3.connect(path)
    old.executescript(_V2_JOBS)
    old.close()
    j = Journal(path, scope="s")
    assert j.get_meta("schema") == "3" and j.load_cursor() == 41
    job = j.get(3)
    assert job is not None and job.state == JobState.COMMITTED and job.commit_txs == ("0xc1",)
    assert job.output_digest == OUT and job.commitment is None  # unknown: the chain is asked
    root = b"\x07" * 32
    assign(j, 4)
    j.mark_uploaded(4, OUT, "0xsig")
    j.mark_sending([4], "0xc4", JobState.COMMITTING, batch=BatchRecord(root, (3, 4), (OUT, OUT)))
    j.mark_committed(4, 20, root)
    j.close()
    j = Journal(path, scope="s")  # a second open migrates nothing
    assert j.get_meta("schema") == "3"
    job4 = j.get(4)
    assert job4 is not None and job4.commitment == root and job4.commit_txs == ("0xc4",)
    assert j.batch_record(root) == BatchRecord(root, (3, 4), (OUT, OUT))


def test_batch_record_is_written_with_the_commit_hash(tmp_path: Path) -> None:
    """The root and its ids/digests are durable in the same transaction as the signed hash (before
    the broadcast); a failed mark writes neither."""
    path = tmp_path / "j.sqlite"
    j = Journal(path, scope="s")
    assign(j, 1)
    assign(j, 2, digest=D2)
    j.mark_uploaded(1, OUT, "0xsig")
    rec = BatchRecord(b"\x05" * 32, (1, 2), (OUT, OUT))
    with pytest.raises(InvalidTransition):  # job 2 has no output yet: nothing is written
        j.mark_sending([1, 2], "0xtx", JobState.COMMITTING, batch=rec)
    assert j.batch_record(rec.root) is None
    j.mark_uploaded(2, OUT, "0xsig")
    j.mark_sending([1, 2], "0xtx", JobState.COMMITTING, batch=rec)
    j.close()
    j = Journal(path, scope="s")
    assert j.batch_record(rec.root) == rec
    one = j.get(1)
    assert one is not None and one.state == JobState.COMMITTING and one.commitment is None
    j.mark_committed(1, 9, rec.root)
    j.set_commitment(1, None)  # a refused reveal: unsure again
    one = j.get(1)
    assert one is not None and one.commitment is None and one.commit_block == 9
    j.forget_batches(before=0.0)
    assert j.batch_record(rec.root) == rec
    j.forget_batches(before=float("inf"))
    assert j.batch_record(rec.root) is None
