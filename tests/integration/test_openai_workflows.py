"""Everyday application code with the stock `openai` SDK (strict response validation) against a
devnet-like network with the real engine (see `test_openai_sdk.open_devnet`).

What each test proves:
* the tool loop: the SDK's own message object is appended to `messages` in one round and its
  `model_dump()` in the next; both are accepted, and they make the same input document (same CID)
  as each other; a last call answers with text. SmolLM2-135M rarely calls tools on its own, so the
  rounds force a call (`tool_choice="required"`, then a named tool).
* JSON mode: `response_format={"type": "json_object"}` gives content that `json.loads` parses.
* structured outputs: `client.chat.completions.parse(response_format=PydanticModel)` (a strict
  `json_schema`) gives a parsed model that validates against the schema.
* streaming with tools: the calls reassembled from `delta.tool_calls` (concatenating `arguments`
  per index, as every client does) equal the non-streamed answer's for the same seed, and the
  stream ends with `finish_reason` like the non-streamed one.
* `parallel_tool_calls=False`: the input document carries it and the answer has one call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx2
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from pydantic import BaseModel, Field

from node.devnet.processes import Anvil, Mosquitto
from tests.integration.test_openai_sdk import MODEL, TOOLS, Devnet, open_devnet

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = "What is the weather in Paris?"


class City(BaseModel):
    """What `parse()` turns into a strict json_schema response_format."""

    name: str = Field(max_length=32)
    country: str = Field(max_length=32)
    continent: Literal["Africa", "Americas", "Asia", "Europe", "Oceania"]


@pytest.fixture(scope="module")
async def net(
    anvil: Anvil,
    mosquitto: Mosquitto,
    anvil_keys: list[str],
    engine: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Devnet]:
    async with open_devnet(anvil, mosquitto, anvil_keys, engine, tmp_path_factory.mktemp("workflows")) as n:
        yield n


def strict(reply: ChatCompletion) -> ChatCompletion:
    """The reply, after checking it also passes the SDK's types in strict mode."""
    ChatCompletion.model_validate(reply.model_dump(), strict=True)
    return reply


def tool_result(call: Any) -> ChatCompletionMessageParam:
    city = json.loads(call.function.arguments).get("city", "Paris")
    return {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": city, "celsius": 18})}


def cid(reply: ChatCompletion) -> str:
    return str((reply.model_extra or {})["onchain_data"]["input_cid"])


async def test_tool_loop_two_rounds_with_sdk_messages(net: Devnet) -> None:
    client = net.client()
    # public: both encodings below must normalise into the same document, i.e. the same input CID
    # (a private document's fresh salt would make every CID unique)
    ask: dict[str, Any] = {
        "model": MODEL, "tools": [*TOOLS, TIME_TOOL], "max_tokens": 64, "seed": 1,
        "extra_body": {"private": False},
    }  # fmt: skip
    messages: list[Any] = [{"role": "user", "content": ASK}]
    first = strict(await client.chat.completions.create(messages=messages, tool_choice="required", **ask))
    message = first.choices[0].message
    assert message.tool_calls, first
    messages.append(message)  # round 1: the SDK's message object itself
    messages += [tool_result(call) for call in message.tool_calls]

    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    as_object, as_dump = await asyncio.gather(
        client.chat.completions.create(messages=messages, tool_choice=named, **ask),
        client.chat.completions.create(
            messages=[m.model_dump() if isinstance(m, BaseModel) else m for m in messages],  # type: ignore[misc]
            tool_choice=named,
            **ask,
        ),
    )
    assert cid(strict(as_object)) == cid(strict(as_dump))  # normalised into the same document
    second = as_dump.choices[0].message
    assert second.tool_calls and second.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    messages.append(second.model_dump())  # round 2: its model_dump()
    messages += [tool_result(call) for call in second.tool_calls]

    last = strict(await client.chat.completions.create(messages=messages, tool_choice="none", **ask))
    assert last.choices[0].message.content and not last.choices[0].message.tool_calls


async def test_json_object_mode_parses(net: Devnet) -> None:
    reply = strict(
        await net.client().chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": 'Give the capital of France as {"capital": ...}.'},
            ],
            response_format={"type": "json_object"},
            max_tokens=96,
            seed=3,
        )
    )
    assert reply.choices[0].finish_reason == "stop", reply
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


async def test_json_schema_parse_with_pydantic_model(net: Devnet) -> None:
    completion = await net.client().chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe the city of Paris."}],
        response_format=City,
        max_tokens=96,
        seed=4,
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, City), completion
    body = json.loads(message.content or "")
    assert set(body) == set(City.model_json_schema()["properties"])  # strict: no other keys
    assert City.model_validate(body, strict=True) == message.parsed


async def test_streamed_tool_call_equals_nonstreamed(net: Devnet) -> None:
    client = net.client()
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": ASK}],
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 64,
        "seed": 5,
    }
    stream = await client.chat.completions.create(stream=True, **ask)
    chunks: list[ChatCompletionChunk] = [c async for c in stream]
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.model_dump(), strict=True)
        for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            call["name"] += (piece.function.name or "") if piece.function else ""
            call["arguments"] += (piece.function.arguments or "") if piece.function else ""
    whole = strict(await client.chat.completions.create(**ask))
    expected = [
        {"name": c.function.name, "arguments": c.function.arguments}  # type: ignore[union-attr]
        for c in whole.choices[0].message.tool_calls or []
    ]
    # ids derive from the input digest (node.engine.chat.tool_call_id): private by default, each
    # request's document has its own salt, so each answer has its own ids
    assert all(call.pop("id").startswith("call_") for call in calls.values())
    assert expected and [calls[i] for i in sorted(calls)] == expected
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert not chunks[-1].choices[0].delta.tool_calls  # the final chunk repeats nothing
    # private by default: each document has its own salt, so the same ask is not linkable on chain
    final = (chunks[-1].model_extra or {})["onchain_data"]
    assert final["output_salt"] and cid(whole) != final["input_cid"]
    assert 'reason="bad_tool_calls"' not in await net.metrics()  # the miner's fragments were well-formed


async def test_parallel_tool_calls_false_is_honoured(net: Devnet) -> None:
    reply = strict(
        await net.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What are the weather and the time in Paris and Rome?"}],
            tools=[*TOOLS, TIME_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=96,
            seed=6,
            extra_body={"private": False},  # public: its input document is read back by CID below
        )
    )
    assert len(reply.choices[0].message.tool_calls or []) == 1, reply
    async with httpx2.AsyncClient(base_url=net.server.url) as http:
        document = (await http.get(f"/ipfs/{cid(reply)}?format=raw")).json()
    assert document["params"]["parallel_tool_calls"] is False
