"""A miner's side of private requests (issue 16): open the sealed input, seal the answer and deltas.

A private input document (one with `salt` and `reply_to`, `node.content.documents`) is never stored
in plaintext: the requester's gateway seals it to the request's seats (`node.content.envelope`) once
`InferenceAssigned` names them, and serves the newest envelope for an input CID at
`GET {gateway}/envelope/{input_cid}` (ciphertext, no auth). So the pipeline's fetch, after the raw
block was not found, asks an `EnvelopeSource` and `open_private_input` decides what it means:

* not sealed to us (yet): the gateway has not added this seat (an auditor drawn later): the input is
  *unavailable* for now, retried like a missing block;
* an envelope that does not open (changed after sealing, malformed), or whose plaintext's sha256 is
  not the input digest on chain, or a plaintext that is not a private document: the deterministic
  error output `input_tampered` (fixed text, no salt: there is no trustworthy salt to derive), which
  every honest seat writes byte for byte;
* otherwise the parsed document, whose digest the seat signs as for any input.

The answer (`seal_output`) carries `output_salt(input salt)`; its plaintext bytes are what the seat
signs and commits (so quorum and audits compare digests as before), and what is *stored and sent
over MQTT* is their envelope to `reply_to` (the requester's key, which the input digest covers).

**Deltas.** Each streamed delta of a private request is encrypted with AES-256-GCM under a key
derived from the input's salt (HKDF-SHA256, info `inferd-delta-key`), a random 12-byte nonce and
associated data binding it to (request id, miner, seq). Why not one envelope per delta or a key sent
in an envelope: the salt is already a secret shared by exactly those who may read the input (the
seats and the requester), so no extra message, ECIES operation or ordering problem exists, and a
delta costs 28 bytes plus base64 over its plaintext. The seats can read each other's deltas, which
tells them nothing: they compute the same answer. A seat publishes none when the gateway serves the
envelope with `DELTAS_HEADER: off` (its client does not stream: nobody would read them).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
from aiohttp.helpers import basicauth_from_netrc, get_env_proxy_for_url, netrc_from_env
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from yarl import URL

from node.chain.pubkeys import address_of_public_key, public_key_of
from node.content.cid import digest_of, normalize_cid
from node.content.documents import (
    InputDocument,
    OutputDocument,
    parse_input_document,
    to_canonical_bytes,
)
from node.content.envelope import DELTAS_HEADER, EnvelopeError, NotARecipient, open_envelope, seal
from node.content.errors import ContentError, DocumentError
from node.content.http import RetryPolicy, session_request
from node.content.salt import output_salt
from node.log import get_logger

DeltaSink = Callable[[int, int, dict[str, Any]], None]
"""(seq, choice, delta), as `node.miner.pipeline.DeltaSink` (not imported: the pipeline imports us)."""

log = get_logger("inferd.miner.private")

INPUT_TAMPERED: Final = "input_tampered"
NO_ENVELOPE_SOURCE: Final = (
    "no miner.envelope_urls (nor content.gateway_urls): if this is a private request (the gateway "
    "default), its input exists only sealed at GET {gateway}/envelope/{input_cid}; list the "
    "gateways you serve in miner.envelope_urls"
)
"""Why a miner without an envelope source cannot read a private input (start-up log, fetch reason)."""
DELTA_KEY_INFO: Final = b"inferd-delta-key"
DELTA_NONCE_BYTES: Final = 12


@dataclass(frozen=True)
class Envelope:
    """A private input's envelope as a gateway served it; `live`: whether it relays live deltas."""

    body: bytes
    live: bool = True


class EnvelopeSource(Protocol):
    """Where a seat finds the newest envelope of a private input (None: none published yet)."""

    async def envelope(self, input_cid: str) -> Envelope | None: ...


class HttpEnvelopeSource:
    """`GET {url}/envelope/{input_cid}` on each of `urls` (requesters' gateways) until one has it.

    One aiohttp session for every fetch and delivery (`node.content.http.session_request`: an
    exchange per inference each way, where httpx's pool cost about ten times the CPU), at most
    `max_connections` connections, kept alive between jobs; opened on first use (in the loop).
    Proxy settings and `.netrc` credentials come from the environment, as httpx's default, looked
    up once per gateway URL (`env_options`) rather than by aiohttp's `trust_env` on every request."""

    def __init__(
        self, urls: list[str], *, timeout_s: float = 5.0, retries: int = 1, max_connections: int = 64
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._policy = RetryPolicy(retries=retries)
        self._env = {url: env_options(url) for url in self.urls}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections), timeout=self._timeout
            )
        return self._session

    async def envelope(self, input_cid: str) -> Envelope | None:
        cid = normalize_cid(input_cid)
        for url in self.urls:
            try:
                reply = await session_request(
                    self._client(), "envelope", "GET", f"{url}/envelope/{cid}", self._policy, **self._env[url]
                )
            except ContentError as exc:
                log.info("envelope_source_down", url=url, error=type(exc).__name__)
                continue
            if reply.status == 200:
                return Envelope(reply.body, live=reply.headers.get(DELTAS_HEADER, "").lower() != "off")
        return None

    async def deliver(self, envelope: bytes) -> None:
        """Hand a sealed answer to the gateways (`POST /envelope/output`): the path without MQTT.

        Best effort: a gateway that is down or not the requester's answers an error, ignored.
        """
        for url in self.urls:
            try:
                async with self._client().post(
                    f"{url}/envelope/output",
                    data=envelope,
                    headers={"Content-Type": "application/json"},
                    **self._env[url],
                ) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("envelope_deliver_failed", url=url, error=type(exc).__name__)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def env_options(url: str) -> dict[str, Any]:
    """What aiohttp's `trust_env=True` looks up for a request to `url` (its scheme and host): a proxy
    from the environment (`HTTP_PROXY`, `NO_PROXY`, ...) and, for a URL without credentials, the
    host's `.netrc` login; as `session.request` keywords. Looked up once: `trust_env` repeats both
    on every request, in two worker-thread hops with a read of `~/.netrc` (0.15-0.2 ms of CPU per
    request, two requests per private job)."""
    target = URL(url)
    options: dict[str, Any] = {}
    with contextlib.suppress(LookupError):
        options["proxy"], options["proxy_auth"] = get_env_proxy_for_url(target)
    if target.user is None and target.host is not None:
        with contextlib.suppress(LookupError):
            options["auth"] = basicauth_from_netrc(netrc_from_env(), target.host)
    return options


class InputTampered(ContentError):
    """An envelope that does not open to the input on chain: answered with `input_tampered`.

    The output document's text is fixed (`node.content.documents`), so every seat writes the same.
    """


def is_private(doc: InputDocument) -> bool:
    """Whether `doc` is a private document (its answer is sealed to `reply_to`)."""
    return doc.salt is not None and doc.reply_to is not None


@functools.lru_cache(maxsize=16)
def own_address(private_key: str) -> str:
    """The checksum-free (lowercase) address of a miner's key, as envelopes name recipients;
    remembered per key (a curve multiplication and a keccak, asked for on every private job)."""
    return address_of_public_key(public_key_of(private_key)).lower()


def open_private_input(
    envelope: bytes, *, private_key: str, input_digest: bytes
) -> InputDocument | ContentError | None:
    """The private input sealed in `envelope`, the error to answer with, or None: not sealed to us.

    None (the gateway has not added this seat yet, e.g. an auditor drawn later) leaves the input
    unavailable for now; the caller retries it like a missing block.
    """
    try:
        plaintext = open_envelope(envelope, private_key, own_address(private_key))
    except NotARecipient:
        return None
    except EnvelopeError:
        return InputTampered("the envelope does not open")
    if digest_of(plaintext) != input_digest:
        return InputTampered("the envelope's plaintext is not the input on chain")
    try:
        doc = parse_input_document(plaintext)
    except ContentError as exc:  # the digest matches: the requester sealed an invalid document
        return exc
    if not is_private(doc):  # a public document has no business in an envelope
        return InputTampered("the envelope holds a document without salt and reply_to")
    return doc


async def fetch_private(
    source: EnvelopeSource, input_cid: str, input_digest: bytes, private_key: str
) -> tuple[InputDocument | ContentError, bool] | None:
    """The newest envelope of `input_cid` from `source`, opened (`open_private_input`), and whether
    its gateway relays live deltas; None: none for us."""
    envelope = await source.envelope(input_cid)
    if envelope is None:
        return None
    opened = open_private_input(envelope.body, private_key=private_key, input_digest=input_digest)
    if opened is None:
        return None
    if isinstance(opened, InputTampered):
        log.warning("private_input_tampered", input_cid=input_cid, reason=str(opened))
    return opened, envelope.live


async def deliver_output(source: EnvelopeSource, envelope: bytes) -> None:
    """Hand a sealed answer to `source`'s gateways if it can (`HttpEnvelopeSource.deliver`)."""
    deliver = getattr(source, "deliver", None)
    if deliver is not None:
        await deliver(envelope)


def with_output_salt(out: OutputDocument, doc: InputDocument) -> OutputDocument:
    """`out` carrying `output_salt(doc.salt)` when `doc` is private (v3 outputs only)."""
    if doc.salt is None or out.v != 3:
        return out
    return out.model_copy(update={"salt": output_salt(doc.salt)})


def seal_output(plaintext: bytes, doc: InputDocument) -> bytes:
    """The envelope of an output document's bytes to the requester (`doc.reply_to`)."""
    assert doc.reply_to is not None
    requester = address_of_public_key(doc.reply_to)
    return seal(plaintext, {requester: doc.reply_to})


def encode_private(
    out: OutputDocument, doc: InputDocument, too_large: Callable[[Exception, int], OutputDocument]
) -> tuple[OutputDocument, bytes, bytes]:
    """(salted output, its plaintext bytes = what is signed, its envelope = what is stored and sent).

    An output over 1 MiB, or whose envelope is over the block limit (base64 costs 4/3: both depend
    only on the output, so every seat agrees), becomes `too_large(exc, v)`'s error document.
    """
    try:
        salted = with_output_salt(out, doc)
        data = to_canonical_bytes(salted)
        return salted, data, seal_output(data, doc)
    except ContentError as exc:
        salted = with_output_salt(too_large(exc, out.v), doc)
        data = to_canonical_bytes(salted)
        return salted, data, seal_output(data, doc)


def sealed_deltas(sink: DeltaSink, doc: InputDocument, request_id: int, private_key: str) -> DeltaSink:
    """A delta sink that encrypts each delta of a private request (module docstring: Deltas)."""
    assert doc.salt is not None
    key = delta_key(doc.salt)
    miner = own_address(private_key)

    def send(seq: int, choice: int, delta: dict[str, Any]) -> None:
        sink(seq, choice, seal_delta(key, request_id, miner, seq, delta))

    return send


# --------------------------------------------------------------------------- deltas


def delta_key(salt: str) -> bytes:
    """The AES-256 key of a private request's deltas, derived from its input salt."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DELTA_KEY_INFO).derive(
        bytes.fromhex(salt)
    )


def _delta_aad(request_id: int, miner: str, seq: int) -> bytes:
    return f"inferd-delta\x00{request_id}\x00{miner.lower()}\x00{seq}".encode()


def seal_delta(key: bytes, request_id: int, miner: str, seq: int, delta: dict[str, Any]) -> dict[str, str]:
    """`{"sealed": b64(nonce || AES-GCM(delta JSON))}`: what a private request's delta carries."""
    nonce = os.urandom(DELTA_NONCE_BYTES)
    body = json.dumps(delta, separators=(",", ":")).encode()
    sealed = AESGCM(key).encrypt(nonce, body, _delta_aad(request_id, miner, seq))
    return {"sealed": base64.b64encode(nonce + sealed).decode("ascii")}


def open_delta(key: bytes, request_id: int, miner: str, seq: int, delta: dict[str, Any]) -> dict[str, Any]:
    """The plaintext delta of a sealed one; `DocumentError` if it does not open (dropped by callers)."""
    sealed = delta.get("sealed")
    if not isinstance(sealed, str) or len(delta) != 1:
        raise DocumentError("delta", "a private request's delta must be {'sealed': base64}")
    try:
        raw = base64.b64decode(sealed, validate=True)
        body = AESGCM(key).decrypt(
            raw[:DELTA_NONCE_BYTES], raw[DELTA_NONCE_BYTES:], _delta_aad(request_id, miner, seq)
        )
        value = json.loads(body)
    except (binascii.Error, ValueError, InvalidTag):
        raise DocumentError("delta", "a sealed delta does not open with this request's key") from None
    if not isinstance(value, dict):
        raise DocumentError("delta", "a sealed delta must hold a JSON object")
    return value


__all__ = [
    "INPUT_TAMPERED",
    "NO_ENVELOPE_SOURCE",
    "Envelope",
    "EnvelopeSource",
    "HttpEnvelopeSource",
    "InputTampered",
    "deliver_output",
    "delta_key",
    "encode_private",
    "fetch_private",
    "is_private",
    "open_delta",
    "open_private_input",
    "own_address",
    "seal_delta",
    "seal_output",
    "sealed_deltas",
    "with_output_salt",
]
