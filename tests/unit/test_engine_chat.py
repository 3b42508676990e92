"""Chat rendering, forced tool calls, tool-call ids and engine helpers, without the engine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from node.config import EngineSettings
from node.content.documents import ChatInputDocument, NamedToolChoice, Tool
from node.engine import chat
from node.engine.bench_prompts import bench_prompts
from node.engine.engine_args import effective_dtype
from node.engine.model_fetch import MANIFEST, WEIGHTS_SHA256, verify_model_dir

SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOLS_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "CALL {{ c.function.name }} {{ c.function.arguments | tojson }}"
    "{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
DATE_TEMPLATE = (
    "{{ strftime_now('%Y-%m-%d') }}|{{ date_string }}|{% for m in messages %}{{ m.content }}{% endfor %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def doc(messages: list[dict[str, object]], **params: object) -> ChatInputDocument:
    return ChatInputDocument.model_validate({"model": "m", "messages": messages, "params": params})


def test_smollm_template_renders_the_conversation() -> None:
    text = chat.render_chat(doc([{"role": "user", "content": "Hi"}]), SMOL_TEMPLATE)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert "SmolLM" in text


def test_tools_join_the_system_prompt_when_the_template_has_no_tools() -> None:
    d = doc(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}], tools=[WEATHER]
    )
    text = chat.render_chat(d, SMOL_TEMPLATE)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '"name": "get_weather"' in text and "<tool_call>" in text


def test_tool_choice_none_renders_no_tools() -> None:
    d = doc([{"role": "user", "content": "Weather?"}], tools=[WEATHER], tool_choice="none")
    assert "# Tools" not in chat.render_chat(d, SMOL_TEMPLATE)


def test_history_tool_calls_and_results_render_as_hermes_text() -> None:
    d = doc(
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        tools=[WEATHER],
    )
    text = chat.render_chat(d, SMOL_TEMPLATE)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>" in text


def test_a_template_with_tools_gets_them_natively() -> None:
    d = doc(
        [
            {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": "ok",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "X"}'},
                    }
                ],
            },
        ],
        tools=[WEATHER],
    )
    text = chat.render_chat(d, TOOLS_TEMPLATE)
    # trim_blocks eats the newline after each block tag, as transformers' environment does
    assert text == 'TOOLS:get_weather;[system]ab[assistant]okCALL get_weather {"city": "X"}[assistant]'


def test_the_prompt_never_sees_the_clock() -> None:
    text = chat.render_chat(doc([{"role": "user", "content": "x"}]), DATE_TEMPLATE)
    assert text == "2025-01-01|01 Jan 2025|x"


def test_malformed_or_unknown_forced_calls_stay_text() -> None:
    # Free-form tool calls are parsed by vLLM's parsers (tests/unit/test_tool_parsers.py); the forced
    # JSON object is ours, and anything but a call to an offered tool is the text itself.
    for text in (
        "{not json}",
        '{"name": "other", "arguments": {}}',
        '{"name": "get_weather", "arguments": [1]}',
        "[" * 100_000,
    ):
        parsed = chat.parse_forced_call(text, {"get_weather"})
        assert parsed.content == text and parsed.tool_calls == []
    wrapped = chat.parse_forced_call(
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}', {"get_weather"}
    )
    assert wrapped.tool_calls == [("get_weather", '{"city": "Oslo"}')]


def test_forced_call_schema_and_parse() -> None:
    tools = [
        Tool.model_validate(WEATHER),
        Tool.model_validate({"type": "function", "function": {"name": "noop"}}),
    ]
    named = chat.forced_call_schema(
        tools, NamedToolChoice.model_validate({"type": "function", "function": {"name": "noop"}})
    )
    assert named["properties"]["name"]["enum"] == ["noop"]
    assert named["properties"]["arguments"] == {"type": "object"}
    required = chat.forced_call_schema(tools, "required")
    assert len(required["anyOf"]) == 2
    parsed = chat.parse_forced_call('{"name": "get_weather", "arguments": {"city": "Oslo"}}', {"get_weather"})
    assert parsed.content is None and parsed.tool_calls == [("get_weather", '{"city": "Oslo"}')]


def test_tool_call_ids_are_deterministic() -> None:
    digest = hashlib.sha256(b"input").digest()
    assert chat.tool_call_id(digest, 0, 0) == chat.tool_call_id(digest, 0, 0)
    assert chat.tool_call_id(digest, 0, 0) != chat.tool_call_id(digest, 0, 1)
    assert chat.tool_call_id(digest, 1, 0).startswith("call_") and len(chat.tool_call_id(digest, 1, 0)) == 29
    calls = chat.make_tool_calls(chat.ParsedOutput(content=None, tool_calls=[("f", "{}")]), digest, 2)
    assert calls is not None and calls[0].id == chat.tool_call_id(digest, 2, 0)


def test_effective_dtype() -> None:
    assert effective_dtype(EngineSettings(), on_cpu=True) == "float32"
    assert effective_dtype(EngineSettings(), on_cpu=False) == "bfloat16"
    assert effective_dtype(EngineSettings(dtype="bfloat16"), on_cpu=True) == "bfloat16"


def test_verify_model_dir_rejects_wrong_weights(tmp_path: Path) -> None:
    assert verify_model_dir(tmp_path) is not None
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    (tmp_path / MANIFEST).write_text(json.dumps({"files": {"model.safetensors": WEIGHTS_SHA256}}))
    problem = verify_model_dir(tmp_path)
    assert problem is not None and "sha256" in problem


def test_bench_prompts_are_fixed() -> None:
    prompts = bench_prompts()
    assert len(prompts) == 256 and len(set(prompts)) == 256
    assert prompts == bench_prompts()
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    assert digest == hashlib.sha256("\n".join(bench_prompts()).encode()).hexdigest()


def test_nesting_depths_bound_any_parse_and_deep_text_is_never_parsed() -> None:
    assert chat.nesting_depths("") == (0, 0)
    assert chat.nesting_depths('{"a": [1, {"b": (2)}]}') == (4, 0)
    assert chat.nesting_depths("]]]][[") == (2, 2)  # a parse may start after the stray closers
    assert chat.nesting_depths("}", 5) == (5, 4)
    deep = "[" * 100_000
    assert chat.too_deep(deep) and not chat.too_deep("[" * chat.MAX_NESTING)
    # json.loads on these would overflow the C stack where the recursion limit is raised (torch and
    # py_ecc raise it): the guard answers first, with the text itself.
    assert chat.parse_forced_call(deep, {"get_weather"}).content == deep
    assert chat._arguments_value(deep) == deep
