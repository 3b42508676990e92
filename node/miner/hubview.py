"""The miner's narrow view of the InferenceHub: the events it follows, request checks, calldata.

Built on `node.chain.hub.HubClient` (views) and `node.chain.events` (decoding); adds only what the
daemon and the submitter need: which events mean work (`InferenceAssigned` for an assignee seat,
`AuditOpened` for an auditor, `CommitteeOpened` for a committee member, all three "run this input
and commit to the output"), which move a seat on (`ResultCommitted`, `RevealOpened`,
`ResultRevealed`) or settle it (`InferenceFinalized`, `InferenceRefunded`), and the calldata of the
miner's own transactions (commit, reveal, commitBatch/revealBatch of r = 1 results under one root,
openAudit, timeout, votes, escalate).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from typing import Any

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from node.chain.errors import HubError
from node.chain.events import (
    AuditOpened,
    CommitteeOpened,
    EscalationOpened,
    InferenceAssigned,
    InferenceFinalized,
    InferenceRefunded,
    InferenceRequested,
    InferenceResolved,
    ResultCommitted,
    ResultRevealed,
    RevealOpened,
    VoteCommitted,
    VoteRevealed,
    decode_log,
    event_topic,
)
from node.chain.hub import HubClient, Phase, RequestInfo, batch_root, commitment

MinerEvent = (
    InferenceRequested | InferenceAssigned | AuditOpened | CommitteeOpened | ResultCommitted | RevealOpened
    | ResultRevealed | InferenceResolved | EscalationOpened | VoteCommitted | VoteRevealed
    | InferenceFinalized | InferenceRefunded
)  # fmt: skip
_TYPES = (
    InferenceRequested, InferenceAssigned, AuditOpened, CommitteeOpened, ResultCommitted, RevealOpened,
    ResultRevealed, InferenceResolved, EscalationOpened, VoteCommitted, VoteRevealed, InferenceFinalized,
    InferenceRefunded,
)  # fmt: skip
EVENT_NAMES = tuple(t.__name__ for t in _TYPES)
_FOLLOWED: frozenset[bytes] = frozenset(bytes.fromhex(event_topic(n)[2:]) for n in EVENT_NAMES)
"""topic0 of each followed event: a receipt's other logs (Credited, BatchRevealed, ...) are skipped
before any ABI decoding."""

REQUEST_LOOKBACK = 10_000
"""Blocks before a seat's event searched for its request (seats come within a few timeouts of it)."""

COMMIT_PHASES = {Phase.ASSIGNED, Phase.AUDIT, Phase.COMMITTEE}
REVEAL_PHASES = {Phase.REVEAL, Phase.AUDIT_REVEAL, Phase.COMMITTEE_REVEAL}
TIMEOUT_PHASES = {
    Phase.ASSIGNED, Phase.REVEAL, Phase.AUDIT, Phase.AUDIT_REVEAL, Phase.COMMITTEE, Phase.COMMITTEE_REVEAL,
    Phase.RESOLVED, Phase.VOTE,
}  # fmt: skip


class HubView:
    """Decoding, checks and calldata for one deployed hub."""

    def __init__(self, hub: HubClient) -> None:
        self.hub = hub
        self.address = hub.address
        self._address_lower = hub.address.lower()  # receipts' log addresses compared without a keccak

    @property
    def topics(self) -> list[list[str]]:
        """A getLogs topic filter matching the events the miner follows."""
        return [[event_topic(name) for name in EVENT_NAMES]]

    @staticmethod
    def decode(entry: Any) -> MinerEvent | None:
        """A typed event for one raw log; None for hub events the miner does not follow."""
        try:
            topics = entry["topics"] or ()
        except (KeyError, TypeError):
            return None
        if not topics or _topic_bytes(topics[0]) not in _FOLLOWED:
            return None
        ev = decode_log(entry)
        if isinstance(ev, _TYPES):
            return ev
        return None

    def decode_receipt(self, receipt: Any) -> list[MinerEvent]:
        out: list[MinerEvent] = []
        for entry in receipt.get("logs", []):
            if _lower_address(entry["address"]) != self._address_lower:
                continue
            ev = self.decode(entry)
            if ev is not None:
                out.append(ev)
        return out

    async def get_request(self, request_id: int) -> RequestInfo | None:
        """The request's on-chain record; None when the id is unknown (e.g. reorged out)."""
        try:
            return await self.hub.get_request(request_id)
        except HubError as exc:
            if exc.name == "UnknownRequest":
                return None
            raise

    async def audit_drawn(self, request_id: int) -> bool:
        """Whether our committed r = 1 result must be audited first (on the pending block)."""
        return await self.hub.audit_drawn(request_id)

    async def requested(self, request_id: int, near_block: int | None = None) -> InferenceRequested | None:
        """The request's `InferenceRequested` (its id is indexed: one cheap getLogs), None if absent.

        `near_block`: a block at or after the request (the seat's event); the search covers the
        `REQUEST_LOOKBACK` blocks before it (RPC providers cap getLogs ranges), else the whole chain.
        """
        start = 0 if near_block is None else max(0, near_block - REQUEST_LOOKBACK)
        logs = await self.hub.w3.eth.get_logs(
            {
                "address": self.address,
                "fromBlock": start,
                "toBlock": "latest" if near_block is None else near_block,
                "topics": [event_topic("InferenceRequested"), "0x" + request_id.to_bytes(32, "big").hex()],
            }
        )
        for entry in logs:
            ev = decode_log(entry)
            if isinstance(ev, InferenceRequested) and ev.id == request_id:
                return ev
        return None

    async def commits_in_block(self, miner: str, block: int) -> list[ResultCommitted]:
        """Every `ResultCommitted` of `miner` in `block` (its address is indexed: one cheap getLogs).

        A `commitBatch` emits one per id, each carrying the batch root, so these name the ids of
        every root `miner` committed in that block: the chain's answer when the journal is unsure.
        """
        logs = await self.hub.w3.eth.get_logs(
            {
                "address": self.address,
                "fromBlock": block,
                "toBlock": block,
                "topics": [event_topic("ResultCommitted"), None, "0x" + bytes(12).hex() + miner[2:].lower()],
            }
        )
        out = []
        for entry in logs:
            ev = decode_log(entry)
            if isinstance(ev, ResultCommitted) and ev.miner == to_checksum_address(miner):
                out.append(ev)
        return out

    @property
    def batch_roots(self) -> bool:
        """Whether this hub takes r = 1 results under one root (`commitBatch` / `revealBatch`)."""
        names = {f.get("name") for f in self.hub.contract.abi if f.get("type") == "function"}
        return {"commitBatch", "revealBatch"} <= names

    # ------------------------------------------------------------------ calldata

    def commit_calldata(self, miner: str, ids: Sequence[int], digests: Sequence[bytes]) -> str:
        """`commit` (one) or `commitMany` (many) of `commitment(digest, miner, id)`."""
        values = [commitment(d, miner, i) for i, d in zip(ids, digests, strict=True)]
        if len(ids) == 1:
            return self.hub.encode("commit", ids[0], values[0])
        return self.hub.encode("commitMany", list(ids), values)

    def reveal_calldata(self, ids: Sequence[int], digests: Sequence[bytes]) -> str:
        if len(ids) == 1:
            return self.hub.encode("reveal", ids[0], digests[0])
        return self.hub.encode("revealMany", list(ids), list(digests))

    def commit_batch_calldata(self, miner: str, ids: Sequence[int], digests: Sequence[bytes]) -> str:
        """`commitBatch(ids, root)`: r = 1 assignee results under one root; `ids` strictly ascending
        (the hub refuses anything else, so that no id can have two leaves)."""
        _check_ascending(ids)
        leaves = [commitment(d, miner, i) for i, d in zip(ids, digests, strict=True)]
        return self.hub.encode("commitBatch", list(ids), batch_root(ids, leaves))

    def reveal_batch_calldata(
        self, miner: str, ids: Sequence[int], digests: Sequence[bytes], withheld: Collection[int] = ()
    ) -> str:
        """`revealBatch(ids, items, withheld)` of a committed root: every id of the root, ascending;
        an id in `withheld` (drawn for audit) passes its leaf, not its digest (bit i of the mask)."""
        _check_ascending(ids)
        items: list[bytes] = []
        mask = 0
        for pos, (i, d) in enumerate(zip(ids, digests, strict=True)):
            if i in withheld:
                mask |= 1 << pos
                items.append(commitment(d, miner, i))
            else:
                items.append(d)
        return self.hub.encode("revealBatch", list(ids), items, mask)

    def vote_calldata(self, action: str, miner: str, request_id: int, digest: bytes) -> str:
        """`commitVote` (action "commit") / `revealVote` ("reveal") / `claimVote` ("claim")."""
        if action == "commit":
            return self.hub.encode("commitVote", request_id, commitment(digest, miner, request_id))
        if action == "reveal":
            return self.hub.encode("revealVote", request_id, digest)
        return self.hub.encode("claimVote", request_id)

    def escalate_calldata(self, request_id: int) -> str:
        """`escalate(id)`: sent with the model's minStake as the bond."""
        return self.hub.encode("escalate", request_id)

    def open_audit_calldata(self, request_id: int) -> str:
        return self.hub.encode("openAudit", request_id)

    def timeout_calldata(self, ids: Sequence[int]) -> str:
        if len(ids) == 1:
            return self.hub.encode("timeout", ids[0])
        return self.hub.encode("timeoutMany", list(ids))


BLOCKHASH_WINDOW = 256
"""`blockhash(n)` is zero for blocks more than this many before the executing one."""


def audit_draw(commit_block_hash: bytes, request_id: int, audit_bps: int) -> bool:
    """`HubStorage._drawn` off chain: whether an r = 1 result committed in the block with this hash
    is drawn for audit, `keccak256(abi.encode(blockhash, id, "audit")) % 10_000 < auditBps`.

    Only what the chain's `auditDrawn` adds is left to the caller: the request in phase Reveal
    without FLAG_NO_AUDIT (true right after our own commit), evaluated within `BLOCKHASH_WINDOW`
    blocks of the commit (beyond it the chain says drawn).
    """
    if len(commit_block_hash) != 32:
        raise ValueError(f"a block hash is 32 bytes, got {len(commit_block_hash)}")
    seed = keccak(encode(["bytes32", "uint256", "string"], [commit_block_hash, request_id, "audit"]))
    return int.from_bytes(seed, "big") % 10_000 < audit_bps


def _topic_bytes(value: Any) -> bytes:
    """A log topic as bytes (0x-hex from JSON-RPC, bytes/HexBytes from web3's formatters)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    text = str(value)
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        return b""


def _lower_address(value: Any) -> str:
    """A log's address as 0x + lowercase hex (a string from JSON-RPC, 20 bytes from some providers)."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value).lower()


def _check_ascending(ids: Sequence[int]) -> None:
    if not ids or any(a >= b for a, b in itertools.pairwise(ids)):
        raise ValueError(f"a batch root needs 1+ strictly ascending ids, got {list(ids)[:8]}")


__all__ = [
    "BLOCKHASH_WINDOW",
    "COMMIT_PHASES",
    "EVENT_NAMES",
    "REVEAL_PHASES",
    "TIMEOUT_PHASES",
    "HubView",
    "MinerEvent",
    "RequestInfo",
    "audit_draw",
]
