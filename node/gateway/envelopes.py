"""Serving sealed private inputs to their seats: `GET /envelope/{cid}` and `POST /envelope/output`.

The gateway keeps the newest envelope of each private input (`EnvelopeBook`, bounded) and answers a
seat's two HTTP requests of a private inference: fetching its input's envelope and handing in its
sealed answer (the path that works without the MQTT broker). Both are ciphertext, need no auth and
are bounded (`ENVELOPE_LIMITS`). `EnvelopeRoutes` answers them in front of FastAPI's router (a plain
ASGI middleware, for CPU); `envelope_router` answers the rest with the same checks and statuses.
What is sealed, and to whom, is `node.gateway.private`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from node.content.cid import normalize_cid
from node.content.envelope import DELTAS_HEADER, ENVELOPE_LIMITS
from node.content.errors import ContentError, InvalidCID

MAX_PRIVATE_REQUESTS: Final = 4096
"""Private requests whose plaintext input is held at once (oldest dropped; a request ends first)."""
ENVELOPE_WAIT_S: Final = 2.0
"""How long `GET /envelope/{cid}` holds a seat's request for an input requested here but not sealed
yet (below the miners' 5 s HTTP timeout)."""


class EnvelopeBook:
    """The newest envelope of each private input CID, served to seats (bounded, oldest dropped).

    An input the gateway has requested but not sealed yet is `expect`ed: a seat that learned its
    assignment before the gateway sealed to it (the two race from the same block) is answered as
    soon as the envelope exists (`wait`), instead of a 404 that costs it a retry with backoff.

    An input expected with `live=False` (its client does not stream) is served with
    `DELTAS_HEADER: off`: its seat then publishes no per-token deltas, which nobody would read
    (at 16 tokens, a third of the miner's and gateway's CPU per request went to them).
    """

    def __init__(self, max_entries: int = MAX_PRIVATE_REQUESTS) -> None:
        self._envelopes: OrderedDict[str, bytes] = OrderedDict()
        self._expected: OrderedDict[str, asyncio.Event] = OrderedDict()
        self._quiet: OrderedDict[str, None] = OrderedDict()
        self.max_entries = max_entries

    def expect(self, input_cid: str, *, live: bool = True) -> None:
        """Hold seats' fetches of `input_cid` until it is sealed; `live`: whether deltas are relayed."""
        self._expected.setdefault(input_cid, asyncio.Event())
        while len(self._expected) > self.max_entries:
            self._expected.popitem(last=False)
        if not live:
            self._quiet[input_cid] = None
            while len(self._quiet) > self.max_entries:
                self._quiet.popitem(last=False)

    def live(self, input_cid: str) -> bool:
        """Whether the requester relays live deltas of `input_cid` (default: yes)."""
        return input_cid not in self._quiet

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
        self._quiet.pop(input_cid, None)


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


async def _envelope_answer(book: EnvelopeBook, cid: str) -> tuple[int, bytes, bytes, bool]:
    """`GET /envelope/{cid}`'s status, body, content type and whether deltas are relayed (both
    routes' one answer)."""
    try:
        key = normalize_cid(cid)
    except (InvalidCID, ContentError):
        return 400, b"malformed CID\n", _TEXT, True
    data = await book.wait(key, ENVELOPE_WAIT_S)
    if data is None:
        return 404, b"no envelope for this input\n", _TEXT, True
    return 200, data, b"application/json", book.live(key)


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
                status, data, media, live = await _envelope_answer(self.book, cid)
                await _respond(send, status, data, media, no_store=status == 200, live=live)
                return
        await self.app(scope, receive, send)


async def _respond(
    send: Send, status: int, body: bytes, media: bytes | None, *, no_store: bool = False, live: bool = True
) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if media is not None:
        headers.append((b"content-type", media))
    if no_store:
        headers.append((b"cache-control", b"no-store"))
    if not live:
        headers.append((DELTAS_HEADER.encode(), b"off"))
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
        status, data, media, live = await _envelope_answer(book, cid)
        headers = {"Cache-Control": "no-store"} if status == 200 else {}
        if not live:
            headers[DELTAS_HEADER] = "off"
        return Response(data, status_code=status, media_type=media.decode(), headers=headers)

    return router


__all__ = ["ENVELOPE_WAIT_S", "MAX_PRIVATE_REQUESTS", "EnvelopeBook", "EnvelopeRoutes", "envelope_router"]
