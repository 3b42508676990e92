"""The journal: durable states, allowed transitions, idempotent assignment, cursor and scope."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.miner.journal import (
    UNFINISHED,
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
