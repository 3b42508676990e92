"""CIDs of raw blocks: the known `hello` CID, digest round trips, typed errors for bad strings."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiformats import CID, multihash

from node.content.cid import cid_for_bytes, cid_to_digest, digest_to_cid, normalize_cid, parse_cid
from node.content.errors import InvalidCID, UnsupportedCodec

HELLO = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def test_cid_of_hello() -> None:
    assert cid_for_bytes(b"hello") == HELLO
    assert cid_to_digest(HELLO) == hashlib.sha256(b"hello").digest()


@given(st.binary(min_size=32, max_size=32))
def test_digest_cid_round_trip(digest: bytes) -> None:
    cid = digest_to_cid(digest)
    assert cid.startswith("bafkrei")
    assert cid_to_digest(cid) == digest
    assert digest_to_cid(cid_to_digest(cid)) == cid


@given(st.binary(max_size=256))
def test_cid_for_bytes_is_sha256(data: bytes) -> None:
    assert cid_to_digest(cid_for_bytes(data)) == hashlib.sha256(data).digest()


@pytest.mark.parametrize("base", ["base58btc", "base32upper", "base36", "base64", "base16"])
def test_any_multibase_spelling_is_accepted(base: str) -> None:
    spelled = CID.decode(HELLO).encode(base)
    assert spelled != HELLO
    assert normalize_cid(spelled) == HELLO
    assert parse_cid(f"  {spelled}\n").raw_digest == hashlib.sha256(b"hello").digest()


def test_digest_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        digest_to_cid(b"\x00" * 31)


@pytest.mark.parametrize(
    "value", ["", "   ", "hello", "bafkrei", "bafk!!!", "Qm123", "zzzzzz", HELLO[:-3], "bafkré"]
)
def test_malformed_strings_are_invalid_cid(value: str) -> None:
    with pytest.raises(InvalidCID) as info:
        parse_cid(value)
    assert "not a valid CID" in str(info.value)


def test_cidv0_gets_a_clear_unsupported_codec_message() -> None:
    v0 = str(CID("base58btc", 0, "dag-pb", multihash.wrap(hashlib.sha256(b"x").digest(), "sha2-256")))
    assert v0.startswith("Qm")
    with pytest.raises(UnsupportedCodec, match="CIDv0"):
        parse_cid(v0)


@pytest.mark.parametrize(
    ("codec", "hashfun", "match"),
    [("dag-pb", "sha2-256", "dag-pb"), ("dag-cbor", "sha2-256", "dag-cbor"), ("raw", "sha2-512", "sha2-512")],
)
def test_other_codecs_and_hashes_are_unsupported(codec: str, hashfun: str, match: str) -> None:
    digest = hashlib.new(hashfun.replace("sha2-", "sha"), b"x").digest()
    cid = str(CID("base32", 1, codec, multihash.wrap(digest, hashfun)))
    with pytest.raises(UnsupportedCodec, match=match):
        cid_to_digest(cid)


@given(st.binary(min_size=32, max_size=32))
def test_minted_cids_are_multiformats_own_spelling_and_read_back(digest: bytes) -> None:
    """`digest_to_cid` encodes directly (no multiformats on the hot path): the same string, and the
    direct read of it in `cid_to_digest` agrees with the library's parse."""
    reference = str(CID("base32", 1, "raw", multihash.wrap(digest, "sha2-256")))
    assert digest_to_cid(digest) == reference
    assert cid_to_digest(reference) == digest == bytes(parse_cid(reference).raw_digest)
    assert cid_to_digest(reference.upper()) == digest  # other spellings still go through the library
