"""The gateway's side of private requests (issue 16): seal inputs to seats, open answers and deltas.

A private request's input document carries `salt` (random) and `reply_to` (this gateway's wallet
public key, so answers are sealed to the requester). Its plaintext is never put in the content store:
the gateway keeps it in memory (`PrivateDesk`) until the request ends and, whenever the chain names a
seat (`InferenceAssigned`, `AuditOpened`'s auditor, `CommitteeOpened`'s members), seals it again to
every seat so far (`node.content.envelope.seal`) with their verified public keys
(`node.gateway.seat_keys`) and stores the envelope, which the seats fetch at `GET /envelope/{cid}`
(`node.gateway.envelopes`). The raw block route then answers 404 for the input CID, since the
plaintext block does not exist anywhere.

Answers: a miner's MQTT result for a private request carries the output envelope; `open_output`
opens it with the wallet key and the pending registry then checks the plaintext's sha256 against the
digest on chain as for any result. Deltas are AES-GCM under a key derived from the input salt
(`node.miner.private`), opened here before they reach the stream. Nothing here logs document text.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from pydantic import TypeAdapter

from node.chain.hub import HubClient
from node.chain.pubkeys import public_key_of
from node.content.canonical import DOCUMENT_VERSION_3, jcs_json
from node.content.cid import digest_of, digest_to_cid
from node.content.doc_parts import PublicKeyHex, Salt
from node.content.documents import InputDocument, parse_output_document, to_canonical_bytes
from node.content.envelope import (
    MAX_RECIPIENTS,
    EnvelopeError,
    max_plaintext_bytes,
    open_envelope,
    seal,
)
from node.content.errors import ContentError
from node.content.salt import private_salt
from node.content.store import ContentStore
from node.gateway.envelopes import MAX_PRIVATE_REQUESTS, EnvelopeBook
from node.gateway.errors import InvalidRequest
from node.gateway.seat_keys import PublicKeys, PublicKeyUnavailable
from node.log import get_logger
from node.miner.private import delta_key, own_address

log = get_logger("inferd.gateway.private")

MAX_OPENED_OUTPUTS: Final = 256
"""Opened answers remembered by envelope hash (`PrivateDesk.open_output`)."""


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


__all__ = [
    "MAX_PRIVATE_DOCUMENT_BYTES",
    "PrivateDesk",
    "PrivateEntry",
    "make_private",
]
