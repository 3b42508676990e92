"""Private requests (issue 16) without a chain: documents, the miner's sealed input and answer, deltas,
the gateway's desk (seal to seats, envelope route, open answers), all with real crypto and stores."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from fastapi import FastAPI
from fastapi.testclient import TestClient

from node.chain.pubkeys import public_key_of
from node.content.canonical import jcs_json
from node.content.cid import digest_of, digest_to_cid
from node.content.documents import (
    ChatInputDocument,
    ChatParams,
    UserMessage,
    parse_input_document,
    parse_output_document,
    to_canonical_bytes,
    validate_input_document,
)
from node.content.envelope import (
    MAX_RECIPIENTS,
    EnvelopeTooLarge,
    max_plaintext_bytes,
    open_envelope,
    recipients_of,
    seal,
)
from node.content.errors import ContentError, DocumentError, InputUnavailable
from node.content.local import LocalStore
from node.content.salt import output_salt, private_salt
from node.devnet.processes import Anvil
from node.gateway.early import ResultMessage
from node.gateway.envelopes import EnvelopeBook, envelope_router
from node.gateway.errors import InvalidRequest
from node.gateway.mqtt import Routed, delta_of
from node.gateway.private import MAX_PRIVATE_DOCUMENT_BYTES, PrivateDesk, make_private
from node.gateway.records import Delta
from node.gateway.sealing import Sealer
from node.gateway.seat_keys import PublicKeys, PublicKeyUnavailable, heartbeat_filter, offer_heartbeat
from node.miner.pipeline import Pipeline
from node.miner.private import (
    INPUT_TAMPERED,
    NO_ENVELOPE_SOURCE,
    Envelope,
    delta_key,
    open_delta,
    open_private_input,
    seal_delta,
)
from node.miner.testing import FakeEngine
from node.supervise import Supervisor

MARKER = "zebra-marker-7731"
MINER_A, MINER_B, OUTSIDER, REQUESTER = (
    Account.from_key("0x" + f"{i:02x}" * 32) for i in (0x11, 0x12, 0x13, 0x14)
)


def _key(acct: object) -> str:
    return "0x" + bytes(acct.key).hex()  # type: ignore[attr-defined]


def _private_doc() -> tuple[ChatInputDocument, bytes]:
    doc = ChatInputDocument(
        model="fake-model",
        messages=[UserMessage(role="user", content=f"repeat {MARKER}")],
        params=ChatParams(max_tokens=8, seed=1),
    )
    private, data = make_private(doc, public_key_of(_key(REQUESTER)))
    assert isinstance(private, ChatInputDocument)
    return private, data


def _sealed(plaintext: bytes, *accounts: object) -> bytes:
    return seal(plaintext, {a.address: public_key_of(_key(a)) for a in accounts})  # type: ignore[attr-defined]


@dataclass
class _Job:
    request_id: int
    input_digest: bytes
    created: int = 1_700_000_000
    max_tokens: int | None = None


class _Source:
    def __init__(self, envelope: bytes | None, live: bool = True) -> None:
        self.value = envelope
        self.live = live

    async def envelope(self, input_cid: str) -> Envelope | None:
        return None if self.value is None else Envelope(self.value, self.live)


def _pipeline(store: LocalStore, acct: object, envelope: bytes | None, live: bool = True) -> Pipeline:
    return Pipeline(
        engine=FakeEngine(), store=store, private_key=_key(acct), chain_id=31337,
        hub="0x" + "22" * 20, envelopes=_Source(envelope, live), first_fetch_s=0.01,
    )  # fmt: skip


# --------------------------------------------------------------------------- documents


def test_salt_and_reply_to_are_v3_and_together() -> None:
    doc, data = _private_doc()
    assert doc.v == 3 and doc.salt and doc.reply_to == public_key_of(_key(REQUESTER)).hex()
    assert parse_input_document(data) == doc
    base = {"type": "chat", "model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(DocumentError, match="reply_to"):
        validate_input_document({**base, "v": 3, "salt": private_salt()})
    with pytest.raises(DocumentError, match="salt"):
        validate_input_document({**base, "v": 1, "salt": private_salt(), "reply_to": "ab" * 64})
    with pytest.raises(DocumentError, match="salt"):
        validate_input_document({**base, "v": 3, "salt": "XY" * 32, "reply_to": "ab" * 64})
    public = validate_input_document({**base, "v": 3})
    assert b"salt" not in to_canonical_bytes(public)  # a public document keeps its bytes


def test_a_private_document_too_large_to_seal_is_refused_before_it_is_sent() -> None:
    doc = ChatInputDocument(
        model="fake-model", messages=[UserMessage(role="user", content="x")], params=ChatParams(max_tokens=8)
    )
    _, small = make_private(doc, public_key_of(_key(REQUESTER)))
    room = MAX_PRIVATE_DOCUMENT_BYTES - len(small)  # the largest content whose envelope still fits
    fits = doc.model_copy(update={"messages": [UserMessage(role="user", content="x" * (room + 1))]})
    _, data = make_private(fits, public_key_of(_key(REQUESTER)))
    assert len(data) == MAX_PRIVATE_DOCUMENT_BYTES
    assert max_plaintext_bytes(MAX_RECIPIENTS) == len(data) < max_plaintext_bytes(3)  # any seats
    over = doc.model_copy(update={"messages": [UserMessage(role="user", content="x" * (room + 2))]})
    with pytest.raises(InvalidRequest) as refused:
        make_private(over, public_key_of(_key(REQUESTER)))
    body = refused.value.envelope()["error"]  # OpenAI's error envelope, answered with 400
    assert refused.value.status == 400 and body["code"] == "request_too_large"
    assert body["param"] == "messages" and '"private": false' in body["message"]
    with pytest.raises(EnvelopeTooLarge):  # what the gateway would have met after paying
        seal(b"x" * (max_plaintext_bytes(1) + 1), {MINER_A.address: public_key_of(_key(MINER_A))})


# --------------------------------------------------------------------------- miner


def test_only_a_recipient_opens_and_the_digest_is_checked() -> None:
    _, data = _private_doc()
    env = _sealed(data, MINER_A, MINER_B)
    opened = open_private_input(env, private_key=_key(MINER_A), input_digest=digest_of(data))
    assert not isinstance(opened, ContentError | type(None)) and opened.salt is not None
    assert open_private_input(env, private_key=_key(OUTSIDER), input_digest=digest_of(data)) is None
    wrong = open_private_input(env, private_key=_key(MINER_B), input_digest=bytes(32))
    assert type(wrong).__name__ == "InputTampered"
    body = json.loads(env)
    raw = bytearray(base64.b64decode(body["ciphertext"]))
    raw[0] ^= 1  # one bit of the ciphertext changed after sealing
    body["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    flipped = jcs_json(body)
    tampered = open_private_input(flipped, private_key=_key(MINER_A), input_digest=digest_of(data))
    assert type(tampered).__name__ == "InputTampered"


async def test_a_private_input_is_answered_sealed_to_the_requester(tmp_path: Path) -> None:
    doc, data = _private_doc()
    env = _sealed(data, MINER_A, MINER_B)
    outputs = []
    for acct in (MINER_A, MINER_B):
        store = LocalStore(tmp_path / acct.address)
        produced = await _pipeline(store, acct, env).produce(_Job(9, digest_of(data)))
        stored = await store.get(produced.output_cid)
        assert stored == produced.output and MARKER.encode() not in stored  # the envelope, only
        plain = open_envelope(stored, _key(REQUESTER), REQUESTER.address)
        assert digest_of(plain) == produced.output_digest  # the chain's digest is the plaintext's
        out = parse_output_document(plain)
        assert out.salt == output_salt(doc.salt or "") and out.error is None
        outputs.append(produced.output_digest)
        for path in (tmp_path / acct.address).rglob("*"):
            assert not path.is_file() or MARKER.encode() not in path.read_bytes()
    assert outputs[0] == outputs[1]  # quorum compares the salted plaintext digests


async def test_a_tampered_envelope_is_an_error_document_and_an_outsider_waits(tmp_path: Path) -> None:
    _, data = _private_doc()
    _, other = _private_doc()  # sealed from another document: its digest is not the one on chain
    store = LocalStore(tmp_path / "a")
    produced = await _pipeline(store, MINER_A, _sealed(other, MINER_A)).produce(_Job(3, digest_of(data)))
    out = parse_output_document(produced.output)
    assert out.error is not None and out.error.code == INPUT_TAMPERED and out.salt is None
    again = await _pipeline(LocalStore(tmp_path / "b"), MINER_B, _sealed(other, MINER_B)).produce(
        _Job(3, digest_of(data))
    )
    assert again.output == produced.output  # the same refusal byte for byte on every seat
    with pytest.raises(InputUnavailable):
        await _pipeline(LocalStore(tmp_path / "c"), OUTSIDER, _sealed(data, MINER_A)).produce(
            _Job(3, digest_of(data))
        )


async def test_a_miner_without_envelope_urls_says_why_it_cannot_read_the_input(tmp_path: Path) -> None:
    _, data = _private_doc()
    pipeline = Pipeline(
        engine=FakeEngine(), store=LocalStore(tmp_path / "blocks"), private_key=_key(MINER_A),
        chain_id=31337, hub="0x" + "22" * 20, first_fetch_s=0.01,
    )  # fmt: skip
    with pytest.raises(InputUnavailable) as unavailable:
        await pipeline.produce(_Job(4, digest_of(data)))
    assert NO_ENVELOPE_SOURCE in unavailable.value.reason and "miner.envelope_urls" in str(unavailable.value)
    with pytest.raises(InputUnavailable) as waiting:  # with a source: not sealed to us yet, no advice
        await _pipeline(LocalStore(tmp_path / "b"), MINER_A, None).produce(_Job(4, digest_of(data)))
    assert "envelope_urls" not in waiting.value.reason


async def test_a_seat_publishes_deltas_only_when_the_gateway_relays_them(tmp_path: Path) -> None:
    """An envelope served with `x-inferd-deltas: off` (a client that does not stream): no delta is
    published, and the answer is the same bytes, digest and signature as with deltas."""
    _, data = _private_doc()
    env = _sealed(data, MINER_A)
    answers = []
    for live in (True, False):
        sent: list[tuple[int, int, dict[str, object]]] = []
        pipeline = _pipeline(LocalStore(tmp_path / str(live)), MINER_A, env, live=live)
        produced = await pipeline.produce(_Job(9, digest_of(data)), deltas=lambda *d, s=sent: s.append(d))
        assert (len(sent) > 0) is live, sent
        opened = open_envelope(produced.output, _key(REQUESTER), REQUESTER.address)
        answers.append((opened, produced.output_digest, produced.signature))
    assert answers[0] == answers[1]


def test_deltas_open_only_with_the_salt_and_their_own_position() -> None:
    key = delta_key(private_salt())
    sealed = seal_delta(key, 5, MINER_A.address, 0, {"content": MARKER})
    assert MARKER not in str(sealed)
    assert open_delta(key, 5, MINER_A.address, 0, sealed) == {"content": MARKER}
    for args in (
        (key, 5, MINER_A.address, 1),
        (key, 6, MINER_A.address, 0),
        (delta_key(private_salt()), 5, MINER_A.address, 0),
    ):
        with pytest.raises(DocumentError):
            open_delta(*args, sealed)
    routed = delta_of(0, 0, MINER_A.address, sealed)  # what the gateway's MQTT parser keeps
    assert routed.sealed == sealed["sealed"] and routed.text == ""


# --------------------------------------------------------------------------- gateway


def test_public_keys_are_verified_against_their_address() -> None:
    keys = PublicKeys()
    assert not keys.offer(MINER_A.address, public_key_of(_key(MINER_B)))
    assert keys.cached(MINER_A.address) is None
    assert keys.offer(MINER_A.address, public_key_of(_key(MINER_A)))
    assert keys.cached(MINER_A.address.lower()) == public_key_of(_key(MINER_A))


async def test_a_seat_asking_before_the_seal_gets_the_envelope_once_it_exists(tmp_path: Path) -> None:
    """The seat and the gateway learn the assignment from the same block: a seat that asks first
    waits for the seal (no 404 and retry); an input never requested here is a 404 at once."""
    doc, data = _private_doc()
    keys = PublicKeys()
    keys.offer(MINER_A.address, public_key_of(_key(MINER_A)))
    book = EnvelopeBook()
    desk = PrivateDesk(LocalStore(tmp_path / "gw"), _key(REQUESTER), keys, book)
    cid = digest_to_cid(digest_of(data))
    desk.register((1, 5), cid, data, doc.salt or "")
    asking = asyncio.create_task(book.wait(cid, 60))
    await asyncio.sleep(0)
    assert not asking.done()
    assert await desk.add_seats((1, 5), (MINER_A.address,), hub=None)  # type: ignore[arg-type]
    envelope = await asking
    assert (
        envelope is not None
        and open_private_input(envelope, private_key=_key(MINER_A), input_digest=digest_of(data)) is not None
    )
    assert await book.wait(digest_to_cid(digest_of(b"never requested")), 60) is None


async def test_the_desk_seals_to_each_new_seat_and_serves_the_newest_envelope(tmp_path: Path) -> None:
    doc, data = _private_doc()
    store = LocalStore(tmp_path / "gw")
    book = EnvelopeBook()
    keys = PublicKeys()
    for acct in (MINER_A, MINER_B):
        keys.offer(acct.address, public_key_of(_key(acct)))
    desk = PrivateDesk(store, _key(REQUESTER), keys, book)
    cid = digest_to_cid(digest_of(data))
    desk.register((1, 4), cid, data, doc.salt or "")
    assert await desk.add_seats((1, 4), (MINER_A.address,), hub=None)  # type: ignore[arg-type]
    assert not await desk.add_seats((1, 4), (MINER_A.address,), hub=None)  # type: ignore[arg-type]
    first = book.get(cid)
    assert (
        first is not None
        and open_private_input(first, private_key=_key(MINER_B), input_digest=digest_of(data)) is None
    )
    assert await desk.add_seats((1, 4), (MINER_B.address,), hub=None)  # type: ignore[arg-type]  # an auditor
    app = FastAPI()
    app.include_router(envelope_router(book))
    client = TestClient(app)
    newest = client.get(f"/envelope/{cid}")
    assert newest.status_code == 200
    opened = open_private_input(newest.content, private_key=_key(MINER_B), input_digest=digest_of(data))
    assert not isinstance(opened, ContentError | type(None))
    assert client.get(f"/envelope/{digest_to_cid(bytes(32))}").status_code == 404
    assert client.get("/envelope/not-a-cid").status_code == 400
    with pytest.raises(ContentError):
        await store.get(cid)  # the plaintext block exists nowhere
    for path in (tmp_path / "gw").rglob("*"):
        assert not path.is_file() or MARKER.encode() not in path.read_bytes()
    answer = seal(b'{"x":1}', {REQUESTER.address: public_key_of(_key(REQUESTER))})
    assert desk.open_output(answer) == b'{"x":1}'
    assert desk.open_output(_sealed(b"y", MINER_A)) is None


def test_heartbeats_offer_only_their_own_miners_key() -> None:
    keys = PublicKeys()
    hub = "0x" + "22" * 20
    topic = heartbeat_filter(31337, hub).replace("+", MINER_A.address)
    own = json.dumps({"online": True, "public_key": public_key_of(_key(MINER_A)).hex()}).encode()
    other = json.dumps({"online": True, "public_key": public_key_of(_key(MINER_B)).hex()}).encode()
    assert not offer_heartbeat(keys, topic, other) and keys.cached(MINER_A.address) is None
    assert not offer_heartbeat(keys, topic.lower(), own)  # not the canonical (checksummed) miner level
    assert not offer_heartbeat(keys, topic, b"[not json")
    assert offer_heartbeat(keys, topic, own) and keys.cached(MINER_A.address) == public_key_of(_key(MINER_A))


async def test_a_seats_key_is_recovered_from_its_activation_tx(anvil: Anvil, anvil_keys: list[str]) -> None:
    from node.chain.hub import HubClient
    from node.miner.testing import deploy_dev_hub

    dev = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[1]])
    hub = HubClient(dev.owner.w3, dev.owner.address)
    miner = Account.from_key(anvil_keys[1])
    keys = PublicKeys()
    assert await keys.get(miner.address, hub) == public_key_of(anvil_keys[1])
    with pytest.raises(PublicKeyUnavailable):
        await PublicKeys().get(OUTSIDER.address, hub)  # never registered: no activation tx


class _Delivering(_Source):
    def __init__(self, envelope: bytes | None) -> None:
        super().__init__(envelope)
        self.delivered: list[bytes] = []

    async def deliver(self, envelope: bytes) -> None:
        self.delivered.append(envelope)


async def test_a_sealed_answer_handed_in_over_http_is_kept_only_for_our_private_request(
    tmp_path: Path,
) -> None:
    doc, data = _private_doc()
    source = _Delivering(_sealed(data, MINER_A))
    pipeline = Pipeline(
        engine=FakeEngine(), store=LocalStore(tmp_path / "m"), private_key=_key(MINER_A), chain_id=31337,
        hub="0x" + "22" * 20, envelopes=source,
    )  # fmt: skip
    produced = await pipeline.produce(_Job(11, digest_of(data)))
    assert source.delivered == []  # handed in after the daemon journaled and published it
    await pipeline.deliver(produced)
    assert source.delivered == [produced.output]  # the miner hands its sealed answer in
    desk = PrivateDesk(LocalStore(tmp_path / "gw"), _key(REQUESTER), PublicKeys(), EnvelopeBook())
    app = FastAPI()
    app.include_router(envelope_router(desk.book, desk.accept_output))
    client = TestClient(app)
    assert client.post("/envelope/output", content=produced.output).status_code == 422  # not in flight here
    desk.register((31337, 11), digest_to_cid(digest_of(data)), data, doc.salt or "")
    assert client.post("/envelope/output", content=b"{}").status_code == 422
    assert client.post("/envelope/output", content=produced.output).status_code == 202
    assert desk.outputs[digest_to_cid(produced.output_digest)] == open_envelope(
        produced.output, _key(REQUESTER), REQUESTER.address
    )


class _StubHub:
    """What sealing needs of a hub: a request's model and seats, the model's active miners."""

    def __init__(self, seats: list[str], active: list[str]) -> None:
        self.seats, self.active = seats, active

    async def get_request(self, request_id: int) -> Any:
        return SimpleNamespace(model_id=b"\x01" * 32, seats=self.seats)

    async def active_miners(self, model: bytes) -> list[str]:
        return self.active


async def test_the_gateway_seals_to_each_seat_the_chain_names_then_forgets(tmp_path: Path) -> None:
    from node.chain.events import (
        AuditOpened,
        EscalationOpened,
        InferenceAssigned,
        InferenceFinalized,
        LogRef,
    )
    from node.config import ChainSettings
    from node.gateway.chain_backend import ChainBackend, ChainLink

    doc, data = _private_doc()
    store = LocalStore(tmp_path / "gw")
    backend = ChainBackend([ChainSettings()], store)
    for acct in (MINER_A, MINER_B, OUTSIDER):
        backend.public_keys.offer(acct.address, public_key_of(_key(acct)))
    stub = _StubHub([MINER_A.address], [MINER_A.address, MINER_B.address, OUTSIDER.address])
    link = ChainLink(settings=ChainSettings(), chain_id=31337, hub=stub, sender=None)  # type: ignore[arg-type]
    link.private = PrivateDesk(store, _key(REQUESTER), backend.public_keys, backend.envelopes)
    backend.links[31337] = link
    cid = digest_to_cid(digest_of(data))
    link.private.register((31337, 5), cid, data, doc.salt or "")
    ref = LogRef(1, "0x" + "00" * 32, "0x" + "00" * 32, 0, "0x" + "22" * 20)

    async def recipients_after(ev: Any) -> list[str]:
        backend._private_event(31337, ev)
        await asyncio.gather(*backend._sealing)
        envelope = backend.envelopes.get(cid)
        assert envelope is not None
        return recipients_of(envelope)

    digest = digest_of(data)
    assert await recipients_after(
        InferenceAssigned(5, b"\x01" * 32, digest, 10, (MINER_A.address,), ref)
    ) == [MINER_A.address.lower()]
    audited = await recipients_after(AuditOpened(5, MINER_B.address, digest, 20, ref))
    assert sorted(audited) == sorted(a.address.lower() for a in (MINER_A, MINER_B))
    voters = await recipients_after(EscalationOpened(5, MINER_A.address, digest, 30, 40, ref))
    assert OUTSIDER.address.lower() in voters  # a voter re-executes the input
    backend._private_event(31337, InferenceFinalized(5, digest, ref))
    assert backend.envelopes.get(cid) is None and link.private.get((31337, 5)) is None


async def test_a_sealed_result_that_arrives_after_the_end_is_still_opened(tmp_path: Path) -> None:
    """A seat's MQTT result can reach the gateway after the chain finalized its request (a fast chain)
    and the desk forgot the plaintext: it is opened all the same (not rejected as a digest mismatch),
    a late delta is dropped, and a request that was never private here passes untouched."""
    doc, data = _private_doc()
    desk = PrivateDesk(LocalStore(tmp_path / "gw"), _key(REQUESTER), PublicKeys(), EnvelopeBook())
    sealer = Sealer({1: SimpleNamespace(private=desk, chain_id=1)}, Supervisor("test"))  # type: ignore[dict-item]
    desk.register((1, 7), digest_to_cid(digest_of(data)), data, doc.salt or "")
    desk.forget((1, 7))
    assert desk.get((1, 7)) is None and desk.ended((1, 7))
    answer = seal(b'{"late":1}', {REQUESTER.address: public_key_of(_key(REQUESTER))})
    hub, miner = "0x" + "22" * 20, MINER_A.address
    late = Routed(1, hub, 7, miner, result=ResultMessage(answer, "0x00", miner))
    opened = sealer.open(late)
    assert opened is not None and opened.result is not None and opened.result.output_bytes == b'{"late":1}'
    delta = Routed(1, hub, 7, miner, delta=Delta(0, 0, "", miner, sealed="x"))
    assert sealer.open(delta) is None
    public = Routed(1, hub, 8, miner, result=ResultMessage(b"{}", "0x00", miner))
    assert sealer.open(public) is public
