"""OpenAI fidelity in the engine, without vLLM: what v2 documents hand to vLLM and how outputs are read.

A scripted AsyncLLM stand-in (from `test_tool_parsers`) records the `SamplingParams` the engine
builds and replays a fixed model output, so `response_format`, `parallel_tool_calls` and
`reasoning_effort` are checked on the engine's real code path in a second; the real-engine tests
(`tests/integration/test_engine.py`) check what SmolLM2 then generates.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from node.content.cid import cid_for_bytes
from node.content.documents import ChatInputDocument, OutputDocument, canonical_json
from node.engine.engine import Engine
from tests.unit.test_tool_parsers import (
    MODEL_DIR,
    RECORDED,
    TOOLS,
    ScriptedLLM,
    reassemble,
    smol_tokenizer,
)

__all__ = ["smol_tokenizer"]  # the fixture, imported for pytest

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "tokenizer.json").is_file(), reason="the default model is not fetched"
)

PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


async def run_v2(llm: ScriptedLLM, v: int = 2, **params: Any) -> tuple[list[dict[str, Any]], OutputDocument]:
    engine = Engine(llm, model_name="m", model_path=str(MODEL_DIR), system_fingerprint="fp")
    doc = {
        "v": v,
        "type": "chat",
        "model": "m",
        "messages": [{"role": "user", "content": "Weather in Paris for 3 days?"}],
        "params": params,
    }
    cid = cid_for_bytes(canonical_json(doc))
    deltas: list[dict[str, Any]] = []
    final: OutputDocument | None = None
    try:
        async for item in engine.stream(doc, request_id=1, input_cid=cid, created=1):
            if isinstance(item, OutputDocument):
                final = item
            else:
                deltas.append(item["delta"])
    finally:
        engine.shutdown()
    assert final is not None
    return deltas, final


def tools() -> list[dict[str, Any]]:
    return [t.model_dump(mode="json") for t in TOOLS]


async def test_parallel_tool_calls_false_keeps_the_first_call_and_deltas_add_up(smol_tokenizer: Any) -> None:
    text = RECORDED["hermes"][0]  # two calls: get_weather, then get_time
    deltas, final = await run_v2(ScriptedLLM(smol_tokenizer, text), tools=tools(), parallel_tool_calls=False)
    assert final.error is None, final.error
    (choice,) = final.choices
    message = choice.message  # type: ignore[union-attr]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in message.tool_calls or []] == ["get_weather"]
    content, calls, ids = reassemble(deltas)
    assert content == message.content
    assert calls == [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert ids == [c.id for c in message.tool_calls or []]
    _, both = await run_v2(ScriptedLLM(smol_tokenizer, text), v=1, tools=tools())
    assert len(both.choices[0].message.tool_calls or []) == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("fmt", "json_schema", "json_object"),
    [
        ({"type": "json_object"}, None, True),
        (
            {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}},
            PERSON,
            None,
        ),
        ({"type": "json_schema", "json_schema": {"name": "p"}}, None, True),  # no schema: any object
    ],
)
async def test_response_format_becomes_structured_outputs(
    smol_tokenizer: Any, fmt: dict[str, Any], json_schema: Any, json_object: Any
) -> None:
    llm = ScriptedLLM(smol_tokenizer, '{"name":"Ada"}')
    deltas, final = await run_v2(llm, response_format=fmt)
    assert final.error is None, final.error
    structured = llm.sampling.structured_outputs
    assert structured.json == json_schema and structured.json_object == json_object
    assert json.loads(final.choices[0].message.content or "") == {"name": "Ada"}  # type: ignore[union-attr]
    assert "".join(d.get("content") or "" for d in deltas) == '{"name":"Ada"}'  # streamed live as text


async def test_a_forced_call_s_grammar_wins_over_response_format(smol_tokenizer: Any) -> None:
    llm = ScriptedLLM(smol_tokenizer, '{"name": "get_time", "arguments": {}}')
    _, final = await run_v2(
        llm,
        tools=tools(),
        tool_choice="required",
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
    )
    assert final.error is None, final.error
    assert "anyOf" in llm.sampling.structured_outputs.json  # one call to any tool, never two
    assert [c.function.name for c in final.choices[0].message.tool_calls or []] == ["get_time"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("params", "code", "param"),
    [
        ({"reasoning_effort": "high"}, "unsupported_parameter", "reasoning_effort"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "p", "schema": {"maxLength": 10**6}},
                }
            },
            "invalid_request",
            "response_format",
        ),
    ],
)
async def test_unhonourable_v2_params_are_error_documents(
    smol_tokenizer: Any, params: dict[str, Any], code: str, param: str
) -> None:
    llm = ScriptedLLM(smol_tokenizer, "x")
    _, final = await run_v2(llm, **params)
    assert llm.sampling is None  # refused before anything reached vLLM
    assert final.error is not None and final.error.code == code
    assert final.error.message.startswith(f"{param}: ") and final.object == "chat.completion"


def test_harmony_renders_reasoning_effort() -> None:
    from node.engine.harmony import HarmonyFormat, HarmonyVocabError

    try:
        fmt = HarmonyFormat.load()
    except HarmonyVocabError as exc:  # test_engine_harmony installs it when the registry is reachable
        pytest.skip(f"o200k_base vocabulary unavailable: {exc}")
    base = {"v": 2, "type": "chat", "model": "gpt-oss", "messages": [{"role": "user", "content": "hi"}]}
    rendered = {}
    for effort in ("low", "high"):
        doc = ChatInputDocument.model_validate({**base, "params": {"reasoning_effort": effort}})
        rendered[effort] = fmt._enc.decode_utf8(fmt.render(doc))
        assert f"Reasoning: {effort}" in rendered[effort]
    plain = ChatInputDocument.model_validate({**base, "v": 1})
    assert "Reasoning: medium" in fmt._enc.decode_utf8(fmt.render(plain))  # harmony's default
