"""OpenAI fidelity on the request side: what clients send back, JSON modes, v2 documents, errors.

Applications pass the SDK's own response objects back into `messages`; whichever way they do it
(the `ChatCompletionMessage` object, serialised by the SDK itself; its `model_dump()`; a plain
dict) the gateway must put the same input document, byte for byte, on chain. The requests go
through the stock `openai` SDK (strict response validation) to the gateway app over ASGI, with the
fake backend recording the documents; nothing here needs a chain or vLLM.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletion

from node.content.documents import (
    CURRENT_VERSION,
    AssistantOutput,
    ChatChoice,
    ChatInputDocument,
    FunctionCall,
    InputDocument,
    ToolCall,
    to_canonical_bytes,
)
from node.engine.params import MAX_SCHEMA_BOUND, ParamError, check_schema_bounds
from node.gateway.responses import chat_choice_json
from tests.unit.test_gateway_http import MODEL, Gateway, assert_envelope

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
USER: Any = {"role": "user", "content": "Weather in Paris?"}
CALL = ToolCall(id="call_abc", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
TOOL_RESULT = {"role": "tool", "tool_call_id": "call_abc", "content": "sunny, 21 C"}
MINIMAL_CALL_TURN = {
    "role": "assistant",
    "tool_calls": [
        {
            "id": "call_abc",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}


@pytest.fixture()
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    g = Gateway(tmp_path, request_timeout_s=2.0)
    async with g.app.router.lifespan_context(g.app):
        yield g
    await g.http.aclose()


def sdk_reply(message: AssistantOutput) -> ChatCompletion:
    """The SDK's parse of a gateway answer carrying `message` (as the gateway writes choices)."""
    body = {
        "id": "chatcmpl-inferd-31337-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [chat_choice_json(ChatChoice(index=0, message=message, finish_reason="tool_calls"))],
    }
    return ChatCompletion.model_validate(body)


async def sdk_document(gw: Gateway, messages: list[Any], **params: Any) -> bytes:
    """Send `messages` with the stock SDK; the bytes of the document the gateway put on chain."""
    before = len(gw.backend.submitted)
    await gw.sdk().chat.completions.create(model=MODEL, messages=messages, **params)
    assert len(gw.backend.submitted) == before + 1
    return to_canonical_bytes(gw.backend.submitted[-1])


async def http_document(gw: Gateway, body: dict[str, Any]) -> InputDocument:
    reply = await gw.http.post("/v1/chat/completions", json={"model": MODEL, **body})
    assert reply.status_code == 200, reply.text
    return gw.backend.submitted[-1]


# ------------------------------------------------------------------ echoed assistant turns


@pytest.mark.parametrize("reasoning", [None, "the user wants weather"])
async def test_a_tool_call_turn_gives_the_same_document_however_it_is_passed_back(
    gw: Gateway, reasoning: str | None
) -> None:
    message = (
        sdk_reply(AssistantOutput(content=None, tool_calls=[CALL], reasoning_content=reasoning))
        .choices[0]
        .message
    )
    forms: dict[str, Any] = {
        "sdk object": message,
        "model_dump": message.model_dump(),
        "model_dump json": message.model_dump(mode="json"),
        "exclude_none": message.model_dump(exclude_none=True),
        "json round trip": json.loads(message.model_dump_json()),
        "minimal dict": MINIMAL_CALL_TURN,
        "empty content": {**MINIMAL_CALL_TURN, "content": "", "refusal": None, "annotations": []},
    }
    docs = {
        name: await sdk_document(gw, [USER, form, TOOL_RESULT], tools=[WEATHER])
        for name, form in forms.items()
    }
    assert len(set(docs.values())) == 1, {k: v.decode() for k, v in docs.items()}
    doc = json.loads(docs["minimal dict"])
    assert doc["v"] == CURRENT_VERSION
    assert doc["messages"][1] == MINIMAL_CALL_TURN  # nothing of the response shape reached the chain


async def test_a_text_turn_gives_the_same_document_however_it_is_passed_back(gw: Gateway) -> None:
    message = sdk_reply(AssistantOutput(content="It is sunny.")).choices[0].message
    minimal = {"role": "assistant", "content": "It is sunny."}
    forms = [
        message,
        message.model_dump(),
        {
            **minimal,
            "tool_calls": [],
            "refusal": None,
            "annotations": [],
            "audio": None,
            "function_call": None,
        },
        {**minimal, "reasoning_content": "hmm", "reasoning": None, "name": None},
        minimal,
    ]
    docs = {await sdk_document(gw, [USER, form, {"role": "user", "content": "thanks"}]) for form in forms}
    assert len(docs) == 1


async def test_the_canonical_tool_loop_runs_two_rounds(gw: Gateway) -> None:
    client = gw.sdk()
    messages: list[Any] = [USER]
    for _ in range(2):
        reply = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
        messages.append(reply.choices[0].message)
        messages.append({"role": "user", "content": "and tomorrow?"})
    assert len(gw.backend.submitted) == 2
    last = gw.backend.submitted[-1]
    assert isinstance(last, ChatInputDocument) and len(last.messages) == 3


async def test_a_parsed_message_from_parse_is_accepted_back(gw: Gateway) -> None:
    class Weather(pydantic.BaseModel):
        city: str
        celsius: int

    gw.backend.responder = lambda doc, i: '{"city":"Paris","celsius":21}'
    client = gw.sdk()
    reply = await client.chat.completions.parse(model=MODEL, messages=[USER], response_format=Weather)
    message = reply.choices[0].message
    assert message.parsed == Weather(city="Paris", celsius=21)
    first = gw.backend.submitted[-1]
    assert first.v == CURRENT_VERSION and isinstance(first, ChatInputDocument)
    fmt = first.params.response_format
    assert fmt is not None and fmt.type == "json_schema" and fmt.json_schema.strict is True
    follow = {"role": "user", "content": "and in Fahrenheit?"}
    a = await sdk_document(gw, [USER, message, follow])
    b = await sdk_document(gw, [USER, {"role": "assistant", "content": message.content}, follow])
    assert a == b


async def test_a_refusal_without_content_is_the_turn_s_content(gw: Gateway) -> None:
    a = await http_document(
        gw, {"messages": [USER, {"role": "assistant", "content": None, "refusal": "I can't."}, USER]}
    )
    b = await http_document(gw, {"messages": [USER, {"role": "assistant", "content": "I can't."}, USER]})
    assert to_canonical_bytes(a) == to_canonical_bytes(b)


@pytest.mark.parametrize(
    ("message", "param", "code"),
    [
        (
            {"role": "assistant", "content": "x", "audio": {"id": "audio_1"}},
            "messages[1].audio",
            "unsupported_parameter",
        ),
        (
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
            "messages[1].function_call",
            "unsupported_parameter",
        ),
        ({"role": "function", "name": "f", "content": "1"}, "messages[1].role", "unsupported_value"),
        ({"role": "assistant", "content": "x", "refusal": "no"}, "messages[1].refusal", "unsupported_value"),
        ({"role": "assistant", "content": "x", "frobnicate": 1}, "messages[1].frobnicate", "invalid_value"),
        (
            {"role": "user", "content": "x", "refusal": None, "annotations": []},
            "messages[1].annotations",
            None,
        ),
    ],
)
async def test_what_cannot_be_honoured_in_a_message_is_refused(
    gw: Gateway, message: dict[str, Any], param: str, code: str | None
) -> None:
    reply = await gw.http.post("/v1/chat/completions", json={"model": MODEL, "messages": [USER, message]})
    assert_envelope(reply, 400, param=param, code=code)
    assert gw.backend.submitted == []


# ------------------------------------------------------------------ request parameters


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
        ({"functions": [WEATHER["function"]]}, "functions", "unsupported_parameter"),
        ({"function_call": "auto"}, "function_call", "unsupported_parameter"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction", "unsupported_parameter"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
        ({"metadata": {"a": "b"}}, "metadata", "unsupported_parameter"),
        ({"verbosity": "low"}, "verbosity", "unsupported_parameter"),
        ({"store": True}, "store", "unsupported_value"),
        ({"service_tier": "flex"}, "service_tier", "unsupported_value"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_value"),
        ({"reasoning_effort": "minimal"}, "reasoning_effort", "unsupported_value"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort", "invalid_value"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls", "invalid_value"),
        ({"response_format": {"type": "xml"}}, "response_format", "invalid_value"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "invalid_value"),
        (
            {"response_format": {"type": "json_object"}, "tools": [WEATHER]},
            "response_format",
            "invalid_value",
        ),
        ({"top_k": 5}, "top_k", "unknown_parameter"),
    ],
)
async def test_unsupported_parameters_get_openai_s_codes(
    gw: Gateway, extra: dict[str, Any], param: str, code: str
) -> None:
    reply = await gw.http.post("/v1/chat/completions", json={"model": MODEL, "messages": [USER], **extra})
    err = assert_envelope(reply, 400, param=param, code=code)
    assert err["type"] == "invalid_request_error"
    if code.startswith("unsupported"):
        assert f"'{param}'" in err["message"]
    assert gw.backend.submitted == []


async def test_the_sdk_raises_bad_request_naming_the_parameter(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await gw.sdk().chat.completions.create(model=MODEL, messages=[USER], store=True)
    assert info.value.code == "unsupported_value" and info.value.param == "store"


async def test_defaults_and_hints_do_not_change_the_document(gw: Gateway) -> None:
    plain = to_canonical_bytes(await http_document(gw, {"messages": [USER]}))
    same: list[dict[str, Any]] = [
        {"response_format": {"type": "text"}},
        {"parallel_tool_calls": True},
        {"parallel_tool_calls": False},  # without tools it has nothing to act on
        {"prompt_cache_key": "k", "safety_identifier": "s", "prompt_cache_retention": "24h"},
        {"store": False, "service_tier": "auto", "modalities": ["text"]},
        {"reasoning_effort": None, "response_format": None, "metadata": None},
    ]
    for extra in same:
        assert to_canonical_bytes(await http_document(gw, {"messages": [USER], **extra})) == plain, extra
    with_tools = to_canonical_bytes(await http_document(gw, {"messages": [USER], "tools": [WEATHER]}))
    assert with_tools == to_canonical_bytes(
        await http_document(gw, {"messages": [USER], "tools": [WEATHER], "parallel_tool_calls": True})
    )
    assert json.loads(plain)["v"] == CURRENT_VERSION  # defaults change neither the bytes nor the version


async def test_version_2_fields_reach_the_version_3_document(gw: Gateway) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"response_format": {"type": "json_object"}}, {"response_format": {"type": "json_object"}}),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": schema, "strict": True},
                }
            },
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": schema, "strict": True},
                }
            },
        ),
        (
            {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False},
            {"parallel_tool_calls": False},
        ),
        ({"reasoning_effort": "low"}, {"reasoning_effort": "low"}),
    ]
    for extra, expected in cases:
        doc = json.loads(to_canonical_bytes(await http_document(gw, {"messages": [USER], **extra})))
        assert doc["v"] == CURRENT_VERSION, extra  # version 3 carries every parameter
        for key, value in expected.items():
            assert doc["params"][key] == value


async def test_max_completion_tokens_wins_over_max_tokens(gw: Gateway) -> None:
    doc = await http_document(gw, {"messages": [USER], "max_tokens": 8, "max_completion_tokens": 16})
    assert doc.params.max_tokens == 16
    doc = await http_document(gw, {"messages": [USER], "max_completion_tokens": 5})
    assert doc.params.max_tokens == 5
    reply = await gw.http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [USER], "max_tokens": 4, "max_completion_tokens": 0},
    )
    err = assert_envelope(reply, 400, param="max_completion_tokens")
    assert "max_completion_tokens" in err["message"]


# ------------------------------------------------------------------ schema bounds in the engine


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "maxLength": MAX_SCHEMA_BOUND + 1},
        {"type": "array", "minItems": 10**9},
        {"type": "string", "pattern": "^(a{100}){100}$"},
        {"type": "object", "properties": {"x": {"type": "string", "pattern": "[0-9]{5000}"}}},
    ],
)
def test_hostile_response_format_schemas_are_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(ParamError) as info:
        check_schema_bounds(schema, "the response_format schema", "response_format")
    assert info.value.code == "invalid_request" and info.value.param == "response_format"
    assert info.value.message.startswith("response_format: the response_format schema has")


def test_bounded_schemas_pass() -> None:
    check_schema_bounds(
        {"type": "string", "pattern": "^[a-z]{1,64}@[a-z]{2,8}$", "maxLength": 200}, "s", "response_format"
    )
