"""Input/output documents: validation names the field, canonical bytes are stable."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.content.cid import cid_for_bytes
from node.content.documents import (
    MAX_BEST_OF,
    MAX_N,
    MAX_PROMPTS,
    MAX_SAFE_INTEGER,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_ENUM_VALUES,
    MAX_SCHEMA_PROPERTIES,
    MAX_SEQUENCES,
    MAX_TOKENS,
    MAX_TOTAL_TOKENS,
    AssistantOutput,
    ChatChoice,
    ChatInputDocument,
    CompletionChoice,
    CompletionInputDocument,
    CompletionLogprobs,
    OutputDocument,
    OutputError,
    ToolCall,
    Usage,
    canonical_json,
    check_schema_size,
    default_max_tokens,
    parse_input_document,
    parse_output_document,
    prompt_count,
    sequence_count,
    to_canonical_bytes,
    validate_input_document,
)
from node.content.errors import MAX_DOCUMENT_BYTES, DocumentError, DocumentTooLarge

CHAT: dict[str, Any] = {
    "v": 1,
    "type": "chat",
    "model": "SmolLM2-135M-Instruct",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What's 2+2? ünïcødé ✓"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ],
    "params": {
        "max_tokens": 16,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n\n"],
        "n": 2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logprobs": True,
        "top_logprobs": 3,
        "logit_bias": {"50256": -100},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "add",
                    "description": "adds",
                    "parameters": {"type": "object", "properties": {}, "default": None},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "add"}},
        "user": "u-1",
    },
}

COMPLETION: dict[str, Any] = {
    "v": 1,
    "type": "completion",
    "model": "m",
    "prompt": "Once upon a time",
    "params": {"max_tokens": 8, "logprobs": 5, "n": 2, "best_of": 3, "echo": True, "suffix": "end"},
}


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(base))
    for path, value in changes.items():
        node = doc
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return doc


def field_of(obj: Any) -> str:
    with pytest.raises(DocumentError) as info:
        parse_input_document(raw(obj))
    return info.value.field


def test_valid_chat_and_completion_parse_to_their_models() -> None:
    chat = parse_input_document(raw(CHAT))
    assert isinstance(chat, ChatInputDocument)
    assert chat.params.top_logprobs == 3
    assert chat.messages[2].role == "assistant"
    completion = parse_input_document(raw(COMPLETION))
    assert isinstance(completion, CompletionInputDocument)
    assert completion.params.best_of == 3


@pytest.mark.parametrize(
    "prompt", ["", "text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]], ids=["empty", "str", "strs", "ids", "idss"]
)
def test_completion_prompt_shapes(prompt: Any) -> None:
    doc = parse_input_document(raw(with_(COMPLETION, prompt=prompt)))
    assert isinstance(doc, CompletionInputDocument)
    assert doc.prompt == prompt


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"params__temperature": 5}, "params.temperature"),
        ({"params__top_p": 1.5}, "params.top_p"),
        ({"params__n": 0}, "params.n"),
        ({"params__max_tokens": "16"}, "params.max_tokens"),
        ({"params__max_tokens": True}, "params.max_tokens"),
        ({"params__presence_penalty": -3}, "params.presence_penalty"),
        ({"params__top_logprobs": 21}, "params.top_logprobs"),
        ({"params__logprobs": False}, "params.top_logprobs"),
        ({"params__logit_bias": {"abc": 1}}, "params.logit_bias.abc"),
        ({"params__logit_bias": {"1": 101}}, "params.logit_bias.1"),
        ({"params__stop": ["a", "b", "c", "d", "e"]}, "params.stop"),
        ({"params__tool_choice": "sometimes"}, "params.tool_choice"),
        ({"params__tool_choice": {"type": "function", "function": {"name": "mul"}}}, "params.tool_choice"),
        ({"params__stream": True}, "params.stream"),
        ({"messages": []}, "messages"),
        (
            {"messages__1__content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "messages[1].content[0]",
        ),
        ({"messages__1__content": 7}, "messages[1].content"),
        ({"messages__3": {"role": "tool", "content": "4"}}, "messages[3].tool_call_id"),
        ({"messages__2": {"role": "assistant"}}, "messages[2]"),
        ({"messages__0": {"role": "wizard", "content": "x"}}, "messages[0]"),
        ({"model": ""}, "model"),
        ({"v": 2}, "v"),
        ({"v": True}, "v"),
        ({"type": "embedding"}, "type"),
    ],
)
def test_chat_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    assert field_of(with_(CHAT, **changes)) == field


def test_missing_model_is_named() -> None:
    doc = dict(CHAT)
    del doc["model"]
    assert field_of(doc) == "model"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"params__logprobs": 6}, "params.logprobs"),
        ({"params__logprobs": True}, "params.logprobs"),
        ({"params__best_of": 1}, "params.best_of"),
        ({"params__tools": []}, "params.tools"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [-1]}, "prompt[0]"),
        ({"messages": []}, "messages"),
    ],
)
def test_completion_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    assert field_of(with_(COMPLETION, **changes)) == field


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'"x"', b"\xff\xfe{}", b'{"v":1,"v":1}', b'{"v":NaN}', b'{"v":Infinity}'],
)
def test_malformed_json_is_a_document_error(data: bytes) -> None:
    with pytest.raises(DocumentError) as info:
        parse_input_document(data)
    assert info.value.field == ""
    assert str(info.value)


def test_lone_surrogate_is_rejected() -> None:
    data = raw(CHAT).replace(b"Be brief.", b"\\ud800")
    with pytest.raises(DocumentError, match="surrogate"):
        parse_input_document(data)


def test_oversized_document_is_refused_before_parsing() -> None:
    with pytest.raises(DocumentTooLarge) as info:
        parse_input_document(b" " * (MAX_DOCUMENT_BYTES + 1))
    assert info.value.size == MAX_DOCUMENT_BYTES + 1
    big = with_(CHAT, messages__0__content="x" * MAX_DOCUMENT_BYTES)
    doc = ChatInputDocument.model_validate(big)
    with pytest.raises(DocumentTooLarge, match="1048576-byte limit"):
        to_canonical_bytes(doc)


def test_canonical_bytes_are_sorted_compact_utf8_and_omit_none() -> None:
    doc = validate_input_document(with_(CHAT, params={"temperature": None, "seed": 1}))
    data = to_canonical_bytes(doc)
    assert b'{"messages":[{"content":"Be brief.","role":"system"},' in data  # sorted, compact
    assert b'"model":"SmolLM2-135M-Instruct","params":{"seed":1},"type":"chat","v":1}' in data
    assert "ünïcødé ✓".encode() in data  # not \u-escaped
    assert b"temperature" not in data
    assert b'"params":{"seed":1}' in data
    assert b'"content":null' not in data  # None fields of inputs are omitted
    assert data == canonical_json(json.loads(data))
    assert parse_input_document(data) == doc


def test_none_and_absent_give_the_same_cid() -> None:
    a = validate_input_document(with_(COMPLETION, params={"max_tokens": 4, "suffix": None}))
    b = validate_input_document(with_(COMPLETION, params={"max_tokens": 4}))
    assert cid_for_bytes(to_canonical_bytes(a)) == cid_for_bytes(to_canonical_bytes(b))


def test_nulls_inside_tool_schemas_are_data() -> None:
    data = to_canonical_bytes(parse_input_document(raw(CHAT)))
    assert b'"default":null' in data


def _shuffled(obj: Any, rng: random.Random) -> Any:
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(obj, list):
        return [_shuffled(v, rng) for v in obj]
    return obj


@given(seed=st.integers(), indent=st.sampled_from([None, 0, 2]), base=st.sampled_from([CHAT, COMPLETION]))
def test_canonical_encoding_is_stable_under_key_order(seed: int, indent: int | None, base: Any) -> None:
    reference = to_canonical_bytes(parse_input_document(raw(base)))
    shuffled = _shuffled(base, random.Random(seed))
    data = json.dumps(shuffled, indent=indent, ensure_ascii=bool(seed % 2)).encode()
    assert to_canonical_bytes(parse_input_document(data)) == reference


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200)
@given(value=json_values)
def test_canonical_json_round_trips_and_is_a_fixed_point(value: Any) -> None:
    data = canonical_json(value)
    assert json.loads(data) == value
    assert canonical_json(json.loads(data)) == data


@given(
    text=st.text(max_size=200),
    temperature=st.floats(min_value=0, max_value=2),
    seed=st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    v=st.sampled_from([1, 3]),
)
def test_any_valid_document_round_trips_through_its_bytes(
    text: str, temperature: float, seed: int, v: int
) -> None:
    if v == 3:  # version 3 holds integers within ±(2^53 - 1) only (tests/unit/test_canonical.py)
        seed = max(-MAX_SAFE_INTEGER, min(MAX_SAFE_INTEGER, seed))
    doc = ChatInputDocument.model_validate(
        {
            "v": v,
            "model": "m",
            "messages": [{"role": "user", "content": text}],
            "params": {"temperature": temperature, "seed": seed},
        }
    )
    data = to_canonical_bytes(doc)
    assert parse_input_document(data) == doc
    assert to_canonical_bytes(parse_input_document(data)) == data


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def chat_output(**changes: Any) -> OutputDocument:
    fields: dict[str, Any] = {
        "request_id": 7,
        "input_cid": cid_for_bytes(b"input"),
        "model": "m",
        "system_fingerprint": "inferd-0.1/vllm-0.x/sha256:abc",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "choices": [
            ChatChoice(
                index=0,
                message=AssistantOutput(
                    content=None,
                    tool_calls=[ToolCall(id="call_0", function={"name": "add", "arguments": '{"a":1}'})],  # type: ignore[arg-type]
                    reasoning_content="think",
                ),
                finish_reason="tool_calls",
            )
        ],
        "usage": Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
    }
    fields.update(changes)
    return OutputDocument(**fields)


def test_output_document_round_trip_keeps_required_nulls() -> None:
    doc = chat_output()
    data = to_canonical_bytes(doc)
    assert b'"error":null' in data
    assert b'"content":null' in data
    assert b'"logprobs"' not in data
    assert parse_output_document(data) == doc
    assert cid_for_bytes(to_canonical_bytes(chat_output())) == cid_for_bytes(data)  # deterministic


def test_completion_output_with_legacy_logprobs() -> None:
    doc = OutputDocument(
        request_id=1,
        input_cid="bafk",
        model="m",
        system_fingerprint="fp",
        object="text_completion",
        created=0,
        choices=[
            CompletionChoice(
                index=0,
                text="Hi there",
                finish_reason="length",
                logprobs=CompletionLogprobs(
                    tokens=["Hi", " there"],
                    token_logprobs=[None, -0.25],
                    top_logprobs=[None, {" there": -0.25, " you": -2.0}],
                    text_offset=[0, 2],
                ),
            )
        ],
    )
    data = to_canonical_bytes(doc)
    assert b'"token_logprobs":[null,-0.25]' in data
    assert parse_output_document(data) == doc


def test_error_output_document_from_a_document_error() -> None:
    try:
        parse_input_document(raw(with_(CHAT, params__temperature=5)))
    except DocumentError as exc:
        error = OutputError.from_exception(exc)
    doc = OutputDocument.for_error(
        request_id=1, input_cid="bafk", model="m", system_fingerprint="fp", created=5, error=error
    )
    data = to_canonical_bytes(doc)
    assert json.loads(data)["error"] == {
        "code": "invalid_request",
        "message": "params.temperature: Input should be less than or equal to 2",
    }
    assert json.loads(data)["choices"] == []
    assert parse_output_document(data) == doc


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(object="text_completion"), "choices"),
        (lambda d: d["choices"][0].update(index=-1), "choices[0].index"),
        (lambda d: d.update(object="error"), "object"),
        (lambda d: d.update(created=1.5), "created"),
        (lambda d: d["choices"][0].update(finish_reason="abort"), "choices[0].finish_reason"),
        (lambda d: d["usage"].update(extra=1), "usage.extra"),
    ],
)
def test_bad_output_documents_name_the_field(mutate: Any, field: str) -> None:
    obj = json.loads(to_canonical_bytes(chat_output()))
    mutate(obj)
    with pytest.raises(DocumentError) as info:
        parse_output_document(raw(obj))
    assert info.value.field == field


def test_non_finite_logprobs_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        CompletionLogprobs(tokens=["a"], token_logprobs=[float("-inf")], top_logprobs=[None], text_offset=[0])


# --------------------------------------------------------------------------- protocol caps


def _tool(i: int) -> dict[str, Any]:
    return {"type": "function", "function": {"name": f"f{i}"}}


@pytest.mark.parametrize(
    ("base", "changes", "field"),
    [
        (CHAT, {"params__n": 9}, "params.n"),
        (CHAT, {"params__max_tokens": 32769}, "params.max_tokens"),
        (CHAT, {"params__n": 4, "params__max_tokens": 32768}, "params.max_tokens"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}] * 1025}, "messages"),
        (CHAT, {"messages__0__content": [{"type": "text", "text": "x"}] * 65}, "messages[0].content"),
        (CHAT, {"params__stop": "x" * 1025}, "params.stop"),
        (CHAT, {"params__stop": ["x" * 1025]}, "params.stop[0]"),
        (CHAT, {"params__logit_bias": {str(i): 1 for i in range(301)}}, "params.logit_bias"),
        (
            CHAT,
            {"params__tools": [_tool(i) for i in range(129)], "params__tool_choice": None},
            "params.tools",
        ),
        (COMPLETION, {"params__best_of": 9}, "params.best_of"),
        (COMPLETION, {"prompt": ["p"] * 17}, "prompt"),
        (COMPLETION, {"prompt": ["p"] * 5, "params__n": 8, "params__best_of": None}, "prompt"),
        (COMPLETION, {"prompt": ["p"] * 5, "params__n": 1, "params__best_of": 8}, "params.best_of"),
        (
            COMPLETION,
            {"prompt": ["p"] * 16, "params__max_tokens": 4097, "params__best_of": 2},
            "params.max_tokens",
        ),
        (COMPLETION, {"prompt": [[1] * 70000, [2] * 70000]}, "prompt"),
    ],
)
def test_caps_name_the_field(base: dict[str, Any], changes: dict[str, Any], field: str) -> None:
    assert field_of(with_(base, **changes)) == field


def test_documents_at_the_caps_are_valid() -> None:
    chat = parse_input_document(raw(with_(CHAT, params__n=8, params__max_tokens=8192)))
    assert isinstance(chat, ChatInputDocument)
    assert sequence_count(chat) == 8
    many = with_(COMPLETION, prompt=["p"] * 16, params__n=2, params__best_of=None, params__max_tokens=2048)
    completion = parse_input_document(raw(many))
    assert isinstance(completion, CompletionInputDocument)
    assert sequence_count(completion) == 32 and prompt_count(completion.prompt) == 16
    ids = parse_input_document(raw(with_(COMPLETION, prompt=[[1] * 65536, [2] * 65536], params__n=1)))
    assert isinstance(ids, CompletionInputDocument)


def test_default_max_tokens_shares_the_total_token_cap() -> None:
    chat = parse_input_document(raw(with_(CHAT, params__n=1)))
    assert default_max_tokens(chat) == MAX_TOKENS
    many = with_(COMPLETION, prompt=["p"] * 16, params__n=2, params__best_of=None, params__max_tokens=None)
    completion = parse_input_document(raw(many))
    assert default_max_tokens(completion) == MAX_TOTAL_TOKENS // 32


def test_caps_values() -> None:
    """The caps are part of the format: changing one changes which documents are valid."""
    assert (MAX_N, MAX_BEST_OF, MAX_PROMPTS, MAX_SEQUENCES) == (8, 8, 16, 32)
    assert (MAX_TOKENS, MAX_TOTAL_TOKENS) == (32768, 65536)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 200_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"v":1,"type":"chat","model":"m","messages":[],"params":{"seed":' + b"9" * 5000 + b"}}",
        b'{"v":1e999}',
        b'{"v":1,"type":"chat","model":"\\udfff","messages":[{"role":"user","content":"x"}]}',
        b'{"v":1,"v":1}',
        b'{"v":NaN}',
        b'{"v":1,"type":"chat","model":"\xc3\x28"}',
        b'{"v":1,"type":"completion","model":"m","prompt":"' + b"x" * (MAX_DOCUMENT_BYTES - 100) + b'"}',
    ],
    ids=[
        "deep-list",
        "deep-object",
        "huge-int",
        "huge-float",
        "surrogate",
        "dup-key",
        "nan",
        "utf8",
        "giant",
    ],
)
def test_hostile_bytes_are_document_errors_not_crashes(data: bytes) -> None:
    try:
        doc = parse_input_document(data)
    except DocumentError as exc:
        assert len(str(exc)) < 500
    else:  # the giant string is a valid document, bounded by the 1 MiB limit
        assert isinstance(doc, CompletionInputDocument)


def test_error_texts_do_not_depend_on_the_node() -> None:
    from node.content.errors import ContentNotFound, IntegrityError

    a = OutputError.from_exception(ContentNotFound("bafkx", "local store /home/alice/.inferd/blocks"))
    b = OutputError.from_exception(ContentNotFound("bafkx", "gateways http://10.0.0.7:8000"))
    assert a == b and "/home" not in a.message
    assert OutputError.from_exception(IntegrityError("bafkx", "bafky", "somewhere")).code == "input_integrity"
    assert OutputError.from_exception(DocumentTooLarge(2_000_000)) == OutputError.from_exception(
        DocumentTooLarge(MAX_DOCUMENT_BYTES + 1)
    )
    weird = OutputError.from_exception(RuntimeError("/usr/lib/python3.11/site-packages/vllm: boom"))
    assert weird.code == "input_unprocessable" and "vllm" not in weird.message


# ------------------------------------------------------------------ versions (v1 unchanged, v2 fields)

V1_CIDS = {
    "chat": "bafkreidupdo2euiftgbpyrhaejkkvgapcedawyatqu2epb5vguiqhtx6ti",
    "completion": "bafkreiesb7hpfsnwknhoe4ejppmpuijhl2bjuqadkz4yvxh2dnnzl2r3fq",
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True, "description": "d"},
}


def test_version_1_documents_keep_their_bytes_and_cids() -> None:
    """Pinned before version 2 existed: the fixtures' CIDs must never change."""
    for base in (CHAT, COMPLETION):
        data = to_canonical_bytes(parse_input_document(raw(base)))
        assert cid_for_bytes(data) == V1_CIDS[base["type"]]
        assert json.loads(data)["v"] == 1


@pytest.mark.parametrize(
    "v2",
    [
        {"response_format": {"type": "json_object"}},
        {"response_format": SCHEMA_FORMAT},
        {"parallel_tool_calls": False},
        {"reasoning_effort": "high"},
    ],
)
def test_version_2_fields_need_v_2_and_round_trip(v2: dict[str, Any]) -> None:
    base = with_(CHAT, params__tool_choice="required")
    params = {**base["params"], **v2}
    doc = parse_input_document(raw({**base, "v": 2, "params": params}))
    assert isinstance(doc, ChatInputDocument) and doc.v == 2 and doc.params.v2_fields() == list(v2)
    data = to_canonical_bytes(doc)
    assert json.loads(data)["params"][next(iter(v2))] == next(iter(v2.values()))  # `schema` by its name
    assert to_canonical_bytes(parse_input_document(data)) == data
    with pytest.raises(DocumentError) as info:
        parse_input_document(raw({**base, "v": 1, "params": params}))
    assert info.value.field == f"params.{next(iter(v2))}" and '"v": 2' in info.value.message


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({**CHAT, "v": 2}, "v"),  # v2 without any v2 field: one request, one document
        ({**COMPLETION, "v": 2}, "v"),
        ({**CHAT, "v": 4}, "v"),
        ({**CHAT, "v": True}, "v"),
    ],
)
def test_version_rule_names_v(doc: dict[str, Any], field: str) -> None:
    assert field_of(doc) == field


def v2_chat(**params: Any) -> dict[str, Any]:
    return {
        "v": 2,
        "type": "chat",
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "params": params,
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"response_format": {"type": "text"}}, "params.response_format"),  # the default is never written
        ({"response_format": {"type": "json_object", "schema": {}}}, "params.response_format.schema"),
        ({"response_format": {"type": "json_schema"}}, "params.response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "bad name"}}},
            "params.response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema_": {}}}},
            "params.response_format.json_schema.schema_",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"enum": list(range(1001))}},
                }
            },
            "params.response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "a",
                        "schema": {"properties": {f"p{i}": {} for i in range(5001)}},
                    },
                }
            },
            "params.response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"x": "y" * 70000}},
                }
            },
            "params.response_format.json_schema.schema",
        ),
        ({"parallel_tool_calls": True}, "params.parallel_tool_calls"),  # only false is written
        ({"parallel_tool_calls": False}, "params.parallel_tool_calls"),  # needs tools
        ({"reasoning_effort": "minimal"}, "params.reasoning_effort"),
        (
            {"response_format": {"type": "json_object"}, "tools": [CHAT["params"]["tools"][0]]},
            "params.response_format",  # tool_choice auto: a grammar cannot hold both answers
        ),
    ],
)
def test_version_2_fields_are_checked(params: dict[str, Any], field: str) -> None:
    assert field_of(v2_chat(**params)) == field


def test_schema_caps_values() -> None:
    assert (MAX_SCHEMA_BYTES, MAX_SCHEMA_PROPERTIES, MAX_SCHEMA_ENUM_VALUES) == (65536, 5000, 1000)
    assert check_schema_size({"enum": list(range(1000))}) is None
