"""Batch roots for r = 1 results (`node.miner.batchroot`): what goes under a root, which entries a
reveal withholds, and how a root is found again from the chain's events when the journal is unsure.

The root is checked against an independent computation of `keccak256(abi.encodePacked(uint256[] ids,
bytes32[] leaves))` (a uint256 array packs as 32-byte words), so the miner and the hub cannot drift
apart silently; the chain side (the hub accepting it) is the integration test's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account
from eth_utils.crypto import keccak

from node.chain.events import LogRef, ResultCommitted
from node.chain.hub import UNAVAILABLE, HubClient, Phase, RequestFlag, RequestInfo, commitment
from node.miner import batchroot
from node.miner.hubview import HubView
from node.miner.journal import BatchRecord, Job, JobState, Journal, Role

ME = Account.from_key("0x" + "11" * 32).address
OTHER = Account.from_key("0x" + "22" * 32).address


def digest(i: int) -> bytes:
    return keccak(i.to_bytes(32, "big"))


def packed_root(miner: str, ids: list[int], digests: list[bytes]) -> bytes:
    words = b"".join(i.to_bytes(32, "big") for i in ids)
    words += b"".join(commitment(d, miner, i) for i, d in zip(ids, digests, strict=True))
    return keccak(words)


def job(rid: int, role: Role = Role.ASSIGNEE, out: bytes | None = None) -> Job:
    return Job(
        request_id=rid, input_digest=b"\x01" * 32, deadline=100, block_number=1, block_hash="0x1", created=1,
        state=JobState.UPLOADED, role=role, output_digest=digest(rid) if out is None else out,
    )  # fmt: skip


def committed(rid: int, root: bytes, block: int = 50, miner: str = ME) -> ResultCommitted:
    return ResultCommitted(rid, miner, root, LogRef(block, "0xb", "0xt", 0, "0xhub"))


def test_build_sorts_ids_and_matches_the_packed_root() -> None:
    rec = batchroot.build(ME, [(9, digest(9)), (2, digest(2)), (5, UNAVAILABLE)])
    assert rec.ids == (2, 5, 9) and rec.digests == (digest(2), UNAVAILABLE, digest(9))
    assert rec.root == packed_root(ME, [2, 5, 9], [digest(2), UNAVAILABLE, digest(9)])
    assert batchroot.check(ME, rec) and not batchroot.check(OTHER, rec)  # leaves bind the miner
    with pytest.raises(ValueError, match="distinct"):
        batchroot.build(ME, [(2, digest(2)), (2, digest(3))])  # one id, two leaves: never


def test_plan_puts_r1_assignees_under_one_root() -> None:
    jobs = [job(7), job(3), job(4, Role.AUDITOR), job(5, Role.COMMITTEE), job(1)]
    rooted, rest = batchroot.plan_commits(jobs, redundancy=1)
    assert [j.request_id for j in rooted] == [1, 3, 7]
    assert [j.request_id for j in rest] == [4, 5]  # audits and committees keep commit/commitMany
    lone, rest = batchroot.plan_commits([job(3), job(4, Role.AUDITOR)], redundancy=1)
    assert lone == [] and [j.request_id for j in rest] == [3, 4]  # a lone result keeps `commit`
    assert batchroot.plan_commits(jobs, redundancy=3) == ([], jobs)  # r > 1: every seat commits
    assert batchroot.plan_commits(jobs, redundancy=None) == ([], jobs)  # model not known yet
    assert batchroot.plan_commits(jobs, redundancy=1, enabled=False) == ([], jobs)  # an older hub


def test_withheld_are_the_drawn_entries_that_can_be_audited() -> None:
    rec = batchroot.build(ME, [(1, digest(1)), (2, UNAVAILABLE), (3, digest(3)), (4, digest(4))])
    drawn = {1: True, 2: True, 3: False, 4: True}
    assert batchroot.withheld(rec, drawn) == {1, 4}  # UNAVAILABLE is revealed even when drawn
    assert batchroot.withheld(rec, {}) == frozenset()


def test_root_rebuilt_from_the_commit_blocks_events() -> None:
    mine = batchroot.build(ME, [(i, digest(i)) for i in (4, 6, 8)])
    other = batchroot.build(ME, [(i, digest(i)) for i in (5, 7)])
    events = [committed(i, mine.root) for i in mine.ids] + [committed(i, other.root) for i in other.ids]
    events += [committed(4, mine.root, miner=OTHER), committed(9, mine.root, miner=OTHER)]
    assert batchroot.ids_under(events, ME, mine.root) == (4, 6, 8)  # not the other root, not OTHER's
    digests: dict[int, bytes | None] = {i: digest(i) for i in range(10)}
    assert batchroot.rebuild(ME, mine.root, (4, 6, 8), digests) == mine
    assert batchroot.rebuild(ME, mine.root, (4, 6), digests) is None  # an id missing: another root
    assert batchroot.rebuild(ME, mine.root, (4, 6, 8), {**digests, 6: None}) is None  # digest lost
    assert batchroot.rebuild(ME, mine.root, (4, 6, 8), {**digests, 6: digest(60)}) is None  # changed


class Chain:
    """The commit block's ResultCommitted logs, as `HubView.commits_in_block` serves them."""

    def __init__(self, events: list[ResultCommitted]) -> None:
        self.events = events
        self.calls = 0

    async def commits_in_block(self, miner: str, block: int) -> list[ResultCommitted]:
        self.calls += 1
        return [e for e in self.events if e.miner == miner and e.log.block_number == block]


def info(rid: int, mark: int = 50) -> RequestInfo:
    return RequestInfo(
        id=rid, phase=Phase.REVEAL, requester=OTHER, model_id=b"\x00" * 32, input_digest=b"\x01" * 32,
        output_digest=None, fee=1, mark=mark, redundancy=1, flags=RequestFlag.BATCH, committed=1, revealed=0,
        seats=(ME,), digests=(bytes(32),),
    )  # fmt: skip


def get(j: Journal, rid: int) -> Job:
    job = j.get(rid)
    assert job is not None
    return job


def journal_with(tmp_path: Path, ids: list[int]) -> Journal:
    j = Journal(tmp_path / "j.sqlite", scope="s")
    for i in ids:
        j.assign(i, input_digest=b"\x01" * 32, deadline=100, block_number=1, block_hash="0x1", created=1)
        j.mark_uploaded(i, digest(i), "0xsig")
    return j


async def test_resolve_trusts_a_root_the_journal_saw_on_chain(tmp_path: Path) -> None:
    j = journal_with(tmp_path, [1, 2, 3])
    rec = batchroot.build(ME, [(i, digest(i)) for i in (1, 2, 3)])
    j.mark_sending([1, 2, 3], "0xc", JobState.COMMITTING, batch=rec)
    for i in (1, 2, 3):
        j.mark_committed(i, 50, rec.root)  # from our receipt: the root it carried
    chain = Chain([])
    got = await batchroot.resolve(chain, j, ME, get(j, 2), info(2).mark)
    assert got == rec and chain.calls == 0


async def test_resolve_groups_by_the_root_on_chain_not_the_one_we_meant(tmp_path: Path) -> None:
    """A crash between broadcast and receipt, then a resend: the journal recorded root A (1, 2, 3)
    and root B (2, 3), and only B landed. The jobs are marked committed from the chain's request
    view (commitment unknown), so the root and its ids come from the chain's events."""
    j = journal_with(tmp_path, [1, 2, 3])
    a = batchroot.build(ME, [(i, digest(i)) for i in (1, 2, 3)])
    b = batchroot.build(ME, [(i, digest(i)) for i in (2, 3)])
    j.mark_sending([1, 2, 3], "0xa", JobState.COMMITTING, batch=a)
    j.mark_sending([2, 3], "0xb", JobState.COMMITTING, batch=b)
    for i in (2, 3):
        j.mark_committed(i, 50)
    chain = Chain([committed(2, b.root), committed(3, b.root), committed(1, commitment(digest(1), ME, 1))])
    got = await batchroot.resolve(chain, j, ME, get(j, 3), info(3).mark)
    assert got == b and chain.calls == 1
    assert get(j, 3).commitment == b.root  # learnt: no second lookup
    assert await batchroot.resolve(chain, j, ME, get(j, 3), info(3).mark) == b
    assert chain.calls == 1


async def test_resolve_rebuilds_a_root_the_journal_never_recorded(tmp_path: Path) -> None:
    """The batch table lost (or never had) the root: the ids come from the chain, the digests from
    the jobs; a stale commitment in the journal is replaced by the chain's."""
    j = journal_with(tmp_path, [4, 5, 6])
    root = batchroot.build(ME, [(i, digest(i)) for i in (4, 6)]).root
    j.mark_committed(4, 50, b"\x99" * 32)
    chain = Chain([committed(4, root), committed(6, root), committed(5, b"\x55" * 32, block=51)])
    got = await batchroot.resolve(chain, j, ME, get(j, 4), info(4).mark)
    assert got == BatchRecord(root, (4, 6), (digest(4), digest(6)))
    assert await batchroot.resolve(Chain([]), j, ME, get(j, 5), info(5).mark) is None  # nothing on chain


def test_calldata_carries_the_root_and_the_withheld_leaves() -> None:
    view = HubView(HubClient(HubClient.web3("http://127.0.0.1:9"), "0x" + "ab" * 20))  # never called
    assert view.batch_roots  # this build's hub has commitBatch / revealBatch
    rec = batchroot.build(ME, [(i, digest(i)) for i in (3, 5, 8)])
    fn, args = view.hub.contract.decode_function_input(view.commit_batch_calldata(ME, rec.ids, rec.digests))
    assert fn.fn_name == "commitBatch" and list(args["ids"]) == [3, 5, 8] and bytes(args["root"]) == rec.root
    data = view.reveal_batch_calldata(ME, rec.ids, rec.digests, withheld={8, 3})
    fn, args = view.hub.contract.decode_function_input(data)
    assert fn.fn_name == "revealBatch" and int(args["withheld"]) == 0b101
    assert [bytes(x) for x in args["items"]] == [
        commitment(digest(3), ME, 3),
        digest(5),
        commitment(digest(8), ME, 8),
    ]
    with pytest.raises(ValueError, match="ascending"):
        view.commit_batch_calldata(ME, [5, 3], [digest(5), digest(3)])


def test_every_calldata_is_what_web3_encodes() -> None:
    """HubView encodes through the hub's cached codecs (no web3 ABI lookup per transaction): the
    bytes are exactly `contract.encode_abi`'s for every transaction the miner sends."""
    view = HubView(HubClient(HubClient.web3("http://127.0.0.1:9"), "0x" + "ab" * 20))  # never called
    c = view.hub.contract
    d = [digest(i) for i in range(3)]
    leaves = [commitment(x, ME, i) for i, x in zip((1, 2, 3), d, strict=True)]
    rec = batchroot.build(ME, [(i, x) for i, x in zip((1, 2, 3), d, strict=True)])
    assert view.commit_calldata(ME, [1], d[:1]) == c.encode_abi("commit", args=[1, leaves[0]])
    assert view.commit_calldata(ME, [1, 2, 3], d) == c.encode_abi("commitMany", args=[[1, 2, 3], leaves])
    assert view.reveal_calldata([1], d[:1]) == c.encode_abi("reveal", args=[1, d[0]])
    assert view.reveal_calldata([1, 2, 3], d) == c.encode_abi("revealMany", args=[[1, 2, 3], d])
    assert view.commit_batch_calldata(ME, [1, 2, 3], d) == c.encode_abi(
        "commitBatch", args=[[1, 2, 3], rec.root]
    )
    assert view.reveal_batch_calldata(ME, [1, 2, 3], d, {2}) == c.encode_abi(
        "revealBatch", args=[[1, 2, 3], [d[0], leaves[1], d[2]], 0b10]
    )
    assert view.vote_calldata("commit", ME, 7, d[0]) == c.encode_abi(
        "commitVote", args=[7, commitment(d[0], ME, 7)]
    )
    assert view.vote_calldata("reveal", ME, 7, d[0]) == c.encode_abi("revealVote", args=[7, d[0]])
    assert view.vote_calldata("claim", ME, 7, d[0]) == c.encode_abi("claimVote", args=[7])
    assert view.escalate_calldata(7) == c.encode_abi("escalate", args=[7])
    assert view.open_audit_calldata(7) == c.encode_abi("openAudit", args=[7])
    assert view.timeout_calldata([7]) == c.encode_abi("timeout", args=[7])
    assert view.timeout_calldata([7, 9]) == c.encode_abi("timeoutMany", args=[[7, 9]])
