"""The gateway's cheaper private-request paths: the seats' envelope routes answered in front of
FastAPI's router (`EnvelopeRoutes`: the same statuses, headers and checks as `envelope_router`, the
rest of the app untouched), and a parsed request made private without a second validation."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from node.content.cid import digest_of, digest_to_cid
from node.content.documents import to_canonical_bytes, validate_input_document
from node.content.envelope import DELTAS_HEADER, ENVELOPE_LIMITS
from node.gateway.envelopes import EnvelopeBook, EnvelopeRoutes, envelope_router
from node.gateway.errors import InvalidRequest
from node.gateway.private import MAX_PRIVATE_DOCUMENT_BYTES, make_private
from node.gateway.schemas import parse_chat_request


def _client(book: EnvelopeBook, accepted: list[bytes]) -> TestClient:
    def accept(body: bytes) -> bool:
        accepted.append(body)
        return body == b"ours"

    app = FastAPI()
    app.add_middleware(EnvelopeRoutes, book=book, accept=accept)
    app.include_router(envelope_router(book))  # GET only: what the middleware does not answer

    @app.get("/other")
    async def other() -> dict[str, str]:
        return {"ok": "yes"}

    return TestClient(app)


def test_envelope_routes_answer_like_the_router() -> None:
    book = EnvelopeBook()
    cid = digest_to_cid(digest_of(b"sealed"))
    book.put(cid, b'{"v":1}')
    accepted: list[bytes] = []
    client = _client(book, accepted)
    reply = client.get(f"/envelope/{cid}")
    assert (reply.status_code, reply.content) == (200, b'{"v":1}')
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    missing = client.get(f"/envelope/{digest_to_cid(bytes(32))}")
    assert missing.status_code == 404 and missing.headers["content-type"] == "text/plain; charset=utf-8"
    assert "cache-control" not in missing.headers
    assert client.get("/envelope/not-a-cid").status_code == 400
    assert client.post("/envelope/output", content=b"ours").status_code == 202
    assert client.post("/envelope/output", content=b"theirs").status_code == 422
    too_large = client.post("/envelope/output", content=b"x" * (ENVELOPE_LIMITS.max_bytes + 1))
    assert too_large.status_code == 413
    assert accepted == [b"ours", b"theirs"]  # an oversized body never reaches the desk
    assert client.get("/other").json() == {"ok": "yes"}
    assert client.get("/envelope/a/b").status_code == 404  # not an envelope route: the app's 404
    assert client.put(f"/envelope/{cid}").status_code == 405  # the router's answer, as before


def test_an_input_whose_client_does_not_stream_is_served_with_deltas_off() -> None:
    """Both routes say `x-inferd-deltas: off` for an input expected with live=False, nothing for
    the others; dropping the input forgets it."""
    book = EnvelopeBook(max_entries=2)
    quiet, live = (digest_to_cid(digest_of(x)) for x in (b"quiet", b"live"))
    book.expect(quiet, live=False)
    book.expect(live)
    for cid in (quiet, live):
        book.put(cid, b'{"v":1}')
    middleware = _client(book, [])
    router = FastAPI()
    router.include_router(envelope_router(book))
    for client in (middleware, TestClient(router)):
        assert client.get(f"/envelope/{quiet}").headers.get(DELTAS_HEADER) == "off"
        assert DELTAS_HEADER not in client.get(f"/envelope/{live}").headers
    book.drop(quiet)
    assert book.live(quiet)
    for i in range(3):  # bounded like the envelopes
        book.expect(digest_to_cid(digest_of(bytes([i]))), live=False)
    assert len(book._quiet) == 2


def test_make_private_from_the_parsed_bytes_is_the_private_models_encoding() -> None:
    """A request parsed once (`parse_chat_request`) is made private from its bytes: the same bytes as
    validating and encoding the private document, and a document that does not fit is still refused."""
    reply_to = bytes(range(64))
    unicode = "é 🙂 \u2028 " * 3
    for body in (
        {"model": "m", "messages": [{"role": "user", "content": unicode}], "max_tokens": 8, "seed": 7},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "top_p": 1e-7},
    ):
        parsed = parse_chat_request(body)
        private, data = make_private(parsed.document, reply_to, parsed.document_bytes)
        assert private.v == 3 and private.reply_to == reply_to.hex() and private.salt is not None
        assert data == to_canonical_bytes(validate_input_document(json.loads(data)))
        assert data == to_canonical_bytes(private)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * MAX_PRIVATE_DOCUMENT_BYTES}]}
    parsed = parse_chat_request(big)
    with pytest.raises(InvalidRequest):
        make_private(parsed.document, reply_to, parsed.document_bytes)


async def test_a_seat_that_leaves_mid_answer_is_not_answered() -> None:
    accepted: list[bytes] = []

    def accept(body: bytes) -> bool:
        accepted.append(body)
        return True

    routes = EnvelopeRoutes(_client(EnvelopeBook(), accepted).app, EnvelopeBook(), accept)
    messages: list[dict[str, object]] = [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[object] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: object) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/envelope/output", "headers": []}
    await routes(scope, receive, send)  # type: ignore[arg-type]
    assert sent == [] and accepted == []  # nothing half-read reaches the desk; no one to answer
