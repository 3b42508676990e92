"""Public keys are accepted from anywhere only when they hash to the address they claim."""

from __future__ import annotations

import coincurve
import pytest
from eth_account import Account

from node.chain.pubkeys import (
    WrongPublicKey,
    address_of_public_key,
    normalize_public_key,
    public_key_of,
    verify_public_key,
)
from node.content.salt import InvalidSalt, is_salt, output_salt, private_salt

KEYS = [
    "0x" + "11" * 32,
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",  # anvil's first key
]


@pytest.mark.parametrize("key", KEYS)
def test_public_key_hashes_to_the_account_address(key: str) -> None:
    public = public_key_of(key)
    assert len(public) == 64
    assert public_key_of(bytes.fromhex(key[2:])) == public
    address = Account.from_key(key).address
    assert address_of_public_key(public) == address
    assert verify_public_key(public, address) == public
    assert verify_public_key(public, address.lower()) == public
    assert verify_public_key("0x" + public.hex(), address) == public


def test_compressed_and_prefixed_forms_normalize_to_the_same_key() -> None:
    secret = bytes.fromhex(KEYS[1][2:])
    point = coincurve.PrivateKey(secret).public_key
    public = public_key_of(secret)
    assert normalize_public_key(point.format(compressed=True)) == public
    assert normalize_public_key(point.format(compressed=False)) == public
    assert verify_public_key(point.format(compressed=True), Account.from_key(secret).address) == public


def test_another_miners_key_is_refused() -> None:
    mine, theirs = Account.from_key(KEYS[0]), Account.from_key(KEYS[1])
    with pytest.raises(WrongPublicKey, match=f"belongs to {theirs.address}, not {mine.address}"):
        verify_public_key(public_key_of(KEYS[1]), mine.address)


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x04" * 10, bytes(64), b"\x02" + bytes(32), b"\x05" + bytes(64), "zz" * 64, bytes(66)],
)
def test_bytes_that_are_no_public_key_are_refused(bad: bytes | str) -> None:
    with pytest.raises(WrongPublicKey):
        verify_public_key(bad, Account.from_key(KEYS[0]).address)


def test_a_bad_address_is_refused() -> None:
    with pytest.raises(WrongPublicKey, match="not an Ethereum address"):
        verify_public_key(public_key_of(KEYS[0]), "0x1234")


@pytest.mark.parametrize("bad", [b"", bytes(32), bytes.fromhex("ff" * 32)])
def test_invalid_private_keys_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        public_key_of(bad)


def test_salts() -> None:
    a, b = private_salt(), private_salt()
    assert is_salt(a) and is_salt(b) and a != b
    # Same input salt -> same output salt on every miner; a known value pins the construction.
    assert output_salt(a) == output_salt(a)
    assert output_salt(a) != output_salt(b)
    assert is_salt(output_salt(a))
    # HMAC-SHA256(key=32 zero bytes, msg=b"inferd-output-salt"): the construction other languages rebuild.
    assert output_salt("00" * 32) == "523816418265cbdc2c82bcb8e919fe2087de06f29a340e53c1d84984109fb790"
    for bad in ["", "0x" + "00" * 32, "AA" * 32, "00" * 31, "00" * 33, "g" * 64]:
        assert not is_salt(bad)
        with pytest.raises(InvalidSalt):
            output_salt(bad)
