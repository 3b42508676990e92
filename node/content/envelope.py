"""Envelopes: a document only its recipients can read (private prompts, issue 16).

A private request's input document is readable by its assigned miners (and a drawn auditor or
committee member) and the requester; its output document by the requester. No TEEs: the recipients'
own secp256k1 chain keys, whose public halves authenticate themselves against their addresses
(`node.chain.pubkeys`). No home-made crypto: AES-256-GCM from `cryptography` and ECIES from
`eciespy`, composed the standard hybrid way:

* a random 32-byte content key encrypts the plaintext once with AES-256-GCM (12-byte random nonce);
* the content key is encrypted to each recipient with ECIES over secp256k1 (eciespy's defaults,
  pinned in `_ECIES` so a change of the library's global config cannot change the format: ephemeral
  key uncompressed, HKDF-SHA256, AES-256-GCM with a 16-byte nonce; the same as the npm `eciesjs`
  defaults, so a browser can open an envelope too): 65 + 16 + 16 + 32 = 129 bytes per recipient;
* the AES-GCM associated data is the RFC 8785 encoding of the header (`v`, `type`, `alg`,
  `recipients` with their wrapped keys), so no recipient entry can be added, dropped, reordered or
  swapped without the tag failing.

The envelope is a canonical JSON document (RFC 8785, `node.content.canonical.jcs_json`)::

    {"alg":"ecies-secp256k1+aes-256-gcm","ciphertext":"<b64>","nonce":"<b64>",
     "recipients":[{"address":"0x<40 lowercase hex>","key":"<b64>"}, ...],"type":"envelope","v":1}

Recipients are sorted by address, one entry each, at most `MAX_RECIPIENTS`; base64 is standard,
padded and canonical. Parsing goes through the bounded JSON gate (`ENVELOPE_LIMITS`), and every
refusal is a typed error: `MalformedEnvelope` (not an envelope of this format), `NotARecipient`
(the opener's address has no entry), `TamperedEnvelope` (a wrapped key that does not decrypt, a
content key of the wrong size, a GCM tag failure: ciphertext, nonce or header changed).

What an envelope does *not* give: the sender's authenticity. Any recipient knows the content key and
can write a different envelope for the others, so the opener checks the plaintext against the
digest on chain (a salted document, `node.content.salt`), which is what the miners sign.

**Size.** Base64 costs 4/3, so the envelope of a 1 MiB document is about 1.33 MiB and does not fit
in one 1 MiB raw block. `seal` refuses an envelope over `max_bytes` (default `MAX_DOCUMENT_BYTES`)
with `EnvelopeTooLarge`, naming the largest plaintext that fits (`max_plaintext_bytes`: 786,146
bytes, about 767 KiB, for one recipient; 785,789 for three). The gate's limits are sized so that the
envelope of a full 1 MiB document with `MAX_RECIPIENTS` recipients still parses, should the block
limit for envelopes be raised.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import ecies
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from ecies.config import Config as EciesConfig
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from node import gate
from node.chain.pubkeys import address_of_public_key, public_key_of, verify_public_key
from node.content.canonical import jcs_json
from node.content.errors import MAX_DOCUMENT_BYTES, ContentError, DocumentTooLarge

ENVELOPE_VERSION: Final = 1
ALG: Final = "ecies-secp256k1+aes-256-gcm"
MAX_RECIPIENTS: Final = 64
"""Assigned miners, an auditor, committee members and the requester, with room to spare."""
CONTENT_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
_ECIES: Final = EciesConfig(
    elliptic_curve="secp256k1",
    is_ephemeral_key_compressed=False,
    is_hkdf_key_compressed=False,
    symmetric_algorithm="aes-256-gcm",
    symmetric_nonce_length=16,
)
DELTAS_HEADER: Final = "x-inferd-deltas"
"""On `GET /envelope/{cid}`'s answer: `off` when the requester's gateway relays no live deltas for
this input (its client did not ask to stream), so the seat need not publish them. A hint about
traffic only: the answer, its digest and signature are the same either way."""
WRAPPED_KEY_BYTES: Final = 65 + 16 + TAG_BYTES + CONTENT_KEY_BYTES
"""One recipient's ECIES-encrypted content key: ephemeral key, nonce, tag, key."""


def _b64_len(n: int) -> int:
    return 4 * math.ceil(n / 3)


_MAX_CIPHERTEXT_B64 = _b64_len(MAX_DOCUMENT_BYTES + TAG_BYTES)
ENVELOPE_LIMITS: Final = gate.JsonLimits(
    max_bytes=_MAX_CIPHERTEXT_B64 + MAX_RECIPIENTS * 256 + 1024,
    max_depth=4,
    max_string_bytes=_MAX_CIPHERTEXT_B64,
    max_items=16 + 3 * MAX_RECIPIENTS,
)
"""Envelopes: the base64 of a whole 1 MiB document plus `MAX_RECIPIENTS` entries, flat JSON."""

_ADDRESS = re.compile(r"0x[0-9a-f]{40}")


class EnvelopeError(ContentError):
    """Base class of every envelope refusal."""


class MalformedEnvelope(EnvelopeError):
    """Bytes that are not an envelope of this format (bad JSON, fields, sizes, base64, order)."""


class TamperedEnvelope(EnvelopeError):
    """An envelope whose keys or ciphertext do not decrypt: changed after sealing, or not ours."""


class NotARecipient(EnvelopeError):
    """The opener's address has no entry in the envelope."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(
            f"{address} is not a recipient of this envelope; only the assigned miners, a drawn "
            "auditor or committee member and the requester can read a private request"
        )


class EnvelopeTooLarge(DocumentTooLarge, EnvelopeError):
    """A sealed envelope over the block limit; `max_plaintext` says how large a document fits."""

    def __init__(self, size: int, limit: int, max_plaintext: int) -> None:
        super().__init__(size, limit)
        self.max_plaintext = max_plaintext
        self.args = (
            f"the sealed envelope is {size} bytes, over the {limit}-byte limit of one raw IPFS block "
            f"(base64 costs 4/3): a private document may be at most {max_plaintext} bytes for this "
            "many recipients; shorten the prompt or messages",
        )

    def __str__(self) -> str:
        return str(self.args[0])


class _Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    address: StrictStr
    key: StrictStr


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]
    type: Literal["envelope"]
    alg: Literal["ecies-secp256k1+aes-256-gcm"]
    recipients: list[_Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    nonce: StrictStr
    ciphertext: StrictStr


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str, size: int | None = None, minimum: int = 0) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEnvelope(f"{what} is not standard padded base64") from None
    if _b64(raw) != text:
        raise MalformedEnvelope(f"{what} is not canonical base64")
    if size is not None and len(raw) != size:
        raise MalformedEnvelope(f"{what} must be {size} bytes, got {len(raw)}")
    if len(raw) < minimum:
        raise MalformedEnvelope(f"{what} must be at least {minimum} bytes, got {len(raw)}")
    return raw


def _header(recipients: list[dict[str, str]]) -> dict[str, Any]:
    return {"v": ENVELOPE_VERSION, "type": "envelope", "alg": ALG, "recipients": recipients}


def _associated_data(header: dict[str, Any]) -> bytes:
    return b"inferd-envelope\x00" + jcs_json(header)


@functools.lru_cache(maxsize=4096)
def _verified_key(public: bytes | str, address: str) -> bytes:
    """`verify_public_key`, remembered: a gateway seals to the same few seats' keys on every
    request, and the check (a curve point parse, keccak and two checksums) gave the same answer each
    time. Keyed by the exact key and address given; a refusal raises and is not remembered."""
    return verify_public_key(public, address)


@functools.lru_cache(maxsize=16)
def _own_address(secret: bytes) -> str:
    """The address of a private key (a point multiplication and keccak), remembered per key: the
    opener is the same wallet on every answer."""
    return address_of_public_key(public_key_of(secret))


def max_plaintext_bytes(recipients: int, limit: int = MAX_DOCUMENT_BYTES) -> int:
    """The largest plaintext whose envelope for `recipients` recipients is at most `limit` bytes."""
    entries = [{"address": "0x" + "0" * 40, "key": _b64(bytes(WRAPPED_KEY_BYTES))}] * recipients
    fixed = len(jcs_json(_header(entries) | {"nonce": _b64(bytes(NONCE_BYTES)), "ciphertext": ""}))
    return max(0, (limit - fixed) // 4 * 3 - TAG_BYTES)


def seal(
    plaintext: bytes, recipients: Mapping[str, bytes | str], *, max_bytes: int = MAX_DOCUMENT_BYTES
) -> bytes:
    """The canonical envelope of `plaintext` for `recipients` (address -> public key, any source).

    Every public key is checked against its address first (remembered per key and address;
    `WrongPublicKey` from
    `node.chain.pubkeys`); ValueError for no recipients, more than `MAX_RECIPIENTS`, an address
    given twice or a plaintext over 1 MiB; `EnvelopeTooLarge` for an envelope over `max_bytes`.
    """
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise ValueError(f"an envelope has 1 to {MAX_RECIPIENTS} recipients, got {len(recipients)}")
    if len(plaintext) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge(len(plaintext))
    keys: dict[str, bytes] = {}
    for address, public in recipients.items():
        key = _verified_key(public if isinstance(public, str) else bytes(public), address)
        normalized = address.lower()
        if normalized in keys:
            raise ValueError(f"recipient {address} is given twice")
        keys[normalized] = key
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    entries = [
        {"address": address, "key": _b64(ecies.encrypt(b"\x04" + keys[address], content_key, _ECIES))}
        for address in sorted(keys)
    ]
    header = _header(entries)
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, _associated_data(header))
    data = jcs_json(header | {"nonce": _b64(nonce), "ciphertext": _b64(ciphertext)})
    if len(data) > max_bytes:
        raise EnvelopeTooLarge(len(data), max_bytes, max_plaintext_bytes(len(keys), max_bytes))
    return data


def parse_envelope(raw: bytes) -> dict[str, Any]:
    """The envelope's JSON data after every format check; `MalformedEnvelope` says what is wrong."""
    try:
        data = gate.load_json_object(raw, ENVELOPE_LIMITS)
    except gate.UntrustedJSON as exc:
        raise MalformedEnvelope(f"not an envelope: {exc}") from None
    if type(data.get("v")) is not int:  # `true` == 1 in Python; only the integer 1 is version 1
        raise MalformedEnvelope("v: must be the integer 1")
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise MalformedEnvelope(f"not an envelope: {where}: {first['msg']}") from None
    previous = ""
    for entry in envelope.recipients:
        if not _ADDRESS.fullmatch(entry.address):
            raise MalformedEnvelope("a recipient address must be 0x and 40 lowercase hex digits")
        if entry.address <= previous:
            raise MalformedEnvelope("recipients must be sorted by address, each once")
        previous = entry.address
        _unb64(entry.key, f"the key of {entry.address}", size=WRAPPED_KEY_BYTES)
    _unb64(envelope.nonce, "nonce", size=NONCE_BYTES)
    _unb64(envelope.ciphertext, "ciphertext", minimum=TAG_BYTES)
    return envelope.model_dump(mode="json")


def recipients_of(raw: bytes) -> list[str]:
    """The (lowercase) addresses an envelope is sealed to; `MalformedEnvelope` if it is none."""
    return [entry["address"] for entry in parse_envelope(raw)["recipients"]]


def open_envelope(raw: bytes, private_key: bytes | str, address: str) -> bytes:
    """The plaintext of an envelope, opened with the recipient's private key.

    ValueError if `private_key` is not `address`'s key; `MalformedEnvelope`, `NotARecipient` or
    `TamperedEnvelope` as the module docstring says. The caller then checks the plaintext's digest.
    """
    secret = bytes.fromhex(private_key.removeprefix("0x")) if isinstance(private_key, str) else private_key
    own = _own_address(secret)
    if own.lower() != address.lower():
        raise ValueError(f"the private key belongs to {own}, not {address}")
    envelope = parse_envelope(raw)
    entry = next((e for e in envelope["recipients"] if e["address"] == own.lower()), None)
    if entry is None:
        raise NotARecipient(own)
    try:
        content_key = ecies.decrypt(secret, base64.b64decode(entry["key"]), _ECIES)
    except (ValueError, TypeError):
        raise TamperedEnvelope(
            f"the content key for {own} does not decrypt: the envelope was changed"
        ) from None
    if len(content_key) != CONTENT_KEY_BYTES:
        raise TamperedEnvelope(f"the content key for {own} is {len(content_key)} bytes, not 32")
    header = _header(envelope["recipients"])
    try:
        return AESGCM(content_key).decrypt(
            base64.b64decode(envelope["nonce"]),
            base64.b64decode(envelope["ciphertext"]),
            _associated_data(header),
        )
    except InvalidTag:
        raise TamperedEnvelope(
            "the envelope's ciphertext, nonce or header was changed after sealing"
        ) from None


__all__ = [
    "ALG",
    "DELTAS_HEADER",
    "ENVELOPE_LIMITS",
    "ENVELOPE_VERSION",
    "MAX_RECIPIENTS",
    "WRAPPED_KEY_BYTES",
    "EnvelopeError",
    "EnvelopeTooLarge",
    "MalformedEnvelope",
    "NotARecipient",
    "TamperedEnvelope",
    "max_plaintext_bytes",
    "open_envelope",
    "parse_envelope",
    "recipients_of",
    "seal",
]
