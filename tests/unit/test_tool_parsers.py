"""vLLM's tool parsers behind node.engine.tool_parsers, on recorded model outputs, without the engine.

Each family's text is what such a model writes for "weather in Paris for 3 days"; the parse must give
the offered tool's name, its arguments as a JSON object, and our deterministic ids (never vLLM's
random ones). Streaming feeds the same texts token by token, as the engine does, and the deltas must
add up to the non-streamed parse. Hostile outputs must become plain content, never an exception.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from typing import Any

import pytest

from node.content.documents import Tool
from node.engine import chat
from node.engine.model_fetch import default_model_dir
from node.engine.tool_parsers import AUTO, ToolCallParser, ToolParserError, auto_parser_name

MODEL_DIR = default_model_dir()
pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "tokenizer.json").is_file(), reason="the default model is not fetched"
)

TOOLS = [
    Tool.model_validate(
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city"],
                },
            },
        }
    ),
    Tool.model_validate({"type": "function", "function": {"name": "get_time"}}),
]
WEATHER = {"city": "Paris", "days": 3}
DIGEST = hashlib.sha256(b"input").digest()
EXTRA_TOKENS = ["[TOOL_CALLS]", "[ARGS]", "<|python_tag|>"]  # what Mistral / Llama 3 vocabularies have

RECORDED: dict[str, tuple[str, str | None, list[tuple[str, dict[str, Any]]]]] = {
    # parser: (raw model output, expected content, expected calls)
    "hermes": (
        'Let me check the weather.\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris", "days": 3}}\n</tool_call>\n<tool_call>\n{"name": "get_time", '
        '"arguments": {}}\n</tool_call>',
        "Let me check the weather.\n",
        [("get_weather", WEATHER), ("get_time", {})],
    ),
    "llama3_json": (
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}',
        None,
        [("get_weather", WEATHER)],
    ),
    "mistral": (
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}[TOOL_CALLS]get_time[ARGS]{}',
        None,
        [("get_weather", WEATHER), ("get_time", {})],
    ),
    "qwen3_coder": (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
        None,
        [("get_weather", WEATHER)],
    ),
    "qwen3_xml": (
        "<tool_call>\n<function=get_time>\n</function>\n</tool_call>",
        None,
        [("get_time", {})],
    ),
    "pythonic": (
        '[get_weather(city="Paris", days=3), get_time()]',
        None,
        [("get_weather", WEATHER), ("get_time", {})],
    ),
    "granite4": (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}</tool_call>',
        None,
        [("get_weather", WEATHER)],
    ),
    "glm47": (
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
        "<arg_key>days</arg_key><arg_value>3</arg_value></tool_call>",
        None,
        [("get_weather", WEATHER)],
    ),
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    tok.add_special_tokens({"additional_special_tokens": EXTRA_TOKENS})
    return tok


@pytest.fixture(scope="module")
def smol_tokenizer() -> Any:
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(str(MODEL_DIR))  # what the engine's AsyncLLM hands out


def load(name: str, tokenizer: Any) -> ToolCallParser:
    return ToolCallParser.load(name, None, tokenizer)


def calls_of(parsed: chat.ParsedOutput) -> list[tuple[str, dict[str, Any]]]:
    return [(name, json.loads(args)) for name, args in parsed.tool_calls]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_each_family_parses_its_recorded_output(name: str, tokenizer: Any) -> None:
    text, content, expected = RECORDED[name]
    parsed = load(name, tokenizer).parse(text, TOOLS)
    assert parsed.content == content
    assert calls_of(parsed) == expected
    calls = chat.make_tool_calls(parsed, DIGEST, 1)
    assert calls is not None
    assert [c.id for c in calls] == [chat.tool_call_id(DIGEST, 1, i) for i in range(len(expected))]
    assert parsed == load(name, tokenizer).parse(text, TOOLS)  # same text, same answer


@pytest.mark.parametrize("name", ["hermes", "llama3_json", "mistral", "qwen3_coder", "pythonic", "glm47"])
def test_hostile_outputs_are_plain_content(name: str, tokenizer: Any) -> None:
    parser = load(name, tokenizer)
    hostile = [
        "no tool here, just words",
        '<tool_call>{"name": "get_weather", "arguments": {"city": ',
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "get_weather", "arguments": [1, 2]}</tool_call>',
        "<tool_call>" + "[" * 100_000 + "</tool_call>",
        '[TOOL_CALLS]rm_rf[ARGS]{"x": 1}',
        "[os.system('x')]",
        "<tool_call>\n<function=rm_rf>\n</function>\n</tool_call>",
        "\x00\ud7ff<|python_tag|>{" * 50,
    ]
    for text in hostile:
        parsed = parser.parse(text, TOOLS)
        assert parsed.content == text and parsed.tool_calls == [], (name, text[:60])


def test_unknown_parser_is_refused_and_auto_reads_the_template(smol_tokenizer: Any) -> None:
    with pytest.raises(ToolParserError, match="unknown tool parser"):
        ToolCallParser.load("nope", None, smol_tokenizer)
    with pytest.raises(ToolParserError, match="does not fit"):
        ToolCallParser.load("mistral", None, smol_tokenizer)  # no [TOOL_CALLS] in SmolLM2's vocabulary
    assert auto_parser_name(None) == "hermes"
    assert auto_parser_name("{{ '[TOOL_CALLS]' }}") == "mistral"
    assert auto_parser_name("<tool_call>\n<function=x>\n<parameter=y>") == "qwen3_coder"
    assert auto_parser_name("{{ '<|python_tag|>' }}") == "llama3_json"
    assert ToolCallParser.load(AUTO, "{{ '[TOOL_CALLS]' }}", smol_tokenizer).name == "hermes"  # falls back
    smol = ToolCallParser.load(AUTO, (MODEL_DIR / "tokenizer_config.json").read_text(), smol_tokenizer)
    assert smol.name == "hermes" and smol.skip_special_tokens is False


def reassemble(deltas: list[dict[str, Any]]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Content, (name, arguments) calls and ids as an OpenAI client would rebuild them from deltas."""
    content: str | None = None
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        if delta.get("content") is not None:
            content = (content or "") + delta["content"]
        for entry in delta.get("tool_calls", []):
            call = calls.setdefault(entry["index"], {"id": "", "name": "", "arguments": ""})
            if "id" in entry:
                assert not call["id"] and entry["type"] == "function"
                call["id"], call["name"] = entry["id"], entry["function"]["name"]
            call["arguments"] += entry["function"].get("arguments", "")
    ordered = [calls[i] for i in sorted(calls)]
    return content, [(c["name"], c["arguments"]) for c in ordered], [c["id"] for c in ordered]


def stream_deltas(parser: ToolCallParser, tokenizer: Any, text: str) -> tuple[list[dict[str, Any]], int]:
    """Deltas for `text` fed token by token (cumulative text and ids, as vLLM reports them)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    stream = parser.stream(TOOLS, partial(chat.tool_call_id, DIGEST, 0))
    deltas: list[dict[str, Any]] = []
    for k in range(1, len(ids) + 1):
        delta = stream.feed(tokenizer.decode(ids[:k], skip_special_tokens=False), ids[:k])
        if delta:
            deltas.append(delta)
    live = len(deltas)
    final = parser.parse(text, TOOLS)
    last = stream.finish(final.content, final.tool_calls)
    if last:
        deltas.append(last)
    return deltas, live


def test_streamed_smollm2_hermes_deltas_add_up_to_the_parse(smol_tokenizer: Any) -> None:
    parser = ToolCallParser.load(AUTO, None, smol_tokenizer)
    text = RECORDED["hermes"][0]
    deltas, live = stream_deltas(parser, smol_tokenizer, text)
    final = parser.parse(text, TOOLS)
    content, calls, ids = reassemble(deltas)
    assert (content, calls) == (final.content, final.tool_calls)
    assert ids == [chat.tool_call_id(DIGEST, 0, i) for i in range(2)]
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:])
    heads = [e for d in deltas for e in d.get("tool_calls", []) if "id" in e]
    assert [h["function"]["name"] for h in heads] == ["get_weather", "get_time"]
    fragments = [e for d in deltas[:live] for e in d.get("tool_calls", []) if "id" not in e]
    assert len(fragments) > 3  # arguments really arrive in pieces while generating


@pytest.mark.parametrize("name", ["hermes", "llama3_json", "mistral", "qwen3_coder", "pythonic", "granite4"])
def test_streamed_deltas_add_up_for_each_family(name: str, tokenizer: Any) -> None:
    parser = load(name, tokenizer)
    text = RECORDED[name][0]
    deltas, _ = stream_deltas(parser, tokenizer, text)
    final = parser.parse(text, TOOLS)
    content, calls, ids = reassemble(deltas)
    assert (content, calls) == (final.content, final.tool_calls)
    assert ids == [chat.tool_call_id(DIGEST, 0, i) for i in range(len(calls))]


def test_streaming_plain_text_and_malformed_calls(smol_tokenizer: Any) -> None:
    parser = ToolCallParser.load(AUTO, None, smol_tokenizer)
    deltas, _ = stream_deltas(parser, smol_tokenizer, "The weather in Paris is sunny.")
    assert reassemble(deltas) == ("The weather in Paris is sunny.", [], [])
    assert deltas[0]["role"] == "assistant"
    # An unknown tool is never previewed; the text stays the answer and the deltas still add up.
    text = 'Sure.\n<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    deltas, _ = stream_deltas(parser, smol_tokenizer, text)
    assert reassemble(deltas) == (text, [], [])


def test_a_long_call_is_fed_in_growing_steps_and_still_adds_up(smol_tokenizer: Any) -> None:
    parser = ToolCallParser.load(AUTO, None, smol_tokenizer)
    city = "Paris " * 3000
    text = f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}\n</tool_call>'
    deltas, live = stream_deltas(parser, smol_tokenizer, text)
    tokens = len(smol_tokenizer.encode(text, add_special_tokens=False))
    assert live < tokens // 5  # the rescanning parser ran a few hundred times, not once per token
    final = parser.parse(text, TOOLS)
    assert reassemble(deltas)[1] == final.tool_calls == [("get_weather", json.dumps({"city": city}))]


def test_parser_failures_are_not_logged_as_errors(smol_tokenizer: Any) -> None:
    import logging

    parser = ToolCallParser.load("hermes", None, smol_tokenizer)
    assert logging.getLogger("vllm.tool_parsers.hermes_tool_parser").getEffectiveLevel() == logging.CRITICAL
    assert parser.parse("<tool_call>{oops</tool_call>", TOOLS).tool_calls == []


@pytest.mark.parametrize("name", ["hermes", "llama3_json", "pythonic", "qwen3_coder"])
def test_deep_nesting_never_reaches_a_parser_even_with_a_raised_recursion_limit(
    name: str, tokenizer: Any
) -> None:
    import sys

    parser = load(name, tokenizer)
    deep = '<tool_call>{"name": "get_weather", "arguments": ' + "[" * 200_000
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10**6)  # as torch / py_ecc leave it in the miner: json.loads would SIGSEGV
    try:
        assert parser.parse(deep, TOOLS) == chat.ParsedOutput(content=deep)
        stream = parser.stream(TOOLS, partial(chat.tool_call_id, DIGEST, 0))
        stream.feed(deep[:40], [])
        assert stream.feed(deep, []) is None and stream.stopped  # the preview stops before parsing
    finally:
        sys.setrecursionlimit(limit)


# --------------------------------------------------------------------------- through Engine.stream


class ScriptedLLM:
    """An AsyncLLM stand-in that 'generates' a fixed text one token per step (cumulative outputs)."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        from types import SimpleNamespace

        self.tokenizer = tokenizer
        self.ids = tokenizer.encode(text, add_special_tokens=False)
        self.model_config = SimpleNamespace(max_model_len=2048, get_vocab_size=lambda: len(tokenizer))
        self.errored = False
        self.sampling: Any = None

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def shutdown(self) -> None:
        pass

    async def generate(self, prompt: Any, sampling: Any, request_id: str) -> Any:
        from types import SimpleNamespace

        self.sampling = sampling
        for k in range(1, len(self.ids) + 1):
            done = k == len(self.ids)
            out = SimpleNamespace(
                index=0,
                text=self.tokenizer.decode(self.ids[:k], skip_special_tokens=sampling.skip_special_tokens),
                token_ids=self.ids[:k],
                finish_reason="stop" if done else None,
                logprobs=None,
                cumulative_logprob=None,
            )
            yield SimpleNamespace(outputs=[out], prompt_logprobs=None)


async def run_stream(llm: ScriptedLLM, **params: Any) -> tuple[list[dict[str, Any]], Any]:
    from node.content.cid import cid_for_bytes
    from node.content.documents import OutputDocument, canonical_json
    from node.engine.engine import Engine

    engine = Engine(llm, model_name="m", model_path=str(MODEL_DIR), system_fingerprint="fp")
    doc = {
        "v": 1,
        "type": "chat",
        "model": "m",
        "messages": [{"role": "user", "content": "Weather in Paris for 3 days?"}],
        "params": {"tools": [t.model_dump(mode="json") for t in TOOLS], **params},
    }
    cid = cid_for_bytes(canonical_json(doc))
    deltas: list[dict[str, Any]] = []
    final = None
    try:
        async for item in engine.stream(doc, request_id=1, input_cid=cid, created=1):
            if isinstance(item, OutputDocument):
                final = item
            else:
                assert item["choice"] == 0
                deltas.append(item["delta"])
    finally:
        engine.shutdown()
    assert final is not None and final.error is None, final
    return deltas, final


async def test_engine_streams_tool_call_deltas_that_add_up_to_the_document(smol_tokenizer: Any) -> None:
    llm = ScriptedLLM(smol_tokenizer, RECORDED["hermes"][0])
    deltas, final = await run_stream(llm, max_tokens=200)
    assert llm.sampling.skip_special_tokens is False  # what vLLM's hermes parser asks for
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    message = choice.message
    assert message.content == "Let me check the weather.\n"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", WEATHER),
        ("get_time", {}),
    ]
    content, calls, ids = reassemble(deltas)
    assert content == message.content
    assert calls == [(c.function.name, c.function.arguments) for c in message.tool_calls]
    assert ids == [c.id for c in message.tool_calls]
    assert len(deltas) > 10 and deltas[0]["role"] == "assistant"
    # The same input twice: the same document bytes (ids are hashes, not vLLM's random ones).
    _, again = await run_stream(ScriptedLLM(smol_tokenizer, RECORDED["hermes"][0]), max_tokens=200)
    assert again == final


async def test_engine_tool_mode_plain_answer_streams_as_content(smol_tokenizer: Any) -> None:
    text = "It is sunny in Paris."
    deltas, final = await run_stream(ScriptedLLM(smol_tokenizer, text), max_tokens=50)
    assert reassemble(deltas) == (text, [], [])
    assert final.choices[0].message.content == text and final.choices[0].finish_reason == "stop"


def test_the_setting_is_a_plain_parser_name() -> None:
    from pydantic import ValidationError

    from node.config import EngineSettings

    assert EngineSettings().tool_parser == AUTO
    assert EngineSettings(tool_parser="qwen3_coder").tool_parser == "qwen3_coder"
    for bad in ("", "a b", "../x", "x" * 65):
        with pytest.raises(ValidationError):
            EngineSettings(tool_parser=bad)


def test_no_outcome_depends_on_the_clock(tokenizer: Any) -> None:
    import vllm.envs as envs

    parser = load("pythonic", tokenizer)
    assert envs.VLLM_TOOL_PARSE_REGEX_TIMEOUT_SECONDS >= 10**6  # vLLM's 1 s regex timeout is lifted
    # The pythonic gate regex backtracks super-linearly: past the size cap the text is content.
    call = '[get_weather(city="Paris", days=3)]'
    assert calls_of(parser.parse(call, TOOLS)) == [("get_weather", WEATHER)]
    long_call = '[get_weather(city="' + "P" * 2100 + '", days=3)]'
    assert parser.parse(long_call, TOOLS) == chat.ParsedOutput(content=long_call)
    hostile = "[f(a=1" + " \n" * 1100 + "x"  # seconds of backtracking at 4 KiB: past the cap, never run
    assert parser.parse(hostile, TOOLS) == chat.ParsedOutput(content=hostile)
    stream = parser.stream(TOOLS, partial(chat.tool_call_id, DIGEST, 0))
    assert stream.feed(long_call, []) is None and stream.stopped
    assert stream.finish(long_call, []) == {"role": "assistant", "content": long_call}


@pytest.mark.parametrize("name", sorted(RECORDED))
@pytest.mark.parametrize(
    ("before", "after"), [("Sure, checking.\n\n", ""), (" Sure ", "\nDone."), ("", "\n\nOk.  ")]
)
def test_live_content_is_always_a_prefix_of_the_document_content(
    name: str, before: str, after: str, tokenizer: Any
) -> None:
    # A relay compares what it streamed live with the signed document: live content must never
    # disagree, whatever each parser does with text around the calls (strip it, drop it, keep it).
    parser = load(name, tokenizer)
    text = before + RECORDED[name][0] + after
    deltas, live = stream_deltas(parser, tokenizer, text)
    final = parser.parse(text, TOOLS)
    streamed = "".join(d.get("content") or "" for d in deltas[:live])
    assert (final.content or "").startswith(streamed)
    if name == "hermes":
        assert streamed == final.content  # hermes content really is live
    if name == "pythonic" and after:
        return  # pythonic: calls previewed, then text after the list makes it all content (by design)
    assert reassemble(deltas)[:2] == (final.content, final.tool_calls)  # also Mistral's text after calls
