"""CIDs of raw blocks: `CIDv1(raw 0x55, sha2-256)`, and the bytes32 digest the chain stores.

The chain keeps only `sha256(document)`; the CID is rebuilt from it with no lookup, and any CID a
user pastes (v0 `Qm...`, v1 in any multibase) is parsed with the `multiformats` library. Only
raw sha2-256 blocks are served: other codecs and hashes get `UnsupportedCodec`, garbage gets
`InvalidCID`.
"""

from __future__ import annotations

import functools
import hashlib

from multiformats import CID, multihash

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


@functools.lru_cache(maxsize=8192)
def _cid_of_digest(digest: bytes) -> str:
    # cached: multiformats validates its arguments at run time (~0.2 ms a CID), and a request's
    # CIDs are rebuilt at every step of its way (issue 14: ~8% of a loaded gateway's CPU)
    return str(CID("base32", 1, "raw", multihash.wrap(digest, SHA2_256)))


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
