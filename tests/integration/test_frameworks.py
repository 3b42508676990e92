"""Frameworks built on the Chat Completions API, unchanged, against a devnet-like network with the
real engine (see `test_openai_sdk.open_devnet`): LangChain's `ChatOpenAI` and the OpenAI Agents SDK.

What each test proves:
* LangChain: `ChatOpenAI(base_url=..., api_key=...).bind_tools([...], tool_choice=...)` gets a
  parsed tool call; the loop (the `AIMessage` and a `ToolMessage` sent back) gets a text answer;
  streaming the same call through `astream` merges into the same tool call (same seed, same id);
  `.with_structured_output(PydanticModel)` (a strict json_schema) gives the model.
* Agents SDK: an `Agent` with one `function_tool`, on `OpenAIChatCompletionsModel` with an
  `AsyncOpenAI` client pointed at the gateway, runs the tool (forced on the first turn) and ends
  with a text answer. Tracing is off, so nothing dials a public address.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"  # before `agents` is imported
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"

from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from node.devnet.processes import Anvil, Mosquitto
from tests.integration.test_openai_sdk import MODEL, Devnet, open_devnet
from tests.integration.test_openai_workflows import ASK, City

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
async def net(
    anvil: Anvil,
    mosquitto: Mosquitto,
    anvil_keys: list[str],
    engine: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Devnet]:
    async with open_devnet(anvil, mosquitto, anvil_keys, engine, tmp_path_factory.mktemp("frameworks")) as n:
        yield n


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return json.dumps({"city": city, "celsius": 18})


def chat_model(net: Devnet) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL,
        base_url=net.server.url + "/v1",
        api_key=SecretStr(net.key),
        max_tokens=64,  # type: ignore[call-arg]
        seed=1,
        max_retries=0,
        timeout=120,
    )


async def test_langchain_tools_loop_stream_and_structured_output(net: Devnet) -> None:
    llm = chat_model(net)
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    question = HumanMessage(ASK)
    ai = await bound.ainvoke([question])
    assert isinstance(ai, AIMessage) and ai.tool_calls, ai
    assert ai.tool_calls[0]["name"] == "get_weather" and ai.tool_calls[0]["id"]

    results = [ToolMessage(json.dumps({"celsius": 18}), tool_call_id=call["id"]) for call in ai.tool_calls]
    history: list[BaseMessage] = [question, ai, *results]
    answer = await llm.ainvoke(history)  # the tool results back, no tools offered: a text answer
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls

    merged: Any = None
    async for chunk in bound.astream([question]):
        merged = chunk if merged is None else merged + chunk
    # the same call; its id derives from the input digest, which a private request (the default)
    # salts anew each time (node.engine.chat.tool_call_id)
    assert all(c["id"] for c in merged.tool_calls)
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        (c["name"], c["args"]) for c in ai.tool_calls
    ]

    city = await llm.with_structured_output(City).ainvoke("Describe the city of Paris.")
    assert isinstance(city, City)


async def test_agents_sdk_agent_with_a_function_tool(net: Devnet) -> None:
    set_tracing_disabled(True)
    asked: list[str] = []

    @function_tool
    def weather(city: str) -> str:
        """Get the current weather for a city."""
        asked.append(city)
        return f"18 degrees Celsius and sunny in {city}."

    client = openai.AsyncOpenAI(base_url=net.server.url + "/v1", api_key=net.key, max_retries=0, timeout=120)
    agent = Agent(
        name="weather",
        instructions="You answer questions about the weather. Use the tool, then answer in one sentence.",
        tools=[weather],
        model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
        model_settings=ModelSettings(tool_choice="weather", max_tokens=64),
    )
    result = await Runner.run(agent, ASK, max_turns=4)
    assert asked, result.new_items  # the forced first turn called the tool, which ran
    assert isinstance(result.final_output, str) and result.final_output
