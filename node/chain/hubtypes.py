"""What the hub's views return and its calls take: phases, flags, typed records, digests, commitments.

Split from `node.chain.hub` (the client) so that readers of requests and results (the gateway's
verification, `inferd verify`, the miner's journal) see the protocol's vocabulary in one place;
`node.chain.hub` re-exports every name.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.types import TxReceipt

from node.chain.abicall import checksum
from node.chain.events import HubEvent

E = TypeVar("E")

Digest = bytes | str
"""A 32-byte digest as bytes or 0x-hex."""

UNAVAILABLE = (1).to_bytes(32, "big")
"""The digest a seat reveals when it could not fetch the input before its deadline (never fraud)."""
MAX_DECLARED_TOKENS = 65_536
MAX_BATCH = 64
"""Most ids per `requestInferences` / `commitMany` / `revealMany` / `timeoutMany`."""
AUTO_ASSIGN = 2
"""Due requests every `requestInference(s)` materialises on its way."""
ASSIGN_GAS = 400_000
"""Gas added per request that a call may materialise: `eth_estimateGas` runs on a block in which the
request's seed block is not yet past, so the estimate leaves the assignment out."""


class Phase(enum.IntEnum):
    """`RequestView.phase`; see `RequestInfo.mark` for what the phase's block mark means."""

    NONE = 0
    PENDING = 1  # waiting for its seed block; mark = request block
    ASSIGNED = 2  # commit window; mark = deadline
    REVEAL = 3  # r = 1: mark = commit block (reveal until mark + timeoutBlocks); r > 1: reveal deadline
    AUDIT = 4  # auditor commit window; mark = deadline
    AUDIT_REVEAL = 5
    COMMITTEE = 6
    COMMITTEE_REVEAL = 7
    RESOLVED = 8  # provisional outcome; mark = end of the escalation window
    VOTE = 9  # escalation vote (`get_escalation`)
    FINAL = 10
    REFUNDED = 11


class RequestFlag(enum.IntFlag):
    REASSIGNED = 1
    NO_AUDIT = 2  # the audit draw no longer applies (auditor silent / none eligible)
    AUDITED = 4  # an auditor was seated
    DISPUTED = 8  # a committee was seated
    ESCALATED = 16
    BATCH = 32  # r = 1: committed inside a batch root (`commitBatch`); the hub stores no digest


class VerificationState(enum.StrEnum):
    """What a user is told about a request's result (gateway, `inferd verify`)."""

    PENDING = "pending"  # paid, seats not drawn yet
    ASSIGNED = "assigned"  # seats drawn, nothing committed
    SUBMITTED = "submitted"  # committed, not revealed/final yet
    AUDIT_PENDING = "audit_pending"  # an auditor is re-executing it
    AUDITED = "audited"  # final, and an auditor agreed
    DISPUTED = "disputed"  # a committee / escalation was (or is) involved
    FINAL = "final"
    REFUNDED = "refunded"


@dataclass(frozen=True)
class ModelInfo:
    model_id: bytes
    name: str
    engine_class: bytes
    min_stake: int
    base_fee: int
    per_token_fee: int
    timeout_blocks: int
    redundancy: int
    audit_bps: int
    active_miner_count: int
    audit_pool: int

    @property
    def quorum(self) -> int:
        return self.redundancy // 2 + 1

    def price(self, max_tokens: int) -> int:
        """The exact fee of a request declaring `max_tokens` (the hub's `price`)."""
        return self.base_fee + self.per_token_fee * max_tokens


@dataclass(frozen=True)
class MinerInfo:
    address: str
    model_id: bytes | None  # None: not registered
    stake: int
    credits: int
    active: bool
    exit_unlock_block: int  # 0: no exit requested
    active_since: int = 0


@dataclass(frozen=True)
class RequestInfo:
    """`getRequest(id)`. Seats: for r = 1 `[assignee, auditor, committee...]`, else the r assignees.

    `digests[i]` is seat i's commitment until it revealed (bit i of `revealed`), then its digest.
    """

    id: int
    phase: Phase
    requester: str
    model_id: bytes
    input_digest: bytes
    output_digest: bytes | None  # final or provisional; None: none yet
    fee: int
    mark: int
    redundancy: int
    flags: RequestFlag
    committed: int  # bit per seat
    revealed: int  # bit per seat
    seats: tuple[str, ...]
    digests: tuple[bytes, ...]

    @property
    def assignees(self) -> tuple[str, ...]:
        return self.seats[: self.redundancy]

    @property
    def auditor(self) -> str | None:
        if self.redundancy == 1 and len(self.seats) > 1 and RequestFlag.AUDITED in self.flags:
            return self.seats[1]
        return None

    @property
    def committee(self) -> tuple[str, ...]:
        return self.seats[2:] if self.redundancy == 1 else ()

    @property
    def reassigned(self) -> bool:
        return RequestFlag.REASSIGNED in self.flags

    def seat_of(self, miner: str) -> int | None:
        """The seat index of `miner`, None when it holds none."""
        who = checksum(miner)
        return self.seats.index(who) if who in self.seats else None

    def has_committed(self, miner: str) -> bool:
        seat = self.seat_of(miner)
        return seat is not None and bool(self.committed >> seat & 1)

    def has_revealed(self, miner: str) -> bool:
        seat = self.seat_of(miner)
        return seat is not None and bool(self.revealed >> seat & 1)

    def revealed_digest(self, miner: str) -> bytes | None:
        """The digest `miner` revealed here (None: no seat or not revealed)."""
        seat = self.seat_of(miner)
        if seat is None or not self.revealed >> seat & 1:
            return None
        return self.digests[seat]

    @property
    def verification_state(self) -> VerificationState:
        ph = self.phase
        if ph == Phase.REFUNDED:
            return VerificationState.REFUNDED
        if RequestFlag.DISPUTED in self.flags or Phase.COMMITTEE <= ph <= Phase.VOTE:
            return VerificationState.DISPUTED
        if ph == Phase.FINAL:
            return VerificationState.AUDITED if RequestFlag.AUDITED in self.flags else VerificationState.FINAL
        if ph in (Phase.AUDIT, Phase.AUDIT_REVEAL):
            return VerificationState.AUDIT_PENDING
        if ph == Phase.PENDING or ph == Phase.NONE:
            return VerificationState.PENDING
        if self.committed:
            return VerificationState.SUBMITTED
        return VerificationState.ASSIGNED


@dataclass(frozen=True)
class EscalationInfo:
    """`getEscalation(id)`; `challenger` is None when the request was never escalated."""

    challenger: str | None
    commit_end: int
    reveal_end: int
    votes_for: int  # for the challenged (provisional) digest
    votes_against: int  # for the challenger's digest
    challenger_digest: bytes
    bond: int
    voter_share: int
    overturned: bool


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    block_number: int
    gas_used: int
    effective_gas_price: int
    events: list[HubEvent] = field(default_factory=list)
    receipt: TxReceipt | None = field(default=None, repr=False, compare=False)

    @property
    def fee_paid(self) -> int:
        """Wei spent on gas by the sender: gasUsed * effectiveGasPrice."""
        return self.gas_used * self.effective_gas_price

    def of(self, kind: type[E]) -> list[E]:
        """The events of one type, e.g. `tx.of(InferenceAssigned)`."""
        return [e for e in self.events if isinstance(e, kind)]


@dataclass(frozen=True)
class RequestResult:
    """One paid request. Seats come later: `InferenceAssigned` (see `HubClient.assign`)."""

    id: int
    fee: int
    max_tokens: int
    tx: TxResult


def model_id(name: str) -> bytes:
    """`keccak256(bytes(name))`, the hub's model id."""
    return bytes(AsyncWeb3.keccak(text=name))


def to_digest(value: Digest) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"a digest is 32 bytes, got {len(raw)}")
    return raw


def commitment(output_digest: Digest, miner: str, request_id: int) -> bytes:
    """`keccak256(abi.encode(outputDigest, miner, id))`: what a seat commits (and a voter, its vote)."""
    data = abi_encode(
        ["bytes32", "address", "uint256"], [to_digest(output_digest), checksum(miner), request_id]
    )
    return bytes(keccak(data))


def batch_root(ids: Sequence[int], leaves: Sequence[bytes]) -> bytes:
    """`keccak256(abi.encodePacked(uint256[] ids, bytes32[] leaves))`: what `commitBatch` commits.

    `leaves[i]` is `commitment(digest, miner, ids[i])`; ids strictly ascending (the hub refuses
    others), so one root holds one leaf per request.
    """
    if len(ids) != len(leaves):
        raise ValueError(f"{len(ids)} ids for {len(leaves)} leaves")
    packed = b"".join(int(i).to_bytes(32, "big") for i in ids) + b"".join(to_digest(x) for x in leaves)
    return bytes(keccak(packed))


def _opt_digest(value: bytes) -> bytes | None:
    return None if value == bytes(32) else bytes(value)
