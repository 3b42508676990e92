"""Typed hub errors: custom-error selectors decoded into names, arguments and actionable messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.crypto import keccak

from node.chain.artifacts import hub_abi


class ChainError(RuntimeError):
    """Base of every error raised by the chain layer."""


class HubError(ChainError):
    """The hub reverted with one of its custom errors (or a panic / plain revert).

    `name` is the Solidity error name (e.g. "FeeTooLow"), `args` its decoded arguments by name.
    """

    def __init__(self, name: str, args: Mapping[str, Any] | None = None, data: str | None = None) -> None:
        self.name = name
        self.args_by_name: dict[str, Any] = dict(args or {})
        self.data = data
        super().__init__(_describe(name, self.args_by_name))


class TxFailed(ChainError):
    """A transaction was mined with status 0 and the revert reason could not be decoded."""

    def __init__(self, tx_hash: str, block_number: int) -> None:
        self.tx_hash = tx_hash
        self.block_number = block_number
        super().__init__(f"transaction {tx_hash} reverted in block {block_number}")


def _eth(wei: Any) -> str:
    return f"{int(wei)} wei ({int(wei) / 10**18:.6g} ETH)"


_PHASES = (
    "None", "Pending", "Assigned", "Reveal", "Audit", "AuditReveal", "Committee", "CommitteeReveal",
    "Resolved", "Vote", "Final", "Refunded",
)  # fmt: skip


def _phase(value: Any) -> str:
    n = int(value)
    return _PHASES[n] if 0 <= n < len(_PHASES) else str(n)


_HINTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "NotOwner": lambda a: "only the hub owner (deployer) may register models",
    "Reentrancy": lambda a: "re-entrant call into the hub rejected",
    "InvalidModel": lambda a: (
        "invalid model parameters: need a name, a non-zero engine class, 0 < minStake, 0 < baseFee, "
        "fees below 2^96, 0 < timeoutBlocks <= 200, 1 <= redundancy <= 7, auditBps <= 10000 "
        "(and > 0 when redundancy is 1)"
    ),
    "Underpriced": lambda a: (
        f"audits would not deter cheating: with a max price of {_eth(a['maxPrice'])} a minStake of "
        f"{_eth(a['minStake'])} is too low for this auditBps (need auditBps * minStake >= "
        "2 * (10000 - auditBps) * max price); raise minStake or auditBps, or lower the fees"
    ),
    "ModelExists": lambda a: "a model with this name is already registered",
    "UnknownModel": lambda a: "no model with this id is registered on the hub (check the model name)",
    "EngineClassMismatch": lambda a: (
        f"engine class 0x{bytes(a['provided']).hex()} is not the model's 0x{bytes(a['required']).hex()}: "
        "run the engine the model was registered with (`inferd model class` shows this machine's)"
    ),
    "AlreadyRegistered": lambda a: "this address is already a registered miner; one model per address",
    "NotRegistered": lambda a: "this address is not a registered miner",
    "InsufficientStake": lambda a: (
        f"stake too low: the model requires {_eth(a['required'])}, got {_eth(a['provided'])}"
    ),
    "ZeroValue": lambda a: "send a non-zero amount",
    "ValueTooLarge": lambda a: "amount exceeds the hub's uint96 limit",
    "ExitPending": lambda a: (
        "an exit is pending for this miner; wait for the cooldown, then withdraw the stake"
    ),
    "ExitNotRequested": lambda a: "call requestExit first, then withdrawStake after the cooldown",
    "CooldownActive": lambda a: f"stake is locked until block {a['unlockBlock']}",
    "WrongFee": lambda a: (
        f"wrong amount: exactly {_eth(a['required'])} is required (price(model, maxTokens), or the bond), "
        f"got {_eth(a['provided'])}"
    ),
    "BadMaxTokens": lambda a: f"maxTokens {a['maxTokens']} is out of range: declare 1..65536",
    "NotEnoughMiners": lambda a: (
        f"the model needs {a['required']} active miners, only {a['available']} are active; try later"
    ),
    "ZeroDigest": lambda a: "digest must not be zero",
    "UnknownRequest": lambda a: f"request {a['id']} does not exist",
    "WrongPhase": lambda a: (
        f"request {a['id']} is in phase {_phase(a['phase'])}, where this call is not allowed"
    ),
    "DeadlinePassed": lambda a: f"request {a['id']} is past the deadline of its phase",
    "NotYet": lambda a: f"request {a['id']}: too early, allowed from block {a['at']}",
    "NotSeated": lambda a: "this address holds no seat for this request (in this phase)",
    "AlreadyCommitted": lambda a: f"this address already committed for request {a['id']}",
    "AlreadyRevealed": lambda a: f"this address already revealed for request {a['id']}",
    "CommitmentMismatch": lambda a: (
        f"request {a['id']}: the revealed digest does not match this address's commitment"
    ),
    "AuditDrawn": lambda a: (
        f"request {a['id']} was drawn for audit: call openAudit, reveal after RevealOpened"
    ),
    "NotDrawn": lambda a: f"request {a['id']} was not drawn for audit (or not in its reveal phase)",
    "CannotEscalate": lambda a: (
        f"request {a['id']}: only a party whose revealed digest lost the provisional outcome may escalate"
    ),
    "NotEligible": lambda a: (
        f"request {a['id']}: this address may not vote (not an active miner of the model before the "
        "escalation, seated on the request, or no vote committed)"
    ),
    "BadSignature": lambda a: "the signature is malformed or was not made by that miner for this request",
    "NoEquivocation": lambda a: (
        f"request {a['id']}: the signed digest is what the miner committed/revealed (or was proven already)"
    ),
    "NothingToClaim": lambda a: f"request {a['id']}: nothing to claim for this address",
    "LengthMismatch": lambda a: "the arrays must have the same length",
    "BadBatch": lambda a: "a batch holds 1 to 64 entries",
    "NothingToWithdraw": lambda a: "nothing to withdraw: no credits for this address",
    "TransferFailed": lambda a: "the ETH transfer to the caller failed (does it accept ETH?)",
}


def _describe(name: str, args: dict[str, Any]) -> str:
    hint = _HINTS.get(name)
    if hint is not None:
        try:
            return f"{name}: {hint(args)}"
        except (KeyError, ValueError, TypeError):
            pass
    shown = ", ".join(f"{k}={v}" for k, v in args.items())
    return f"{name}({shown})" if shown else name


@cache
def _selectors() -> dict[bytes, tuple[str, list[str], list[str]]]:
    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for item in hub_abi():
        if item.get("type") != "error":
            continue
        types = [str(i["type"]) for i in item.get("inputs", [])]
        names = [str(i.get("name") or f"arg{n}") for n, i in enumerate(item.get("inputs", []))]
        sig = f"{item['name']}({','.join(types)})"
        table[keccak(text=sig)[:4]] = (str(item["name"]), types, names)
    return table


_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)


def decode_revert(data: str | bytes | None) -> HubError:
    """Turn revert data (0x-hex or bytes) into a HubError; unknown selectors keep the raw data."""
    if data is None:
        return HubError("Reverted", data=None)
    raw = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else bytes(data)
    hex_data = "0x" + raw.hex()
    selector, body = raw[:4], raw[4:]
    known = _selectors().get(selector)
    try:
        if known is not None:
            name, types, names = known
            values = abi_decode(types, body) if types else ()
            return HubError(name, dict(zip(names, values, strict=True)), hex_data)
        if selector == _ERROR_STRING:
            (reason,) = abi_decode(["string"], body)
            return HubError("Error", {"reason": reason}, hex_data)
        if selector == _PANIC:
            (code,) = abi_decode(["uint256"], body)
            return HubError("Panic", {"code": hex(code)}, hex_data)
    except Exception:  # malformed revert data is reported raw below
        return HubError("Reverted", {"data": hex_data}, hex_data)
    return HubError("Reverted", {"data": hex_data} if raw else {}, hex_data)
