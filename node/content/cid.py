"""CIDs of raw blocks: `CIDv1(raw 0x55, sha2-256)`, and the bytes32 digest the chain stores.

The chain keeps only `sha256(document)`; the CID is rebuilt from it with no lookup, and any CID a
user pastes (v0 `Qm...`, v1 in any multibase) is parsed with the `multiformats` library. Only
raw sha2-256 blocks are served: other codecs and hashes get `UnsupportedCodec`, garbage gets
`InvalidCID`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib

from multiformats import CID

from node.content.errors import InvalidCID, UnsupportedCodec

RAW_CODEC = 0x55
SHA2_256 = "sha2-256"
DIGEST_BYTES = 32


def digest_of(data: bytes) -> bytes:
    """The sha2-256 digest of a block: what goes on chain as bytes32."""
    return hashlib.sha256(data).digest()


def digest_to_cid(digest: bytes) -> str:
    """The canonical CID string (base32 `bafkrei...`) of a raw block with this sha2-256 digest."""
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"a sha2-256 digest is {DIGEST_BYTES} bytes, got {len(digest)}")
    return _cid_of_digest(bytes(digest))


_RAW_SHA256 = bytes([0x01, RAW_CODEC, 0x12, DIGEST_BYTES])
"""CIDv1, raw, sha2-256, 32 bytes: the varint prefix of every CID we mint (one byte each)."""


@functools.lru_cache(maxsize=8192)
def _cid_of_digest(digest: bytes) -> str:
    # The multibase `b` + unpadded lowercase RFC 4648 base32 of prefix + digest: the same string
    # multiformats' CID("base32", 1, "raw", ...) gives (a unit test compares them), without its
    # run-time argument validation, which cost ~0.2 ms a CID (issue 14: ~9% of a loaded gateway)
    return "b" + base64.b32encode(_RAW_SHA256 + digest).decode("ascii").lower().rstrip("=")


def cid_for_bytes(data: bytes) -> str:
    """The canonical CID string of `data` stored as one raw block."""
    return digest_to_cid(digest_of(data))


def parse_cid(value: str) -> CID:
    """Parse any CID string; InvalidCID for garbage, UnsupportedCodec for a non-raw/sha2-256 CID."""
    text = value.strip()
    if not text:
        raise InvalidCID(value, "empty string")
    try:
        cid = CID.decode(text)
    except Exception as exc:  # multiformats raises ValueError, KeyError and more for garbage
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        if text.startswith("Qm"):
            reason = f"it starts like a CIDv0 (Qm...) but is not a valid base58btc multihash ({reason})"
        raise InvalidCID(value, reason) from exc
    if cid.codec.code != RAW_CODEC:
        hint = (
            "it is a CIDv0 (dag-pb, a UnixFS file from `ipfs add`); "
            "store documents with `ipfs block put --cid-codec=raw` or `inferd content put`"
            if cid.version == 0
            else f"codec is {cid.codec.name} (0x{cid.codec.code:x}), not raw (0x55)"
        )
        raise UnsupportedCodec(text, hint)
    if cid.hashfun.name != SHA2_256 or len(cid.raw_digest) != DIGEST_BYTES:
        raise UnsupportedCodec(text, f"hash is {cid.hashfun.name}, not sha2-256")
    return cid


def cid_to_digest(value: str) -> bytes:
    """The 32-byte sha2-256 digest inside a raw-block CID (any accepted spelling)."""
    text = value.strip()
    if len(text) == 59 and text.startswith("bafkrei"):  # our canonical spelling: decoded directly
        with contextlib.suppress(binascii.Error, ValueError):
            raw = base64.b32decode(text[1:].upper() + "======")
            if raw[:4] == _RAW_SHA256 and _cid_of_digest(raw[4:]) == text:
                return raw[4:]
    return bytes(parse_cid(value).raw_digest)


@functools.lru_cache(maxsize=8192)
def normalize_cid(value: str) -> str:
    """The canonical base32 CIDv1 spelling of any accepted CID string (one key per block; cached,
    errors are not)."""
    return digest_to_cid(cid_to_digest(value))


__all__ = [
    "DIGEST_BYTES",
    "RAW_CODEC",
    "cid_for_bytes",
    "cid_to_digest",
    "digest_of",
    "digest_to_cid",
    "normalize_cid",
    "parse_cid",
]
