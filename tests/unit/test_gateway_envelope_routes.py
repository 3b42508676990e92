"""The seats' envelope routes answered in front of FastAPI's router (`EnvelopeRoutes`): the same
statuses, headers and checks as `envelope_router`, and the rest of the app untouched."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from node.content.cid import digest_of, digest_to_cid
from node.content.envelope import ENVELOPE_LIMITS
from node.gateway.private import EnvelopeBook, EnvelopeRoutes, envelope_router


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
