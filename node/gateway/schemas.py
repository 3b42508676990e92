"""Request parsing: an OpenAI request body becomes a validated input document, or a 400 naming `param`.

The body's bytes go through `node.gate` (bounded depth, strings, items; strict JSON) before anything
else looks at them, so hostile JSON is a 400, never a crash or a stall.

The input document's pydantic models (shared with the miner) hold every range check; this module
only separates the transport fields (`stream`, `stream_options`, `chain_id`, `private`, `finality`)
from the parameters that go on chain, rejects unknown arguments the way OpenAI does, and maps
`DocumentError` paths (`params.temperature`) back to the request's own names (`temperature`).

**Normalisation** (the documents stay strict; the leniency lives here). Applications pass
OpenAI's own response objects back: `messages.append(reply.choices[0].message)` (the SDK sends
the fields it received: `refusal: null`, our `reasoning_content`), `message.model_dump()` (every
field: `annotations`, `audio`, `function_call`, `tool_calls` as null), or a plain dict. Each is
reduced to the same message before the document is built, so the document and its CID do not
depend on how the client echoed the turn: nulls, empty lists and response-only fields
(`annotations`, `reasoning_content`, `reasoning`, the SDK's `parsed` / `parsed_arguments`) are
dropped, `content: ""` beside tool calls is no content, a refusal without content is the content.
Defaults are dropped the same way (`response_format` `text`, `parallel_tool_calls` true, and
`parallel_tool_calls` without tools), so they never change the CID. Documents are written in the
current version (`CURRENT_VERSION`, RFC 8785 bytes), which carries every parameter.
A message field that would change the answer and cannot be honoured (`audio`, `function_call`)
and request parameters OpenAI accepts that this network cannot honour answer OpenAI's
`unsupported_parameter` / `unsupported_value` naming the parameter; hints with no effect on the
output (`prompt_cache_key`, `safety_identifier`, `store: false`, `service_tier: auto`) are accepted
and not put on chain. Anything else unknown stays a 400 `unknown_parameter`, as at OpenAI.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict

from node.content.documents import (
    CURRENT_VERSION,
    V2_PARAMS,
    ChatParams,
    CompletionParams,
    InputDocument,
    to_canonical_bytes,
    validate_input_document,
)
from node.content.documents import load_json as load_document_json
from node.content.errors import DocumentError, DocumentTooLarge
from node.gate import HTTP_BODY_LIMITS, UntrustedJSON, load_json_object
from node.gateway.errors import (
    BodyTimeout,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedParameter,
    UnsupportedValue,
)

Kind = Literal["chat", "completion"]
Finality = Literal["onchain", "signature"]
FINALITIES: tuple[Finality, ...] = ("onchain", "signature")

_TRANSPORT = frozenset({"model", "stream", "stream_options", "chain_id", "private", "finality"})
_CHAT_ONLY = frozenset({"messages", "max_completion_tokens"})
_COMPLETION_ONLY = frozenset({"prompt"})

_UNSUPPORTED_CHAT_PARAMS = {
    "audio": "models here answer in text only",
    "functions": "the deprecated functions API is not served; pass tools",
    "function_call": "the deprecated functions API is not served; pass tool_choice",
    "prediction": "predicted outputs are not available",
    "web_search_options": "web search is not available",
    "metadata": "completions are not stored for later retrieval (store)",
    "verbosity": "no served model takes a verbosity setting",
}
"""Chat parameters OpenAI accepts that change the answer or need a service the network lacks."""
_ACCEPTED_CHAT = frozenset({"store", "service_tier", "modalities"})
"""Accepted with the values that need nothing the network lacks (`_check_hints`), not on chain."""
_HINT_PARAMS = frozenset({"prompt_cache_key", "prompt_cache_retention", "safety_identifier"})
"""Caching and abuse-monitoring hints: no effect on the output, accepted as strings, not on chain."""
_SERVICE_TIERS_OK = ("auto", "default")
_EFFORTS_UNSUPPORTED = ("none", "minimal", "xhigh")
_RESPONSE_ONLY_FIELDS = ("annotations", "reasoning_content", "reasoning", "parsed")
"""Fields of OpenAI's (or this gateway's) response message that carry no input: dropped."""


class ParsedRequest(BaseModel):
    """What the handlers need: the document for the chain and how to answer."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    kind: Kind
    document: InputDocument
    document_bytes: bytes
    stream: bool = False
    include_usage: bool = False
    chain_id: int | None = None
    private: bool | None = None
    """`"private": true|false` (OpenAI SDK: `extra_body`); None: the gateway's `private_by_default`."""
    finality: Finality | None = None
    """`"finality"` (OpenAI SDK: `extra_body`): `onchain` waits for the result to be final on chain,
    `signature` answers on the assignee's verified signed result; None: the gateway's `answer_on`."""


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


def _private(body: dict[str, Any]) -> bool | None:
    value = body.get("private")
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest("private: must be a boolean", param="private")
    return value


def _finality(body: dict[str, Any]) -> Finality | None:
    value = body.get("finality")
    if value is None:
        return None
    if value not in FINALITIES:
        shown = repr(value) if isinstance(value, str) else type(value).__name__
        raise InvalidRequest(
            f"finality: must be 'onchain' (answer once the result is final on chain) or 'signature' "
            f"(answer on the assignee's verified signed result), got {shown}",
            param="finality",
        )
    finality: Finality = value
    return finality


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


# --------------------------------------------------------------------------- normalisation


def _drop_nulls(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _normalize_tool_call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    call = _drop_nulls(call)
    function = call.get("function")
    if isinstance(function, dict):
        call["function"] = {k: v for k, v in _drop_nulls(function).items() if k != "parsed_arguments"}
    return call


def _normalize_assistant(msg: dict[str, Any], where: str) -> dict[str, Any]:
    for name in _RESPONSE_ONLY_FIELDS:
        msg.pop(name, None)
    if "audio" in msg:
        raise UnsupportedParameter(f"{where}.audio", "audio messages cannot be replayed; send text content")
    if "function_call" in msg:
        raise UnsupportedParameter(
            f"{where}.function_call", "the deprecated function_call form is not served; send tool_calls"
        )
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        if calls:
            msg["tool_calls"] = [_normalize_tool_call(c) for c in calls]
        else:
            del msg["tool_calls"]
    if msg.get("content") == "" and msg.get("tool_calls"):
        del msg["content"]
    refusal = msg.pop("refusal", None)
    if isinstance(refusal, str) and refusal:
        if msg.get("content") not in (None, ""):
            raise UnsupportedValue(
                f"{where}.refusal", refusal, "a message carries either a refusal or content, not both"
            )
        msg["content"] = refusal
    elif refusal not in (None, ""):
        raise InvalidRequest(f"{where}.refusal: must be a string or null", param=f"{where}.refusal")
    return msg


def normalize_message(message: Any, index: int) -> Any:
    """One request message as the document wants it (see the module docstring); non-dicts pass."""
    if not isinstance(message, dict):
        return message
    where = f"messages[{index}]"
    if message.get("role") == "function":
        raise UnsupportedValue(
            f"{where}.role", "function", "the deprecated function role is not served; use role tool"
        )
    msg = _drop_nulls(message)
    if msg.get("role") == "assistant":
        msg = _normalize_assistant(msg, where)
    return msg


def normalize_messages(messages: Any) -> Any:
    """Every message normalised; anything but a list is left for the document to refuse."""
    if not isinstance(messages, list):
        return messages
    return [normalize_message(m, i) for i, m in enumerate(messages)]


def _check_hints(body: dict[str, Any]) -> None:
    """Parameters accepted without effect on the answer (not put on chain), or refused by value."""
    for name in sorted(_HINT_PARAMS):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{name}: must be a string", param=name)
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise InvalidRequest("store: must be a boolean", param="store")
    if store:
        raise UnsupportedValue("store", True, "completions are not stored for later retrieval")
    tier = body.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS_OK:
        raise UnsupportedValue("service_tier", tier, "the network has one tier; send 'auto' or 'default'")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise UnsupportedValue("modalities", modalities, "models here answer in text only; send ['text']")


def _check_unsupported(body: dict[str, Any]) -> None:
    for name, why in _UNSUPPORTED_CHAT_PARAMS.items():
        if body.get(name) is not None:
            raise UnsupportedParameter(name, why)
    _check_hints(body)


def _response_format(value: Any) -> Any:
    """`text` (OpenAI's default) is no format; anything else is left for the document to check."""
    if isinstance(value, dict) and value.get("type") == "text" and set(value) == {"type"}:
        return None
    return value


def _v2_params(body: dict[str, Any], params: dict[str, Any]) -> None:
    """Version-2 parameters into `params`, defaults dropped (see the module docstring)."""
    fmt = _response_format(body.get("response_format"))
    if fmt is not None:
        params["response_format"] = fmt
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest("parallel_tool_calls: must be a boolean", param="parallel_tool_calls")
    if parallel is False and body.get("tools"):
        params["parallel_tool_calls"] = False
    effort = body.get("reasoning_effort")
    if effort in _EFFORTS_UNSUPPORTED:
        raise UnsupportedValue("reasoning_effort", effort, "served reasoning models take low, medium or high")
    if effort is not None:
        params["reasoning_effort"] = effort


def _max_tokens(body: dict[str, Any], params: dict[str, Any]) -> None:
    """`max_completion_tokens` wins over the deprecated `max_tokens` when both are given (OpenAI)."""
    mct = body.get("max_completion_tokens")
    if mct is not None:
        params["max_tokens"] = mct


# --------------------------------------------------------------------------- documents


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
        private=_private(body),
        finality=_finality(body),
    )


def parse_chat_request(body: dict[str, Any]) -> ParsedRequest:
    """`POST /v1/chat/completions` body -> chat input document (400 with `param` on any problem)."""
    params_fields = frozenset(ChatParams.model_fields) - frozenset(V2_PARAMS)
    allowed = _TRANSPORT | _CHAT_ONLY | params_fields | frozenset(V2_PARAMS)
    _check_unknown(body, allowed | frozenset(_UNSUPPORTED_CHAT_PARAMS) | _HINT_PARAMS | _ACCEPTED_CHAT)
    _check_unsupported(body)
    if "messages" not in body:
        raise InvalidRequest(
            "you must provide a messages parameter", param="messages", code="missing_required_parameter"
        )
    params = {k: v for k, v in body.items() if k in params_fields and v is not None}
    _max_tokens(body, params)
    _v2_params(body, params)
    doc = {
        "v": CURRENT_VERSION,
        "type": "chat",
        "model": body.get("model"),
        "messages": normalize_messages(body["messages"]),
        "params": params,
    }
    try:
        return _build("chat", doc, body)
    except InvalidRequest as exc:
        if exc.param == "max_tokens" and body.get("max_completion_tokens") is not None:
            exc.param = "max_completion_tokens"
            exc.message = exc.message.replace("max_tokens", "max_completion_tokens", 1)
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
        "v": CURRENT_VERSION,
        "type": "completion",
        "model": body.get("model"),
        "prompt": body["prompt"],
        "params": params,
    }
    return _build("completion", doc, body)


__all__ = [
    "FINALITIES",
    "Finality",
    "Kind",
    "ParsedRequest",
    "normalize_message",
    "normalize_messages",
    "parse_chat_request",
    "parse_completion_request",
    "parse_json_body",
    "read_body",
]
