"""Hub calls and JSON-RPC without web3.py's per-call machinery: cached ABI codecs, one RPC each.

`contract.functions.getRequest(id).call()` looks the function up in the ABI, hashes its signature,
validates and normalises every argument, and sends its `eth_call` through the middleware onion
(whose `validation` layer asks the node for its chain id first: a second round trip). Under load
that was a quarter of the gateway's and the miner's CPU per request (py-spy, the fake-engine
devnet at concurrency 64). Here each function's selector and types are derived once from the ABI,
arguments are encoded with eth-abi, and the `eth_call` goes straight to the provider; `rpc` does
the same for the log follower's hot calls (block number, block hash, logs), whose results web3
would otherwise turn into AttributeDicts of HexBytes field by field.

Results have web3's shape (one output: the value; several: a tuple; structs: tuples) but addresses
come back as eth-abi gives them (lowercase hex): callers that show or compare them checksum them with
`checksum`, which caches (`to_checksum_address` hashes on every call).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError
from web3.types import BlockIdentifier

from node.chain import keepalive
from node.chain.errors import decode_revert

LEAN_DROPPED = ("validation", "ens_name_to_address")
"""web3 middleware that costs CPU (or an RPC) on every call and buys inferd nothing: `validation`
fetches the chain id before each transaction-shaped call (we sign locally with an explicit chainId),
`ens_name_to_address` walks every argument looking for ENS names (we only use hex addresses)."""


def lean(w3: AsyncWeb3[Any]) -> AsyncWeb3[Any]:
    """Drop `LEAN_DROPPED` from `w3`'s middleware onion (idempotent); returns `w3`."""
    for name in LEAN_DROPPED:
        with contextlib.suppress(ValueError, KeyError):
            w3.middleware_onion.remove(name)
    return w3


@functools.lru_cache(maxsize=4096)
def checksum(address: str) -> ChecksumAddress:
    """`to_checksum_address`, cached: the hub's addresses are few and seen on every request."""
    return to_checksum_address(address)


def _abi_type(param: dict[str, Any]) -> str:
    """The canonical type string of an ABI parameter (tuples spelled out, arrays kept)."""
    typ = str(param["type"])
    if typ.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param.get("components", []))
        return f"({inner}){typ[len('tuple') :]}"
    return typ


@dataclass(frozen=True)
class FunctionCodec:
    """One ABI function: its selector and argument/result types."""

    name: str
    selector: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def encode(self, args: Sequence[Any]) -> bytes:
        return self.selector + abi_encode(list(self.inputs), list(args))

    def decode(self, data: bytes) -> Any:
        values = abi_decode(list(self.outputs), data)
        return values[0] if len(values) == 1 else tuple(values)


def codecs(abi: Sequence[dict[str, Any]]) -> dict[str, FunctionCodec]:
    """Every (not overloaded) function of `abi` by name."""
    out: dict[str, FunctionCodec] = {}
    for item in abi:
        if item.get("type") != "function":
            continue
        inputs = tuple(_abi_type(p) for p in item.get("inputs", []))
        name = str(item["name"])
        if name in out:
            raise ValueError(f"the hub ABI overloads {name}; abicall needs one function per name")
        out[name] = FunctionCodec(
            name=name,
            selector=keccak(text=f"{name}({','.join(inputs)})")[:4],
            inputs=inputs,
            outputs=tuple(_abi_type(p) for p in item.get("outputs", [])),
        )
    return out


async def rpc(w3: AsyncWeb3[Any], method: str, params: list[Any]) -> Any:
    """One JSON-RPC call straight to `w3`'s provider (over its kept-alive session directly, see
    `node.chain.keepalive.request`): the raw `result` (hex strings, plain dicts), none of web3's
    result formatting. An `error` answer raises web3's `Web3RPCError`."""
    response = await keepalive.request(w3, method, params)
    error = response.get("error")
    if error is not None:
        message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
        raise Web3RPCError(f"{method}: {message}"[:300], rpc_response=cast(Any, response))
    return response.get("result")


def hex_param(value: Any) -> Any:
    """A value as JSON-RPC wants it: ints as 0x-quantities, bytes as 0x-data, lists element-wise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [hex_param(v) for v in value]
    return value


def quantity(value: Any) -> int:
    """A JSON-RPC quantity (0x-hex string) or an int as int."""
    return int(value, 16) if isinstance(value, str) else int(value)


_RECEIPT_QUANTITIES = (
    "blockNumber",
    "gasUsed",
    "effectiveGasPrice",
    "status",
    "cumulativeGasUsed",
    "transactionIndex",
    "type",
)
_LOG_QUANTITIES = ("blockNumber", "logIndex", "transactionIndex")


def _address_or_none(value: Any) -> Any:
    return checksum(value) if isinstance(value, str) else value


def receipt(raw: dict[str, Any]) -> dict[str, Any]:
    """A node's raw receipt in the shape web3's formatters give (ints, HexBytes hashes, checksummed
    addresses), for the fields inferd reads, at a fraction of their cost: quantities, hashes,
    addresses, and each log's topics/data/position."""
    out = dict(raw)
    for key in _RECEIPT_QUANTITIES:
        if out.get(key) is not None:
            out[key] = quantity(out[key])
    for key in ("transactionHash", "blockHash"):
        if isinstance(out.get(key), str):
            out[key] = HexBytes(out[key])
    for key in ("from", "to", "contractAddress"):
        out[key] = _address_or_none(out.get(key))
    logs = []
    for entry in out.get("logs") or []:
        log = dict(entry)
        for key in _LOG_QUANTITIES:
            if log.get(key) is not None:
                log[key] = quantity(log[key])
        for key in ("transactionHash", "blockHash", "data"):
            if isinstance(log.get(key), str):
                log[key] = HexBytes(log[key])
        log["address"] = _address_or_none(log.get("address"))
        log["topics"] = [HexBytes(t) if isinstance(t, str) else t for t in log.get("topics") or []]
        logs.append(log)
    out["logs"] = logs
    return out


async def eth_call(w3: AsyncWeb3[Any], to: str, data: bytes, block: BlockIdentifier = "latest") -> bytes:
    """`eth_call` straight to the provider. A revert raises the hub's typed `HubError` (as web3's
    `ContractLogicError` path did); any other RPC error raises web3's `Web3RPCError`."""
    params = [{"to": to, "data": "0x" + data.hex()}, hex_param(block)]
    response = await keepalive.request(w3, "eth_call", params)
    error = response.get("error")
    if error is not None:
        err = error if isinstance(error, dict) else {"message": str(error)}
        message = str(err.get("message", ""))
        revert = err.get("data")
        if isinstance(revert, dict):
            revert = revert.get("data")
        if isinstance(revert, str) or "revert" in message.lower():
            raise decode_revert(revert if isinstance(revert, str) else None)
        raise Web3RPCError(message, rpc_response=cast(Any, response))
    result = response.get("result")
    if not isinstance(result, str):
        message = f"eth_call answered without a result: {response!r}"[:300]
        raise Web3RPCError(message, rpc_response=cast(Any, response))
    return bytes.fromhex(result.removeprefix("0x"))


__all__ = [
    "LEAN_DROPPED",
    "FunctionCodec",
    "checksum",
    "codecs",
    "eth_call",
    "hex_param",
    "lean",
    "quantity",
    "receipt",
    "rpc",
]
