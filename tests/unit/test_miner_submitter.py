"""The submitter without a chain read: the reveal after our own commit receipt, the batch head.

Under load the log follower often delivers our `ResultCommitted` (and marks the job committed)
before the commit transaction's receipt reaches the submitter. The receipt still proves the r = 1
commit and its block, so the reveal that follows is judged from it (`_own_verdict`) and not by a
`getRequest` + `auditDrawn` per job. A batch is checked against the latest head the process saw
(no eth_blockNumber per batch). A hub that is never asked stands in for the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from node.chain.events import LogRef, ResultCommitted
from node.miner.hubview import audit_draw
from node.miner.journal import JobState, Journal
from node.miner.metrics import MinerMetrics
from node.miner.submitter import Submitter, Verdict

ME = "0x" + "11" * 20
BLOCK, BLOCK_HASH, COMMITMENT = 12, b"\x07" * 32, b"\x05" * 32


class NoChain:
    """A hub view whose every chain read fails the test."""

    address = "0x" + "22" * 20

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"the chain was asked ({name})")


def submitter(journal: Journal, audit_bps: int, head: int = 0) -> Submitter:
    hub: Any = NoChain()
    return Submitter(
        journal=journal, hub=hub, sender=hub, miner=ME, metrics=MinerMetrics(include_default=False),
        batch_max=8, batch_wait_s=0.1, redundancy=lambda: 1, audit_bps=lambda: audit_bps,
        head=lambda: head,
    )  # fmt: skip


def committed_by_follower(journal: Journal, rid: int) -> None:
    journal.assign(rid, input_digest=b"\x01" * 32, deadline=100, block_number=5, block_hash="0xaa")
    journal.mark_uploaded(rid, b"\x09" * 32, "0xsig")
    journal.mark_committing([rid], "0xc1")
    journal.mark_committed(rid, BLOCK, COMMITMENT)  # the follower's ResultCommitted came first


def event(rid: int) -> ResultCommitted:
    return ResultCommitted(rid, ME, COMMITMENT, LogRef(BLOCK, "0x" + BLOCK_HASH.hex(), "0xc1", 0, ME))


async def test_reveal_from_our_receipt_after_the_follower_marked_the_commit(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    for bps in (0, 10_000):
        rid = 1 if bps == 0 else 2
        committed_by_follower(journal, rid)
        sub = submitter(journal, bps)
        job = journal.get(rid)
        assert job is not None and job.state == JobState.COMMITTED
        sub._after_commit([job], [event(rid)], BLOCK, BLOCK_HASH)
        assert sub.pending == 1  # on to the reveal
        drawn = Verdict("open_audit", "drawn for audit (our receipt's block)")
        expected = drawn if bps else Verdict("reveal")
        assert audit_draw(BLOCK_HASH, rid, bps) == bool(bps)
        assert sub._own_verdict(journal.get(rid), head=BLOCK) == expected  # type: ignore[arg-type]


async def test_a_commit_of_another_block_is_not_ours_to_judge(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    committed_by_follower(journal, 3)
    sub = submitter(journal, 0)
    job = journal.get(3)
    assert job is not None
    sub._after_commit([job], [event(3)], BLOCK + 1, BLOCK_HASH)  # journal says block 12: unsure
    assert sub._own_verdict(journal.get(3), head=BLOCK + 1) is None  # type: ignore[arg-type]


async def test_an_id_found_busy_is_enqueued_when_its_batch_lets_go(tmp_path: Path) -> None:
    sub = submitter(Journal(tmp_path / "j.sqlite"), 0)
    sub._busy.add(4)  # a commit of 4 is on its way
    sub._waiting.add(4)  # a second batch found it busy
    sub._release([4])
    assert sub.pending == 1 and not sub._waiting


async def test_a_batch_is_checked_against_the_latest_head_seen(tmp_path: Path) -> None:
    sub = submitter(Journal(tmp_path / "j.sqlite"), 0, head=BLOCK)
    assert await sub._batch_head() == BLOCK  # the daemon's head: no eth_blockNumber
    sub._receipt_head = BLOCK + 2  # our receipt is ahead of the follower
    assert await sub._batch_head() == BLOCK + 2
    sub.on_reorg(BLOCK + 1)  # that receipt's block was replaced
    assert await sub._batch_head() == BLOCK
