"""One commitment root per batch of r = 1 results: what goes in a root, and how to find it again.

An r = 1 assignee seat commits `leaf = keccak256(abi.encode(digest, miner, id))`. Committing each
leaf costs a fresh storage slot per result, so when two or more r = 1 assignee results commit
together the miner sends one `commitBatch(ids, root)` instead, `root = keccak256(abi.encodePacked(
ids, leaves))` with the ids strictly ascending (the hub refuses anything else: one id, one leaf, so
no digest can be chosen after the audit draw). The hub keeps only the root; the reveal must
therefore name the very same ids and leaves, all of them in one `revealBatch`. An entry drawn for
audit is *withheld*: its leaf goes in instead of its digest (the digest must stay hidden until the
auditor commits), after which it is an ordinary singly committed r = 1 request (`openAudit`, then
`reveal` once the auditor committed). An UNAVAILABLE result is never audited, so never withheld.

Where the ids and digests of a root come from:
* the journal: `Journal.mark_sending(..., batch=...)` records each root with the commit's
  transaction hash before the broadcast, and a job's `commitment` is what its `ResultCommitted`
  carried once a receipt or an event showed it;
* the chain, when the journal is unsure (a crash between the broadcast and the receipt, a resend
  that replaced one batch by another): every `commitBatch` emits `ResultCommitted(id, miner, root)`
  per id, so the `ResultCommitted` logs of our address in the commit block (the head's mark) name
  the root of a job and every id under it; the digests are the journal's, and the rebuilt root must
  equal the chain's before anything is sent.

Auditor and committee seats, r > 1 seats, and a lone r = 1 result keep `commit` / `commitMany`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from node.chain.events import ResultCommitted
from node.chain.hub import UNAVAILABLE, batch_root, commitment
from node.miner.journal import BatchRecord, Job, Journal, Role

MIN_BATCH = 2
"""A root for fewer results costs more than `commit`: one result keeps the single path."""


class CommitLookup(Protocol):
    """What resolving a root needs from the chain (`HubView`)."""

    async def commits_in_block(self, miner: str, block: int) -> list[ResultCommitted]: ...


def leaves(miner: str, ids: Sequence[int], digests: Sequence[bytes]) -> list[bytes]:
    return [commitment(d, miner, i) for i, d in zip(ids, digests, strict=True)]


def build(miner: str, results: Iterable[tuple[int, bytes]]) -> BatchRecord:
    """The root of `results` (request id, output digest), ids sorted ascending; ValueError on a
    repeated id (the hub would refuse it: ids must ascend strictly)."""
    pairs = sorted(results)
    ids = tuple(i for i, _ in pairs)
    if len(set(ids)) != len(ids) or not ids:
        raise ValueError(f"a batch root needs distinct ids, got {list(ids)[:8]}")
    digests = tuple(bytes(d) for _, d in pairs)
    return BatchRecord(batch_root(ids, leaves(miner, ids, digests)), ids, digests)


def batchable(job: Job, redundancy: int | None) -> bool:
    """Whether `job` may commit inside a root: an r = 1 assignee seat with its digest."""
    return redundancy == 1 and job.role == Role.ASSIGNEE and job.output_digest is not None


def plan_commits(
    jobs: Sequence[Job], *, redundancy: int | None, enabled: bool = True
) -> tuple[list[Job], list[Job]]:
    """Split jobs about to commit into (one `commitBatch`, the rest for `commit`/`commitMany`).

    The root takes every batchable job when there are at least `MIN_BATCH` of them; otherwise (or
    on a hub without batch roots) everything goes the old way.
    """
    if not enabled:
        return [], list(jobs)
    rooted = [j for j in jobs if batchable(j, redundancy)]
    if len(rooted) < MIN_BATCH:
        return [], list(jobs)
    rest = [j for j in jobs if not batchable(j, redundancy)]
    return sorted(rooted, key=lambda j: j.request_id), rest


def withheld(record: BatchRecord, drawn: Mapping[int, bool]) -> frozenset[int]:
    """The ids to withhold in the reveal: drawn for audit and not UNAVAILABLE (never audited)."""
    return frozenset(
        i for i, d in zip(record.ids, record.digests, strict=True) if drawn.get(i) and d != UNAVAILABLE
    )


def ids_under(events: Iterable[ResultCommitted], miner: str, root: bytes) -> tuple[int, ...]:
    """The ids committed under `root` by `miner` among `events` (the commit block's), ascending."""
    return tuple(sorted({e.id for e in events if e.miner == miner and e.commitment == root}))


def rebuild(
    miner: str, root: bytes, ids: Sequence[int], digest_of: Mapping[int, bytes | None]
) -> BatchRecord | None:
    """The record of `root` from its ids (from the chain) and our digests; None when a digest is
    missing or the rebuilt root differs (then the root cannot be revealed from what we hold)."""
    digests = [digest_of.get(i) for i in ids]
    if not ids or any(d is None for d in digests):
        return None
    known = tuple(d for d in digests if d is not None)
    if batch_root(ids, leaves(miner, ids, known)) != root:
        return None
    return BatchRecord(root, tuple(ids), known)


def check(miner: str, record: BatchRecord) -> bool:
    """Whether `record` rebuilds its own root (a journal row from an older build, a bug)."""
    return batch_root(record.ids, leaves(miner, record.ids, record.digests)) == record.root


async def resolve(
    view: CommitLookup, journal: Journal, miner: str, job: Job, commit_block: int
) -> BatchRecord | None:
    """The root `job` was committed under, with every id and digest of it (None: not found).

    The job's own `commitment` (from our receipt or event) names the root when known, else the
    chain does (our `ResultCommitted` for this id in `commit_block`, the request's mark). The ids and
    digests come from the journal's record of that root, else from the chain's logs plus the
    journal's digests. A record is returned only if it rebuilds the root.
    """
    rid = job.request_id
    root = job.commitment
    record = journal.batch_record(root) if root is not None else None
    if record is not None and rid in record.ids and check(miner, record):
        return record
    events = await view.commits_in_block(miner, commit_block)
    ours = [e for e in events if e.id == rid]
    if not ours:
        return None
    root = ours[-1].commitment
    if job.commitment != root:
        journal.set_commitment(rid, root)
    record = journal.batch_record(root)
    if record is not None and rid in record.ids and check(miner, record):
        return record
    ids = ids_under(events, miner, root)
    digests: dict[int, bytes | None] = {}
    for i in ids:
        j = journal.get(i)
        digests[i] = j.output_digest if j is not None else None
    return rebuild(miner, root, ids, digests)


def members(record: BatchRecord, journal: Journal) -> list[Job]:
    """The journal's jobs among a root's ids (a root's entries are revealed together)."""
    out = []
    for i in record.ids:
        j = journal.get(i)
        if j is not None:
            out.append(j)
    return out


__all__ = [
    "MIN_BATCH",
    "CommitLookup",
    "batchable",
    "build",
    "check",
    "ids_under",
    "leaves",
    "members",
    "plan_commits",
    "rebuild",
    "resolve",
    "withheld",
]
