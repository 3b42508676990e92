"""EIP-712 result signatures: sign, recover, and binding to request, digests, chain and hub."""

from __future__ import annotations

import pytest
from eth_account import Account

from node.chain.signing import SignatureError, recover_result_signer, sign_result, verify_result_signature

KEY = "0x" + "11" * 32
HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ARGS = {
    "chain_id": 31337,
    "hub": HUB,
    "request_id": 7,
    "input_digest": b"\x01" * 32,
    "output_digest": b"\x02" * 32,
}


def test_sign_and_recover() -> None:
    sig = sign_result(KEY, **ARGS)  # type: ignore[arg-type]
    assert len(bytes.fromhex(sig[2:])) == 65
    assert recover_result_signer(sig, **ARGS) == Account.from_key(KEY).address  # type: ignore[arg-type]
    assert verify_result_signature(sig, Account.from_key(KEY).address, **ARGS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field,value",
    [("request_id", 8), ("chain_id", 1), ("output_digest", b"\x03" * 32), ("input_digest", "0x" + "04" * 32),
     ("hub", "0x" + "22" * 20)],
)  # fmt: skip
def test_signature_is_bound_to_every_field(field: str, value: object) -> None:
    sig = sign_result(KEY, **ARGS)  # type: ignore[arg-type]
    other = {**ARGS, field: value}
    assert not verify_result_signature(sig, Account.from_key(KEY).address, **other)  # type: ignore[arg-type]


def test_known_vector_matches_encode_typed_data() -> None:
    from eth_account.messages import encode_typed_data

    from node.chain.signing import result_typed_data

    msg = encode_typed_data(full_message=result_typed_data(**ARGS))  # type: ignore[arg-type]
    assert Account.recover_message(msg, signature=sign_result(KEY, **ARGS)) == Account.from_key(KEY).address  # type: ignore[arg-type]


def test_fast_encoding_is_eth_accounts_encode_typed_data() -> None:
    """`result_signable` hashes the two fixed types itself: byte-equal to the generic encoder."""
    import random

    from eth_account.messages import encode_typed_data

    from node.chain.signing import result_signable, result_typed_data

    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    for _ in range(50):
        args = (
            rng.choice([1, 31337, 8453, 2**40]),
            "0x" + rng.randbytes(20).hex(),
            rng.randrange(2**256),
            rng.randbytes(32),
            rng.randbytes(32),
        )
        expected = encode_typed_data(full_message=result_typed_data(*args))
        assert result_signable(*args) == expected, f"seed {seed}: {args}"


def test_malformed_inputs() -> None:
    with pytest.raises(SignatureError):
        sign_result(KEY, **{**ARGS, "output_digest": b"\x01"})  # type: ignore[arg-type]
    with pytest.raises(SignatureError):
        recover_result_signer("0x1234", **ARGS)  # type: ignore[arg-type]
    assert not verify_result_signature("0x" + "00" * 65, HUB, **ARGS)  # type: ignore[arg-type]
