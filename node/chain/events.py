"""Typed InferenceHub events (protocol v2) and a decoder from raw logs (`eth_getLogs` / receipt logs).

One frozen dataclass per hub event, its fields the event's arguments in snake_case (bytes32 as
`bytes`, addresses checksummed, address arrays as tuples) plus `log`, where the log sits on chain.
The request lifecycle, in the order a request meets them:

    InferenceRequested (no seats yet) → InferenceAssigned (seats; again on reassignment)
    → ResultCommitted* → RevealOpened (r > 1, or an audit/committee's commits are in) → ResultRevealed*
    → [AuditOpened → ... → CommitteeOpened → ...] → InferenceResolved (provisional, escalation window)
    → [EscalationOpened → VoteCommitted* → VoteRevealed*] → InferenceFinalized | InferenceRefunded
    (an r = 1 batch: one `ResultCommitted` per id carrying the root, then one `BatchRevealed`
    with every leaf of the root beside its ids' `ResultRevealed`)

Money moves are their own events (`Slashed`, `Credited`, `Burned`), so indexers never recompute them.
An event the ABI has but this module does not type (none today) decodes as `OtherHubEvent`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.crypto import keccak

from node.chain.abicall import checksum, quantity
from node.chain.artifacts import hub_abi


@dataclass(frozen=True)
class LogRef:
    """Where a log sits on chain (for idempotency keys and reorg handling)."""

    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    address: str


class SlashReason(enum.IntEnum):
    SILENT = 1
    MINORITY = 2
    FRAUD = 3
    EQUIVOCATION = 4


class CreditReason(enum.IntEnum):
    FEE = 1
    REFUND = 2
    AUDIT = 3
    COMMITTEE = 4
    BOUNTY = 5
    VOTE = 6
    BOND = 7
    COMPENSATION = 8


# ------------------------------------------------------------------------------ models and miners


@dataclass(frozen=True)
class ModelRegistered:
    model_id: bytes
    name: str
    engine_class: bytes
    min_stake: int
    base_fee: int
    per_token_fee: int
    timeout_blocks: int
    redundancy: int
    audit_bps: int
    log: LogRef


@dataclass(frozen=True)
class MinerRegistered:
    miner: str
    model_id: bytes
    stake: int
    log: LogRef


@dataclass(frozen=True)
class StakeAdded:
    miner: str
    amount: int
    stake: int
    log: LogRef


@dataclass(frozen=True)
class MinerActivated:
    miner: str
    model_id: bytes
    log: LogRef


@dataclass(frozen=True)
class MinerDeactivated:
    miner: str
    model_id: bytes
    log: LogRef


@dataclass(frozen=True)
class ExitRequested:
    miner: str
    unlock_block: int
    log: LogRef


@dataclass(frozen=True)
class StakeWithdrawn:
    miner: str
    amount: int
    log: LogRef


@dataclass(frozen=True)
class Withdrawn:
    account: str
    amount: int
    log: LogRef


# ------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class InferenceRequested:
    """A paid request; seats are drawn later (`InferenceAssigned`). `max_tokens`: declared budget."""

    id: int
    requester: str
    model_id: bytes
    input_digest: bytes
    fee: int
    max_tokens: int
    log: LogRef


@dataclass(frozen=True)
class InferenceAssigned:
    """Seats to work on `id` (first assignment or reassignment); commits are due by `deadline`."""

    id: int
    model_id: bytes
    input_digest: bytes
    deadline: int
    assignees: tuple[str, ...]
    log: LogRef


@dataclass(frozen=True)
class ResultCommitted:
    id: int
    miner: str
    commitment: bytes
    log: LogRef


@dataclass(frozen=True)
class RevealOpened:
    """Commits are in: the seats reveal until `deadline`."""

    id: int
    deadline: int
    log: LogRef


@dataclass(frozen=True)
class ResultRevealed:
    id: int
    miner: str
    output_digest: bytes
    log: LogRef


@dataclass(frozen=True)
class AuditOpened:
    """An r = 1 result was drawn for audit: `auditor` re-executes the input and commits by `deadline`."""

    id: int
    auditor: str
    input_digest: bytes
    deadline: int
    log: LogRef


@dataclass(frozen=True)
class CommitteeOpened:
    """Assignee and auditor disagreed: `members` re-execute the input and commit by `deadline`."""

    id: int
    input_digest: bytes
    deadline: int
    members: tuple[str, ...]
    log: LogRef


@dataclass(frozen=True)
class InferenceResolved:
    """A provisional outcome; an outvoted seat may escalate until `escalation_end`."""

    id: int
    output_digest: bytes
    escalation_end: int
    log: LogRef


@dataclass(frozen=True)
class EscalationOpened:
    id: int
    challenger: str
    challenger_digest: bytes
    commit_end: int
    reveal_end: int
    log: LogRef


@dataclass(frozen=True)
class VoteCommitted:
    id: int
    voter: str
    log: LogRef


@dataclass(frozen=True)
class VoteRevealed:
    id: int
    voter: str
    digest: bytes
    log: LogRef


@dataclass(frozen=True)
class InferenceFinalized:
    id: int
    output_digest: bytes
    log: LogRef


@dataclass(frozen=True)
class InferenceRefunded:
    id: int
    log: LogRef


# ------------------------------------------------------------------------------ money


@dataclass(frozen=True)
class Slashed:
    id: int
    miner: str
    amount: int
    reason: SlashReason
    log: LogRef


@dataclass(frozen=True)
class Credited:
    account: str
    id: int
    amount: int
    reason: CreditReason
    log: LogRef


@dataclass(frozen=True)
class Burned:
    id: int
    amount: int
    log: LogRef


@dataclass(frozen=True)
class BatchRevealed:
    """A `revealBatch`: every leaf of the root `miner` committed (withheld entries included), in the
    committed (ascending) id order, so `keccak256(abi.encodePacked(ids, leaves))` rebuilds `root`
    (`node.chain.hub.batch_root`) for `proveBatchEquivocation`."""

    miner: str
    root: bytes
    ids: tuple[int, ...]
    leaves: tuple[bytes, ...]
    log: LogRef


@dataclass(frozen=True)
class EquivocationProven:
    id: int
    miner: str
    signed_digest: bytes
    prover: str
    log: LogRef


@dataclass(frozen=True)
class OtherHubEvent:
    """A hub event this module has no class for, with its decoded arguments by ABI name."""

    name: str
    args: dict[str, Any]
    log: LogRef


TYPED = (
    ModelRegistered, MinerRegistered, StakeAdded, MinerActivated, MinerDeactivated, ExitRequested,
    StakeWithdrawn, Withdrawn, InferenceRequested, InferenceAssigned, ResultCommitted, RevealOpened,
    ResultRevealed, AuditOpened, CommitteeOpened, InferenceResolved, EscalationOpened, VoteCommitted,
    VoteRevealed, InferenceFinalized, InferenceRefunded, Slashed, Credited, Burned, EquivocationProven,
    BatchRevealed,
)  # fmt: skip
_BY_NAME: dict[str, type[Any]] = {cls.__name__: cls for cls in TYPED}
_CONVERT: dict[tuple[str, str], Any] = {
    ("Slashed", "reason"): SlashReason,
    ("Credited", "reason"): CreditReason,
}

HubEvent = (
    ModelRegistered | MinerRegistered | StakeAdded | MinerActivated | MinerDeactivated | ExitRequested
    | StakeWithdrawn | Withdrawn | InferenceRequested | InferenceAssigned | ResultCommitted | RevealOpened
    | ResultRevealed | AuditOpened | CommitteeOpened | InferenceResolved | EscalationOpened | VoteCommitted
    | VoteRevealed | InferenceFinalized | InferenceRefunded | Slashed | Credited | Burned
    | EquivocationProven | BatchRevealed | OtherHubEvent
)  # fmt: skip
"""Any decoded hub event."""


@dataclass(frozen=True)
class _EventAbi:
    name: str
    indexed: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]


def _signature(item: Mapping[str, Any]) -> str:
    return f"{item['name']}({','.join(str(i['type']) for i in item['inputs'])})"


@cache
def _events() -> dict[bytes, _EventAbi]:
    table: dict[bytes, _EventAbi] = {}
    for item in hub_abi():
        if item.get("type") != "event":
            continue
        ins = item["inputs"]
        table[keccak(text=_signature(item))] = _EventAbi(
            name=str(item["name"]),
            indexed=tuple((str(i["name"]), str(i["type"])) for i in ins if i["indexed"]),
            data=tuple((str(i["name"]), str(i["type"])) for i in ins if not i["indexed"]),
        )
    return table


def event_topic(name: str) -> str:
    """topic0 (0x-hex) of a hub event by name, e.g. `event_topic("InferenceAssigned")`."""
    for topic, ev in _events().items():
        if ev.name == name:
            return "0x" + topic.hex()
    raise KeyError(f"InferenceHub has no event {name!r}")


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x"))
    return bytes(value)  # HexBytes and friends


def _hex(value: Any) -> str:
    return "0x" + _bytes(value).hex()


def _get(log: Mapping[str, Any], key: str, default: Any = None) -> Any:
    try:
        return log[key]
    except (KeyError, AttributeError):
        return default


def _norm(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return checksum(value)
    if isinstance(value, tuple | list):
        return tuple(_norm(v) for v in value)
    return value


@cache
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def decode_log(log: Mapping[str, Any]) -> HubEvent | None:
    """Decode one raw log of the hub into a typed event; None for a log that is not a hub event.

    Does not check the emitting address: filter logs by the hub address first.
    """
    topics = [_bytes(t) for t in (_get(log, "topics") or [])]
    if not topics:
        return None
    ev = _events().get(topics[0])
    if ev is None or len(topics) != 1 + len(ev.indexed):
        return None
    args: dict[str, Any] = {}
    for (name, typ), topic in zip(ev.indexed, topics[1:], strict=True):
        (args[name],) = abi_decode([typ], topic)
    values = abi_decode([t for _, t in ev.data], _bytes(_get(log, "data", b"")))
    for (name, _), value in zip(ev.data, values, strict=True):
        args[name] = value
    args = {k: _norm(v) for k, v in args.items()}
    block_hash = _get(log, "blockHash")
    ref = LogRef(
        block_number=quantity(_get(log, "blockNumber") or 0),
        block_hash=_hex(block_hash) if block_hash is not None else "",
        tx_hash=_hex(_get(log, "transactionHash", b"")),
        log_index=quantity(_get(log, "logIndex") or 0),
        address=checksum(_get(log, "address")) if _get(log, "address") else "",
    )
    cls = _BY_NAME.get(ev.name)
    if cls is None:
        return OtherHubEvent(name=ev.name, args=args, log=ref)
    kwargs: dict[str, Any] = {"log": ref}
    for key, value in args.items():
        convert = _CONVERT.get((ev.name, key))
        kwargs[_snake(key)] = convert(value) if convert is not None else value
    wanted = {f.name for f in fields(cls)}
    if set(kwargs) != wanted:  # the ABI and this module disagree: keep the event, untyped
        return OtherHubEvent(name=ev.name, args=args, log=ref)
    event: HubEvent = cls(**kwargs)
    return event


def decode_logs(logs: Iterable[Mapping[str, Any]]) -> list[HubEvent]:
    """Decode every hub event among `logs` (e.g. a receipt's logs), in order, skipping others."""
    out: list[HubEvent] = []
    for log in logs:
        event = decode_log(log)
        if event is not None:
            out.append(event)
    return out


__all__ = [name for name in _BY_NAME] + [
    "CreditReason",
    "HubEvent",
    "LogRef",
    "OtherHubEvent",
    "SlashReason",
    "TYPED",
    "decode_log",
    "decode_logs",
    "event_topic",
]
