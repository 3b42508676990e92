"""EIP-712 result signatures: the miner signs what it answered, anyone can check who answered.

The typed data is `InferenceResult(uint256 requestId, bytes32 inputDigest, bytes32 outputDigest)`
under the domain `{name: "inferd", version: "2", chainId, verifyingContract: hub}`, so a signature
is bound to one request on one hub on one chain and cannot be replayed elsewhere. The miner signs,
the gateway returns the signature to clients, and `inferd verify` recovers the signer.
"""

from __future__ import annotations

import functools
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import SignableMessage
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

DOMAIN_NAME = "inferd"
DOMAIN_VERSION = "2"

RESULT_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "InferenceResult": [
        {"name": "requestId", "type": "uint256"},
        {"name": "inputDigest", "type": "bytes32"},
        {"name": "outputDigest", "type": "bytes32"},
    ],
}


class SignatureError(ValueError):
    """A signature or digest that cannot be used (wrong length, not hex, unrecoverable)."""


def _digest_bytes(value: bytes | str, what: str) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise SignatureError(f"{what} must be 32 bytes (a sha2-256 digest), got {len(raw)}")
    return raw


def result_typed_data(
    chain_id: int, hub: str, request_id: int, input_digest: bytes | str, output_digest: bytes | str
) -> dict[str, Any]:
    """The full EIP-712 message (domain, types, message) for one result."""
    return {
        "types": RESULT_TYPES,
        "primaryType": "InferenceResult",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": int(chain_id),
            "verifyingContract": to_checksum_address(hub),
        },
        "message": {
            "requestId": int(request_id),
            "inputDigest": _digest_bytes(input_digest, "input digest"),
            "outputDigest": _digest_bytes(output_digest, "output digest"),
        },
    }


_DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_RESULT_TYPEHASH = keccak(text="InferenceResult(uint256 requestId,bytes32 inputDigest,bytes32 outputDigest)")


@functools.lru_cache(maxsize=64)
def _domain_separator(chain_id: int, hub: str) -> bytes:
    return keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                _DOMAIN_TYPEHASH,
                keccak(text=DOMAIN_NAME),
                keccak(text=DOMAIN_VERSION),
                chain_id,
                to_checksum_address(hub),
            ],
        )
    )


def result_signable(
    chain_id: int, hub: str, request_id: int, input_digest: bytes | str, output_digest: bytes | str
) -> SignableMessage:
    """The encoded EIP-712 message that is signed and recovered.

    The same bytes as eth_account's `encode_typed_data(result_typed_data(...))` (a unit test holds
    them equal), built from the two fixed type hashes and a cached domain separator: the generic
    encoder parses the type schema on every call, a cost the miner pays per result and the gateway
    per answer it checks.
    """
    struct_hash = keccak(
        abi_encode(
            ["bytes32", "uint256", "bytes32", "bytes32"],
            [
                _RESULT_TYPEHASH,
                int(request_id),
                _digest_bytes(input_digest, "input digest"),
                _digest_bytes(output_digest, "output digest"),
            ],
        )
    )
    return SignableMessage(b"\x01", _domain_separator(int(chain_id), hub.lower()), struct_hash)


def sign_result(
    private_key: str | bytes,
    *,
    chain_id: int,
    hub: str,
    request_id: int,
    input_digest: bytes | str,
    output_digest: bytes | str,
) -> str:
    """Sign one result; returns the 65-byte signature as 0x-prefixed hex."""
    signed = Account.sign_message(
        result_signable(chain_id, hub, request_id, input_digest, output_digest), private_key
    )
    return "0x" + bytes(signed.signature).hex()


def recover_result_signer(
    signature: str | bytes,
    *,
    chain_id: int,
    hub: str,
    request_id: int,
    input_digest: bytes | str,
    output_digest: bytes | str,
) -> str:
    """The checksum address that signed this result; SignatureError if the signature is malformed."""
    sig = bytes.fromhex(signature.removeprefix("0x")) if isinstance(signature, str) else bytes(signature)
    if len(sig) != 65:
        raise SignatureError(f"an EIP-712 signature is 65 bytes, got {len(sig)}")
    try:
        signer: str = Account.recover_message(
            result_signable(chain_id, hub, request_id, input_digest, output_digest), signature=sig
        )
    except Exception as exc:  # eth_keys raises BadSignature / ValidationError for garbage
        raise SignatureError(f"signature cannot be recovered: {exc}") from exc
    return signer  # eth_account gives the checksum address


def verify_result_signature(
    signature: str | bytes,
    expected_signer: str,
    *,
    chain_id: int,
    hub: str,
    request_id: int,
    input_digest: bytes | str,
    output_digest: bytes | str,
) -> bool:
    """True when `signature` over this result recovers to `expected_signer`."""
    try:
        signer = recover_result_signer(
            signature,
            chain_id=chain_id,
            hub=hub,
            request_id=request_id,
            input_digest=input_digest,
            output_digest=output_digest,
        )
    except SignatureError:
        return False
    return signer == to_checksum_address(expected_signer)


__all__ = [
    "RESULT_TYPES",
    "SignatureError",
    "recover_result_signer",
    "result_signable",
    "result_typed_data",
    "sign_result",
    "verify_result_signature",
]
