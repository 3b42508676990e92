"""The gateway's side of private requests (issue 16): seal inputs to seats, open answers and deltas.

A private request's input document carries `salt` (random) and `reply_to` (this gateway's wallet
public key, so answers are sealed to the requester). Its plaintext is never put in the content store:
the gateway keeps it in memory (`PrivateDesk`) until the request ends and, whenever the chain names a
seat (`InferenceAssigned`, `AuditOpened`'s auditor, `CommitteeOpened`'s members), seals it again to
every seat so far (`node.content.envelope.seal`), stores the envelope and serves the newest one at
`GET /envelope/{input_cid}` (`EnvelopeRoutes` in front of the app's router, `envelope_router` for
the rest: ciphertext, no auth, bounded). The raw block route then answers 404 for the input CID,
since the plaintext block does not exist anywhere.

Seats' public keys (`PublicKeys`) are accepted from any source because they authenticate
themselves (`node.chain.pubkeys`: keccak(key)[12:] == address): offered by a miner's MQTT heartbeat
(`public_key`), else recovered from the transaction that activated the miner (the `MinerActivated`
log at `getMiner(address).activeSince`: `registerMiner` or `addStake`, both signed by the miner).

Answers: a miner's MQTT result for a private request carries the output envelope; `open_output`
opens it with the wallet key and the pending registry then checks the plaintext's sha256 against the
digest on chain as for any result. Deltas are AES-GCM under a key derived from the input salt
(`node.miner.private`), opened here before they reach the stream. Nothing here logs document text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from eth_utils.address import is_checksum_address, to_checksum_address
from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter
from starlette.types import ASGIApp, Receive, Scope, Send

from node.chain.events import event_topic
from node.chain.hub import HubClient
from node.chain.pubkeys import WrongPublicKey, public_key_of, recover_public_key_from_tx, verify_public_key
from node.content.canonical import DOCUMENT_VERSION_3, jcs_json
from node.content.cid import digest_of, digest_to_cid, normalize_cid
from node.content.doc_parts import PublicKeyHex, Salt
from node.content.documents import InputDocument, parse_output_document, to_canonical_bytes
from node.content.envelope import (
    ENVELOPE_LIMITS,
    MAX_RECIPIENTS,
    EnvelopeError,
    max_plaintext_bytes,
    open_envelope,
    seal,
)
from node.content.errors import ContentError, InvalidCID
from node.content.salt import private_salt
from node.content.store import ContentStore
from node.gate import MQTT_LIMITS, UntrustedJSON, load_json_object
from node.gateway.errors import InvalidRequest
from node.log import get_logger
from node.miner.private import delta_key, own_address
from node.stream.topics import PREFIX

log = get_logger("inferd.gateway.private")

MAX_PRIVATE_REQUESTS: Final = 4096
"""Private requests whose plaintext input is held at once (oldest dropped; a request ends first)."""
ENVELOPE_WAIT_S: Final = 2.0
"""How long `GET /envelope/{cid}` holds a seat's request for an input requested here but not sealed
yet (below the miners' 5 s HTTP timeout)."""
MAX_OPENED_OUTPUTS: Final = 256
"""Opened answers remembered by envelope hash (`PrivateDesk.open_output`)."""


class PublicKeyUnavailable(Exception):
    """No verified public key for a seat yet (no heartbeat, and its activation tx not readable)."""


class PublicKeys:
    """Verified secp256k1 public keys by (lowercase) address, from heartbeats or the chain."""

    def __init__(self, max_entries: int = 16384) -> None:
        self._keys: OrderedDict[str, bytes] = OrderedDict()
        self.max_entries = max_entries

    def offer(self, address: str, public_key: bytes | str) -> bool:
        """Cache `public_key` for `address` if it is that address's key; False (ignored) otherwise."""
        try:
            key = verify_public_key(public_key, address)
        except (WrongPublicKey, ValueError):
            return False
        self._keys[address.lower()] = key
        self._keys.move_to_end(address.lower())
        while len(self._keys) > self.max_entries:
            self._keys.popitem(last=False)
        return True

    def cached(self, address: str) -> bytes | None:
        return self._keys.get(address.lower())

    async def get(self, address: str, hub: HubClient) -> bytes:
        """The key of `address`: cached, else recovered from its activation transaction."""
        key = self.cached(address)
        if key is not None:
            return key
        try:
            info = await hub.get_miner(address)
            topic = "0x" + bytes(12).hex() + address.lower().removeprefix("0x")
            logs = await hub.w3.eth.get_logs(
                {
                    "address": hub.address,
                    "fromBlock": info.active_since,
                    "toBlock": info.active_since,
                    "topics": [event_topic("MinerActivated"), topic],
                }
            )
            if not logs:
                raise PublicKeyUnavailable(f"no MinerActivated log of {address} at its activeSince block")
            tx = await hub.w3.eth.get_transaction(logs[0]["transactionHash"])
            recovered = recover_public_key_from_tx(dict(tx))
        except PublicKeyUnavailable:
            raise
        except Exception as exc:
            raise PublicKeyUnavailable(f"cannot recover the public key of {address}: {exc}") from exc
        if not self.offer(address, recovered):
            raise PublicKeyUnavailable(f"the key recovered for {address} is not its own")
        return recovered


class EnvelopeBook:
    """The newest envelope of each private input CID, served to seats (bounded, oldest dropped).

    An input the gateway has requested but not sealed yet is `expect`ed: a seat that learned its
    assignment before the gateway sealed to it (the two race from the same block) is answered as
    soon as the envelope exists (`wait`), instead of a 404 that costs it a retry with backoff.
    """

    def __init__(self, max_entries: int = MAX_PRIVATE_REQUESTS) -> None:
        self._envelopes: OrderedDict[str, bytes] = OrderedDict()
        self._expected: OrderedDict[str, asyncio.Event] = OrderedDict()
        self.max_entries = max_entries

    def expect(self, input_cid: str) -> None:
        self._expected.setdefault(input_cid, asyncio.Event())
        while len(self._expected) > self.max_entries:
            self._expected.popitem(last=False)

    def put(self, input_cid: str, envelope: bytes) -> None:
        self._envelopes[input_cid] = envelope
        self._envelopes.move_to_end(input_cid)
        while len(self._envelopes) > self.max_entries:
            self._envelopes.popitem(last=False)
        event = self._expected.get(input_cid)
        if event is not None:
            event.set()

    def get(self, input_cid: str) -> bytes | None:
        return self._envelopes.get(input_cid)

    async def wait(self, input_cid: str, timeout_s: float) -> bytes | None:
        """The envelope; for an expected input not sealed yet, once it is (None after `timeout_s`)."""
        data = self._envelopes.get(input_cid)
        event = self._expected.get(input_cid)
        if data is not None or event is None:
            return data
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)
        return self._envelopes.get(input_cid)

    def drop(self, input_cid: str) -> None:
        self._envelopes.pop(input_cid, None)
        self._expected.pop(input_cid, None)


_TEXT: Final = b"text/plain; charset=utf-8"


async def _read_envelope_body(receive: Receive) -> bytes | bool:
    """A request body of at most `ENVELOPE_LIMITS.max_bytes`; True once it is larger (the rest is
    not read), False if the client left first."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False
        body += message.get("body", b"")
        if len(body) > ENVELOPE_LIMITS.max_bytes:
            return True
        if not message.get("more_body", False):
            return bytes(body)


async def _envelope_answer(book: EnvelopeBook, cid: str) -> tuple[int, bytes, bytes]:
    """`GET /envelope/{cid}`'s status, body and content type (both routes' one answer)."""
    try:
        key = normalize_cid(cid)
    except (InvalidCID, ContentError):
        return 400, b"malformed CID\n", _TEXT
    data = await book.wait(key, ENVELOPE_WAIT_S)
    if data is None:
        return 404, b"no envelope for this input\n", _TEXT
    return 200, data, b"application/json"


class _RouteLabel:
    """What `scope["route"]` needs to carry for the metrics: the route's path template."""

    def __init__(self, path: str) -> None:
        self.path = path


_GET_ROUTE: Final = _RouteLabel("/envelope/{cid}")
_POST_ROUTE: Final = _RouteLabel("/envelope/output")


class EnvelopeRoutes:
    """The seats' envelope routes as a plain ASGI middleware, in front of FastAPI's router.

    Two of the three HTTP requests of a private inference are a seat's `GET /envelope/{cid}` and
    `POST /envelope/output`; through FastAPI's router, exception middleware and per-request
    dependency machinery they cost about as much CPU as their work. Here they are answered with the
    same checks as `envelope_router` (a CID that parses, the body cap read as it streams in, the
    answer kept only if `accept` opens it for a request in flight) and the same statuses; anything
    else (another method, path) goes on to the app, where `envelope_router` answers as before. Sits
    inside the metrics middleware, which labels these requests by `scope["route"]` as the router
    would.
    """

    def __init__(
        self, app: ASGIApp, book: EnvelopeBook, accept: Callable[[bytes], bool] | None = None
    ) -> None:
        self.app = app
        self.book = book
        self.accept = accept

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/envelope/"):
            method = scope["method"]
            if method == "POST" and path == "/envelope/output" and self.accept is not None:
                scope["route"] = _POST_ROUTE
                body = await _read_envelope_body(receive)
                if body is True:
                    await _respond(send, 413, b"envelope too large\n", _TEXT)
                if not isinstance(body, bytes):  # too large, or nobody left to answer
                    return
                await _respond(send, 202 if self.accept(body) else 422, b"", None)
                return
            cid = path[len("/envelope/") :]
            if method == "GET" and cid and "/" not in cid:
                scope["route"] = _GET_ROUTE
                status, data, media = await _envelope_answer(self.book, cid)
                await _respond(send, status, data, media, no_store=status == 200)
                return
        await self.app(scope, receive, send)


async def _respond(
    send: Send, status: int, body: bytes, media: bytes | None, *, no_store: bool = False
) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if media is not None:
        headers.append((b"content-type", media))
    if no_store:
        headers.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def envelope_router(book: EnvelopeBook, desk_for: Callable[[bytes], bool] | None = None) -> APIRouter:
    """`GET /envelope/{input_cid}`: the newest envelope of a private input (404: none here).

    `POST /envelope/output` (with `desk_for`): a seat hands in its sealed answer, the path that
    works without the MQTT broker; `desk_for(envelope)` keeps it only if it opens with one of this
    gateway's wallet keys to an output of a private request in flight here (202), else 422.
    The gateway answers both in `EnvelopeRoutes` before its router; these routes answer the rest
    (a HEAD, another app that includes only this router).
    """
    router = APIRouter()

    if desk_for is not None:
        accept = desk_for

        @router.post("/envelope/output")
        async def post_output(request: Request) -> Response:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > ENVELOPE_LIMITS.max_bytes:
                    return Response("envelope too large\n", status_code=413, media_type="text/plain")
            ok = accept(bytes(body))
            return Response(b"", status_code=202 if ok else 422)

    @router.get("/envelope/{cid}")
    async def get_envelope(cid: str) -> Response:
        status, data, media = await _envelope_answer(book, cid)
        headers = {"Cache-Control": "no-store"} if status == 200 else None
        return Response(data, status_code=status, media_type=media.decode(), headers=headers)

    return router


MAX_PRIVATE_DOCUMENT_BYTES: Final = max_plaintext_bytes(MAX_RECIPIENTS)
"""The largest private input document (774,902 bytes, about 757 KiB): its envelope must fit one raw
block (base64 costs 4/3) when sealed to as many seats as an envelope can name, since an auditor or
committee drawn later makes the gateway seal it again to more recipients."""


_SALT: Final = TypeAdapter(Salt)
_REPLY_TO: Final = TypeAdapter(PublicKeyHex)


def make_private(
    document: InputDocument, reply_to: bytes, document_bytes: bytes | None = None
) -> tuple[InputDocument, bytes]:
    """`document` as a private document (fresh salt, `reply_to` = the requester's public key).

    `document_bytes`, when given, are `document`'s canonical bytes as the request was parsed with
    (`node.gateway.schemas`: validated and encoded once). A version-3 document then is not
    validated and encoded a second time: it passed every check of its version, and only the two
    private fields are new, so they are checked (format, both set, `v` 3) and added to its data,
    which is encoded again as RFC 8785 (with its number check), the same bytes as encoding the
    private model. Otherwise the private document is validated and encoded from the model.

    `InvalidRequest` (400, before anything is paid) for a document whose envelope would not fit a
    block (`MAX_PRIVATE_DOCUMENT_BYTES`): found later, the request would be on chain with an input
    no seat can ever read.
    """
    salt, reply_hex = private_salt(), reply_to.hex()
    update = {"v": DOCUMENT_VERSION_3, "salt": salt, "reply_to": reply_hex}
    private = document.model_copy(update=update)
    if document_bytes is not None and document.v == DOCUMENT_VERSION_3 and document.salt is None:
        _SALT.validate_python(salt)  # the checks the private fields get from the model
        _REPLY_TO.validate_python(reply_hex)
        data = jcs_json(json.loads(document_bytes) | {"salt": salt, "reply_to": reply_hex})
    else:
        private = type(document).model_validate(private.model_dump())  # re-run the cross-field checks
        data = to_canonical_bytes(private)
    if len(data) > MAX_PRIVATE_DOCUMENT_BYTES:
        raise InvalidRequest(
            f"The input document is {len(data)} bytes: a private request's input (the default of this "
            f"gateway) is sealed for its miners and may be at most {MAX_PRIVATE_DOCUMENT_BYTES} bytes "
            "(its envelope must fit one 1 MiB block; base64 costs 4/3). Shorten the prompt or messages, "
            'or send the request with "private": false.',
            param="messages" if getattr(document, "messages", None) is not None else "prompt",
            code="request_too_large",
        )
    return private, data


@dataclass
class PrivateEntry:
    """One private request the gateway is holding the plaintext of."""

    input_cid: str
    plaintext: bytes
    delta_key: bytes
    seats: set[str] = field(default_factory=set)
    sealed_to: frozenset[str] = frozenset()


class PrivateDesk:
    """Private requests in flight: seal inputs to seats, open outputs and deltas (module docstring)."""

    def __init__(
        self,
        store: ContentStore,
        wallet_key: str,
        keys: PublicKeys | None = None,
        book: EnvelopeBook | None = None,
    ) -> None:
        self.store = store
        self._wallet_key = wallet_key
        self.address = own_address(wallet_key)
        self.public_key = public_key_of(wallet_key)
        self.keys = keys or PublicKeys()
        self.book = book or EnvelopeBook()
        self._entries: OrderedDict[tuple[int, int], PrivateEntry] = OrderedDict()
        self._chains: set[int] = set()
        """The chains `_entries` holds requests of (an answer names its request, not its chain)."""
        self._locks: dict[tuple[int, int], asyncio.Lock] = {}
        self.outputs: OrderedDict[str, bytes] = OrderedDict()
        """Plaintext outputs handed in over HTTP (`accept_output`), by CID, for the registry's fetch."""
        self._opened: OrderedDict[bytes, bytes] = OrderedDict()
        """Recently opened answers by their envelope's sha256: a seat sends each one twice (MQTT, then
        `POST /envelope/output`), and the second needs no ECIES again."""
        self._ended: OrderedDict[tuple[int, int], None] = OrderedDict()
        """Private requests forgotten once final or refunded (plaintext dropped): a seat's MQTT result
        can arrive after the chain finalized (a fast chain), and is still sealed; see `ended`."""

    def register(self, key: tuple[int, int], input_cid: str, plaintext: bytes, salt: str) -> None:
        self._chains.add(key[0])
        self._entries[key] = PrivateEntry(input_cid, plaintext, delta_key(salt))
        self.book.expect(input_cid)
        while len(self._entries) > MAX_PRIVATE_REQUESTS:
            old_key, old = self._entries.popitem(last=False)
            self.book.drop(old.input_cid)
            self._locks.pop(old_key, None)

    def get(self, key: tuple[int, int]) -> PrivateEntry | None:
        return self._entries.get(key)

    def forget(self, key: tuple[int, int]) -> None:
        """Drop an ended request's plaintext and envelope; remember (bounded) that it was private."""
        entry = self._entries.pop(key, None)
        self._locks.pop(key, None)
        if entry is not None:
            self.book.drop(entry.input_cid)
            self._ended[key] = None
            while len(self._ended) > MAX_PRIVATE_REQUESTS:
                self._ended.popitem(last=False)

    def ended(self, key: tuple[int, int]) -> bool:
        """Whether `key` was a private request of ours that has ended (its late answers are sealed)."""
        return key in self._ended

    async def add_seats(self, key: tuple[int, int], seats: tuple[str, ...], hub: HubClient) -> bool:
        """Seal the input to every seat so far (plus new `seats`) and publish the envelope.

        False when the request is not private here, nothing new, or a key is missing (logged; the
        seat then sees its input as unavailable until a later event seals to it).
        """
        entry = self._entries.get(key)
        if entry is None:
            return False
        entry.seats.update(s.lower() for s in seats)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            want = frozenset(entry.seats)
            if want <= entry.sealed_to:
                return False
            recipients: dict[str, bytes] = {}
            for seat in sorted(want):
                try:
                    recipients[seat] = await self.keys.get(seat, hub)
                except PublicKeyUnavailable as exc:
                    log.warning("private_seat_key_missing", request_id=key[1], seat=seat, error=str(exc))
            if not recipients:
                return False
            envelope = seal(entry.plaintext, recipients)
            self.book.put(entry.input_cid, envelope)  # served at once; the seat is waiting for it
            entry.sealed_to = frozenset(recipients)
            try:
                await self.store.put(envelope)
            except ContentError as exc:  # served from memory anyway; the store copy is for other gateways
                log.warning("private_envelope_store_failed", request_id=key[1], error=type(exc).__name__)
            log.info("private_input_sealed", request_id=key[1], seats=len(recipients))
            return True

    def accept_output(self, envelope: bytes) -> bool:
        """Keep a seat's sealed answer if it opens here and answers a private request in flight.

        The registry still checks its digest against the chain before anyone sees it.
        """
        plain = self.open_output(envelope)
        if plain is None:
            return False
        try:
            doc = parse_output_document(plain)
        except ContentError:
            return False
        entries = (self._entries.get((chain_id, doc.request_id)) for chain_id in self._chains)
        if not any(e is not None and e.input_cid == doc.input_cid for e in entries):
            return False
        self.outputs[digest_to_cid(digest_of(plain))] = plain
        while len(self.outputs) > MAX_PRIVATE_REQUESTS:
            self.outputs.popitem(last=False)
        return True

    def open_output(self, data: bytes) -> bytes | None:
        """The plaintext output in an envelope sealed to this gateway; None if it does not open."""
        key = digest_of(data)
        plain = self._opened.get(key)
        if plain is not None:
            return plain
        try:
            plain = open_envelope(data, self._wallet_key, self.address)
        except (EnvelopeError, ValueError) as exc:
            log.warning("private_output_unopened", error=type(exc).__name__)
            return None
        self._opened[key] = plain
        while len(self._opened) > MAX_OPENED_OUTPUTS:
            self._opened.popitem(last=False)
        return plain


def heartbeat_filter(chain_id: int, hub: str) -> str:
    """The MQTT filter of every miner's retained heartbeat on one hub (`node.stream.topics`)."""
    return f"{PREFIX}/{int(chain_id)}/{to_checksum_address(hub)}/miner/+"


def offer_heartbeat(keys: PublicKeys, topic: str, payload: bytes) -> bool:
    """Cache the `public_key` of a heartbeat if it is the key of the miner its topic names.

    The topic's miner level is what the broker's ACL checked; the key is checked against it here
    anyway (self-authenticating), so a forged heartbeat can at worst be ignored.
    """
    parts = topic.split("/")
    if len(parts) != 6 or parts[4] != "miner" or not is_checksum_address(parts[5]):
        return False
    try:
        body = load_json_object(payload, MQTT_LIMITS)
    except UntrustedJSON:
        return False
    key = body.get("public_key")
    if not isinstance(key, str) or len(key) > 132:
        return False
    try:
        return keys.offer(parts[5], bytes.fromhex(key.removeprefix("0x")))
    except ValueError:
        return False


__all__ = [
    "MAX_PRIVATE_DOCUMENT_BYTES",
    "EnvelopeBook",
    "EnvelopeRoutes",
    "PrivateDesk",
    "PrivateEntry",
    "PublicKeyUnavailable",
    "PublicKeys",
    "envelope_router",
    "heartbeat_filter",
    "make_private",
    "offer_heartbeat",
]
