"""Miners' secp256k1 public keys, accepted from anywhere because they authenticate themselves.

Private prompts (issue 16) are encrypted to the assigned miners' own chain keys, so a requester needs
each miner's *public* key. An Ethereum address is `keccak256(public key)[12:]`, so a public key is
self-authenticating: whatever handed it over (the miner's MQTT heartbeat, a gateway cache, an RPC
node returning the miner's registration transaction), it is used only if it hashes to the address
the hub assigned. A wrong or forged key is refused (`WrongPublicKey`), never encrypted to.

Two sources, both untrusted:

* the miner announces `public_key_of(its private key)`; the requester checks `verify_public_key`;
* with no announcement, any transaction the miner sent (its `register` call) carries a signature
  from which `recover_public_key_from_tx` recovers the key: the signing hash is rebuilt with
  eth-account's own (typed or legacy) transaction serializers from the `eth_getTransactionByHash`
  fields, the key recovered with eth-keys, and the result checked against the transaction's `from`
  and, re-encoded with its signature, against the transaction's `hash`.

The canonical form here is Ethereum's: the 64-byte uncompressed point without the `0x04` prefix (what
is hashed into the address). Every function also accepts the 33-byte compressed and 65-byte
prefixed SEC1 forms (`normalize_public_key`); a point not on the curve is a `WrongPublicKey`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import coincurve
from eth_account._utils.legacy_transactions import (
    encode_transaction,
    serializable_unsigned_transaction_from_dict,
)
from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError as KeyValidationError

PUBLIC_KEY_BYTES = 64
"""Length of the canonical (Ethereum) public key: X || Y, no SEC1 prefix."""


class WrongPublicKey(ValueError):
    """Bytes that are not a secp256k1 public key, or the key of a different address."""


class TxRecoveryError(ValueError):
    """A transaction dict whose signer cannot be recovered (unknown type, missing or bad fields)."""


def _as_bytes(value: bytes | str) -> bytes:
    if isinstance(value, str):
        try:
            return bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise WrongPublicKey("a public key must be hex or bytes") from None
    return bytes(value)


def normalize_public_key(pub: bytes | str) -> bytes:
    """The 64-byte Ethereum form of a public key given as 33, 64 or 65 bytes (or their hex)."""
    raw = _as_bytes(pub)
    if len(raw) == PUBLIC_KEY_BYTES:
        raw = b"\x04" + raw
    if len(raw) not in (33, 65):
        raise WrongPublicKey(
            f"a secp256k1 public key is 33, 64 or 65 bytes, got {len(raw)}; send the key from "
            "public_key_of(private_key)"
        )
    try:
        point = coincurve.PublicKey(raw)
    except ValueError:
        raise WrongPublicKey("these bytes are not a point on secp256k1") from None
    return point.format(compressed=False)[1:]


def public_key_of(private_key: bytes | str) -> bytes:
    """The 64-byte public key of a 32-byte private key (hex with or without `0x`, or bytes)."""
    raw = _as_bytes(private_key) if isinstance(private_key, str) else bytes(private_key)
    if len(raw) != 32:
        raise ValueError(f"a secp256k1 private key is 32 bytes, got {len(raw)}")
    try:
        return coincurve.PrivateKey(raw).public_key.format(compressed=False)[1:]
    except ValueError:
        raise ValueError("not a valid secp256k1 private key (zero or above the curve order)") from None


def address_of_public_key(pub: bytes | str) -> str:
    """The checksummed address of a public key: keccak256(64-byte key)[12:]."""
    return to_checksum_address(keccak(normalize_public_key(pub))[12:])


def verify_public_key(pub: bytes | str, address: str) -> bytes:
    """The 64-byte key if it belongs to `address`; `WrongPublicKey` otherwise."""
    key = normalize_public_key(pub)
    derived = to_checksum_address(keccak(key)[12:])
    try:
        expected = to_checksum_address(address)
    except ValueError:
        raise WrongPublicKey(f"{address[:50]!r} is not an Ethereum address") from None
    if derived != expected:
        raise WrongPublicKey(
            f"the public key belongs to {derived}, not {expected}: refused (a stale or forged key; "
            "ask the miner for its key again or recover it from one of its transactions)"
        )
    return key


def _int(tx: Mapping[str, Any], name: str) -> int:
    value = tx.get(name)
    if isinstance(value, bool) or value is None:
        raise TxRecoveryError(f"transaction field {name!r} is missing")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16) if value.startswith("0x") else int(value)
        except ValueError:
            pass
    elif isinstance(value, bytes):
        return int.from_bytes(value, "big")
    raise TxRecoveryError(f"transaction field {name!r} is not an integer")


def _unsigned_fields(tx: Mapping[str, Any]) -> tuple[dict[str, Any], int, int]:
    """The unsigned transaction dict eth-account serializes, its recovery id and its raw `v`."""
    tx_type = _int(tx, "type") if tx.get("type") is not None else 0
    data = tx.get("input", tx.get("data", b""))
    fields: dict[str, Any] = {
        "nonce": _int(tx, "nonce"),
        "gas": _int(tx, "gas"),
        "value": _int(tx, "value"),
        "data": data,
    }
    if tx.get("to") is not None:
        fields["to"] = tx["to"]
    v = _int(tx, "v") if tx.get("v") is not None else _int(tx, "yParity")
    if tx_type == 0:
        fields["gasPrice"] = _int(tx, "gasPrice")
        if v in (27, 28):  # pre-EIP-155: no chain id in the signing hash
            fields["chainId"] = None
            return fields, v - 27, v
        if v < 35:
            raise TxRecoveryError(f"legacy transaction with an invalid v={v}")
        fields["chainId"] = (v - 35) // 2
        return fields, (v - 35) % 2, v
    if tx_type not in (1, 2):
        raise TxRecoveryError(
            f"transaction type {tx_type} is not supported here (legacy, 1 or 2); "
            "recover the key from another transaction of the same sender"
        )
    fields |= {"type": tx_type, "chainId": _int(tx, "chainId"), "accessList": tx.get("accessList", [])}
    if tx_type == 1:
        fields["gasPrice"] = _int(tx, "gasPrice")
    else:
        fields["maxFeePerGas"] = _int(tx, "maxFeePerGas")
        fields["maxPriorityFeePerGas"] = _int(tx, "maxPriorityFeePerGas")
    parity = _int(tx, "yParity") if tx.get("yParity") is not None else v
    if parity not in (0, 1):
        raise TxRecoveryError(f"typed transaction with an invalid y parity {parity}")
    return fields, parity, parity


def recover_public_key_from_tx(tx: Mapping[str, Any]) -> bytes:
    """The sender's 64-byte public key from a signed transaction as `eth_getTransactionByHash` gives it.

    Legacy (EIP-155 or not), EIP-2930 and EIP-1559 transactions. The recovered key is checked
    against the transaction's `from` and its `hash` (when present); `TxRecoveryError` otherwise.
    The caller still checks the key against the miner's address (`verify_public_key`): an RPC node
    may hand over any transaction.
    """
    fields, recovery_id, raw_v = _unsigned_fields(tx)
    r, s = _int(tx, "r"), _int(tx, "s")
    try:
        unsigned = serializable_unsigned_transaction_from_dict(dict(fields))
        signing_hash = unsigned.hash()
        signature = Signature(vrs=(recovery_id, r, s))
        key = signature.recover_public_key_from_msg_hash(signing_hash)
    except (BadSignature, KeyValidationError, TypeError, ValueError) as exc:
        raise TxRecoveryError(f"cannot recover the signer: {type(exc).__name__}: {exc}") from None
    public = key.to_bytes()
    sender = to_checksum_address(key.to_canonical_address())
    if tx.get("from") is not None and to_checksum_address(tx["from"]) != sender:
        raise TxRecoveryError(f"the signature recovers {sender}, but the transaction says from={tx['from']}")
    if tx.get("hash") is not None:
        try:
            encoded = encode_transaction(unsigned, (raw_v, r, s))
        except (TypeError, ValueError) as exc:
            raise TxRecoveryError(f"cannot re-encode the transaction: {exc}") from None
        if keccak(encoded) != _as_tx_hash(tx["hash"]):
            raise TxRecoveryError("the transaction fields do not hash to its hash: a modified transaction")
    return public


def _as_tx_hash(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x"))
    return bytes(value)


__all__ = [
    "PUBLIC_KEY_BYTES",
    "TxRecoveryError",
    "WrongPublicKey",
    "address_of_public_key",
    "normalize_public_key",
    "public_key_of",
    "recover_public_key_from_tx",
    "verify_public_key",
]
