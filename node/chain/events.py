"""Typed InferenceHub events and a decoder from raw logs (`eth_getLogs` / receipt logs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from node.chain.artifacts import hub_abi


@dataclass(frozen=True)
class LogRef:
    """Where a log sits on chain (for idempotency keys and reorg handling)."""

    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    address: str


@dataclass(frozen=True)
class InferenceRequested:
    id: int
    requester: str
    model_id: bytes
    input_digest: bytes
    fee: int
    deadline: int
    assignees: tuple[str, ...]
    log: LogRef


@dataclass(frozen=True)
class ResultSubmitted:
    id: int
    miner: str
    output_digest: bytes
    log: LogRef


@dataclass(frozen=True)
class InferenceFinalized:
    id: int
    output_digest: bytes
    log: LogRef


@dataclass(frozen=True)
class InferenceExpired:
    """`reassigned`: the request has new `assignees` and `deadline`; otherwise the fee was refunded."""

    id: int
    reassigned: bool
    input_digest: bytes
    deadline: int
    assignees: tuple[str, ...]
    log: LogRef


@dataclass(frozen=True)
class OtherHubEvent:
    """Any other hub event (model/miner/stake/slash/withdraw), with its decoded arguments."""

    name: str
    args: dict[str, Any]
    log: LogRef


HubEvent = InferenceRequested | ResultSubmitted | InferenceFinalized | InferenceExpired | OtherHubEvent


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
    """topic0 (0x-hex) of a hub event by name, e.g. `event_topic("InferenceRequested")`."""
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
        return to_checksum_address(value)
    if isinstance(value, tuple | list):
        return tuple(_norm(v) for v in value)
    return value


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
        block_number=int(_get(log, "blockNumber", 0) or 0),
        block_hash=_hex(block_hash) if block_hash is not None else "",
        tx_hash=_hex(_get(log, "transactionHash", b"")),
        log_index=int(_get(log, "logIndex", 0) or 0),
        address=to_checksum_address(_get(log, "address")) if _get(log, "address") else "",
    )
    if ev.name == "InferenceRequested":
        return InferenceRequested(
            id=args["id"],
            requester=args["requester"],
            model_id=args["modelId"],
            input_digest=args["inputDigest"],
            fee=args["fee"],
            deadline=args["deadline"],
            assignees=tuple(args["assignees"]),
            log=ref,
        )
    if ev.name == "ResultSubmitted":
        return ResultSubmitted(
            id=args["id"], miner=args["miner"], output_digest=args["outputDigest"], log=ref
        )
    if ev.name == "InferenceFinalized":
        return InferenceFinalized(id=args["id"], output_digest=args["outputDigest"], log=ref)
    if ev.name == "InferenceExpired":
        return InferenceExpired(
            id=args["id"],
            reassigned=args["reassigned"],
            input_digest=args["inputDigest"],
            deadline=args["deadline"],
            assignees=tuple(args["assignees"]),
            log=ref,
        )
    return OtherHubEvent(name=ev.name, args=args, log=ref)


def decode_logs(logs: Iterable[Mapping[str, Any]]) -> list[HubEvent]:
    """Decode every hub event among `logs` (e.g. a receipt's logs), in order, skipping others."""
    out: list[HubEvent] = []
    for log in logs:
        event = decode_log(log)
        if event is not None:
            out.append(event)
    return out
