"""Request parsing: an OpenAI request body becomes a validated input document, or a 400 naming `param`.

The body's bytes go through `node.gate` (bounded depth, strings, items; strict JSON) before anything
else looks at them, so hostile JSON is a 400, never a crash or a stall.

The input document's pydantic models (shared with the miner) hold every range check; this module
only separates the transport fields (`stream`, `stream_options`, `chain_id`) from the parameters
that go on chain, rejects unknown arguments the way OpenAI does, and maps `DocumentError` paths
(`params.temperature`) back to the request's own names (`temperature`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict

from node.content.documents import (
    ChatParams,
    CompletionParams,
    InputDocument,
    to_canonical_bytes,
    validate_input_document,
)
from node.content.documents import load_json as load_document_json
from node.content.errors import DocumentError, DocumentTooLarge
from node.gate import HTTP_BODY_LIMITS, UntrustedJSON, load_json_object
from node.gateway.errors import BodyTimeout, InvalidRequest, PayloadTooLarge

Kind = Literal["chat", "completion"]

_TRANSPORT = frozenset({"model", "stream", "stream_options", "chain_id"})
_CHAT_ONLY = frozenset({"messages", "max_completion_tokens"})
_COMPLETION_ONLY = frozenset({"prompt"})


class ParsedRequest(BaseModel):
    """What the handlers need: the document for the chain and how to answer."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    kind: Kind
    document: InputDocument
    document_bytes: bytes
    stream: bool = False
    include_usage: bool = False
    chain_id: int | None = None


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `max_bytes`: from `Content-Length`
    before reading anything, else while streaming chunks in; a 408 if it takes over `timeout_s`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise InvalidRequest("Content-Length must be a decimal byte count.", code="invalid_header")
        if len(declared) > 18 or int(declared) > max_bytes:
            raise PayloadTooLarge(
                f"The request body is too large: Content-Length is over the {max_bytes}-byte limit."
            )
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise PayloadTooLarge(f"The request body is too large: over the {max_bytes}-byte limit.")
    except TimeoutError:
        raise BodyTimeout(f"The request body did not arrive within {timeout_s:g}s.") from None
    return bytes(body)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object through the one gate for untrusted JSON (`node.gate`):
    a 400 like OpenAI's for anything it refuses, a 413 when the body is over the byte limit."""
    try:
        return load_json_object(raw, HTTP_BODY_LIMITS)
    except UntrustedJSON as exc:
        if exc.reason == "too_large":
            raise PayloadTooLarge(f"The request body is too large: {exc}.") from None
        if exc.reason == "not_object":
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_json") from None
        raise InvalidRequest(
            f"We could not parse the JSON body of your request. The body must be a JSON object ({exc}).",
            code="invalid_json",
        ) from None


def _param_from_field(field: str) -> str | None:
    if not field:
        return None
    return field.removeprefix("params.")


def _require_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name}: must be a boolean, got {type(value).__name__}", param=name)
    return value


def _transport(body: dict[str, Any]) -> tuple[bool, bool, int | None]:
    stream = _require_bool(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise InvalidRequest("stream_options: only allowed when stream is true", param="stream_options")
        if not isinstance(options, dict):
            raise InvalidRequest("stream_options: must be an object", param="stream_options")
        unknown = set(options) - {"include_usage"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidRequest(
                f"stream_options.{name}: unrecognized option", param=f"stream_options.{name}"
            )
        include_usage = _require_bool(options, "include_usage")
    chain_id = body.get("chain_id")
    if chain_id is not None and (not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id < 1):
        raise InvalidRequest("chain_id: must be a positive integer", param="chain_id")
    model = body.get("model")
    if model is None:
        raise InvalidRequest(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: must be a non-empty string", param="model")
    return stream, include_usage, chain_id


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {unknown[0]}",
            param=unknown[0],
            code="unknown_parameter",
        )


def _build(kind: Kind, doc: dict[str, Any], body: dict[str, Any]) -> ParsedRequest:
    stream, include_usage, chain_id = _transport(body)
    try:
        document = validate_input_document(doc)
        data = to_canonical_bytes(document)
    except DocumentTooLarge as exc:
        raise InvalidRequest(str(exc), code="request_too_large") from None
    except DocumentError as exc:
        param = _param_from_field(exc.field)
        raise InvalidRequest(str(exc) if param else exc.message, param=param) from None
    try:  # the document nests one level deeper than the body: hold it to the limits miners apply
        load_document_json(data)
    except DocumentError as exc:
        raise InvalidRequest(f"The request is too complex for an input document: {exc.message}") from None
    return ParsedRequest(
        kind=kind,
        document=document,
        document_bytes=data,
        stream=stream,
        include_usage=include_usage,
        chain_id=chain_id,
    )


def parse_chat_request(body: dict[str, Any]) -> ParsedRequest:
    """`POST /v1/chat/completions` body -> chat input document (400 with `param` on any problem)."""
    params_fields = frozenset(ChatParams.model_fields)
    _check_unknown(body, _TRANSPORT | _CHAT_ONLY | params_fields)
    if "messages" not in body:
        raise InvalidRequest(
            "you must provide a messages parameter", param="messages", code="missing_required_parameter"
        )
    params = {k: v for k, v in body.items() if k in params_fields and v is not None}
    mct = body.get("max_completion_tokens")
    if mct is not None:
        if "max_tokens" in params and params["max_tokens"] != mct:
            raise InvalidRequest(
                "max_tokens and max_completion_tokens disagree; send one of them",
                param="max_completion_tokens",
            )
        params["max_tokens"] = mct
    doc = {"v": 1, "type": "chat", "model": body.get("model"), "messages": body["messages"], "params": params}
    try:
        return _build("chat", doc, body)
    except InvalidRequest as exc:
        if exc.param == "max_tokens" and mct is not None and "max_tokens" not in body:
            exc.param = "max_completion_tokens"
        raise


def parse_completion_request(body: dict[str, Any]) -> ParsedRequest:
    """`POST /v1/completions` body -> completion input document (400 with `param` on any problem)."""
    params_fields = frozenset(CompletionParams.model_fields)
    _check_unknown(body, _TRANSPORT | _COMPLETION_ONLY | params_fields)
    if "prompt" not in body or body["prompt"] is None:
        raise InvalidRequest(
            "you must provide a prompt parameter", param="prompt", code="missing_required_parameter"
        )
    params = {k: v for k, v in body.items() if k in params_fields and v is not None}
    best_of, n = params.get("best_of", 1), params.get("n", 1)
    if body.get("stream") is True and _is_int(best_of) and _is_int(n) and best_of > n:
        raise InvalidRequest("best_of: cannot be larger than n when streaming", param="best_of")
    doc = {
        "v": 1,
        "type": "completion",
        "model": body.get("model"),
        "prompt": body["prompt"],
        "params": params,
    }
    return _build("completion", doc, body)


__all__ = [
    "Kind",
    "ParsedRequest",
    "parse_chat_request",
    "parse_completion_request",
    "parse_json_body",
    "read_body",
]
