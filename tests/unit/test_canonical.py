"""Canonical bytes by document version: v1/v2 keep their bytes, v3 is RFC 8785 (JCS).

The cross-language check (a Node verifier rebuilding the bytes and CIDs) is
tests/integration/test_js_rebuild.py; here the Python side: what each version writes for floats,
big integers, non-ASCII strings and keys beyond U+FFFF, and which version an output document gets.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from node.content.canonical import (
    CURRENT_VERSION,
    MAX_SAFE_INTEGER,
    UnsafeNumber,
    canonical_json,
    encode_json,
    find_unsafe_number,
    jcs_json,
)
from node.content.cid import cid_for_bytes
from node.content.documents import (
    CompletionChoice,
    CompletionLogprobs,
    OutputDocument,
    OutputError,
    output_version,
    parse_input_document,
    parse_output_document,
    to_canonical_bytes,
    validate_input_document,
)
from node.content.errors import DocumentError

CHAT: dict[str, Any] = {
    "type": "chat",
    "model": "m",
    "messages": [{"role": "user", "content": "héllo 😀 ｱ \u2028 \x07"}],
    "params": {"temperature": 1, "top_p": 0.7, "seed": 42},
}
V1_BYTES = (
    '{"messages":[{"content":"héllo 😀 ｱ \u2028 \\u0007","role":"user"}],"model":"m",'
    '"params":{"seed":42,"temperature":1.0,"top_p":0.7},"type":"chat","v":1}'
).encode()


def test_a_version_1_document_keeps_its_bytes_and_cid() -> None:
    doc = validate_input_document({**CHAT, "v": 1})
    assert to_canonical_bytes(doc) == V1_BYTES
    assert cid_for_bytes(to_canonical_bytes(parse_input_document(V1_BYTES))) == cid_for_bytes(V1_BYTES)


def test_version_3_is_rfc_8785() -> None:
    doc = validate_input_document({**CHAT, "v": 3})
    data = to_canonical_bytes(doc)
    assert data == V1_BYTES.replace(b'"temperature":1.0', b'"temperature":1').replace(b'"v":1', b'"v":3')
    assert data == jcs_json(json.loads(data))
    assert to_canonical_bytes(parse_input_document(data)) == data  # `1` reads back as the float 1.0


@pytest.mark.parametrize(
    ("value", "v1", "v3"),
    [
        (0.7, "0.7", "0.7"),
        (-0.123456789, "-0.123456789", "-0.123456789"),
        (1e-7, "1e-07", "1e-7"),
        (-1.5e-7, "-1.5e-07", "-1.5e-7"),
        (1e15, "1000000000000000.0", "1000000000000000"),
        (123456789.125, "123456789.125", "123456789.125"),
        (100.0, "100.0", "100"),
        (-9999.0, "-9999.0", "-9999"),  # the engine's clamped -inf logprob
        (-0.0, "-0.0", "0"),
        (0.1 + 0.2, "0.30000000000000004", "0.30000000000000004"),
        (5e-324, "5e-324", "5e-324"),
    ],
)
def test_numbers_by_version(value: float, v1: str, v3: str) -> None:
    assert encode_json([value], 1) == f"[{v1}]".encode()
    assert encode_json([value], 3) == f"[{v3}]".encode()


def test_keys_beyond_the_bmp_sort_by_utf16_in_version_3() -> None:
    # U+1F600 is the surrogate pair D83D DE00: before U+FF71 in UTF-16, after it by code point
    top = {"ｱ": -1.5, "😀": -0.25, "a": -2.0}
    assert canonical_json(top) == '{"a":-2.0,"ｱ":-1.5,"😀":-0.25}'.encode()
    assert jcs_json(top) == '{"a":-2,"😀":-0.25,"ｱ":-1.5}'.encode()


def test_an_output_document_of_each_version_round_trips() -> None:
    choice = CompletionChoice(
        index=0,
        text="😀ｱ",
        finish_reason="length",
        logprobs=CompletionLogprobs(
            tokens=["😀", "ｱ"],
            token_logprobs=[-9999.0, -0.123456789],
            top_logprobs=[{"😀": -9999.0, "ｱ": -10.0}, {"ｱ": -0.123456789, "😀": -3.0}],
            text_offset=[0, 1],
        ),
    )
    for v in (1, 3):
        out = OutputDocument(
            v=v, request_id=MAX_SAFE_INTEGER, input_cid=cid_for_bytes(b"i"), model="m",
            system_fingerprint="f", object="text_completion", created=1_700_000_000, choices=[choice],
        )  # fmt: skip
        data = to_canonical_bytes(out)
        assert data == encode_json(json.loads(data), v)
        assert to_canonical_bytes(parse_output_document(data)) == data
        assert (b"-9999.0" in data) == (v == 1)


def test_version_3_refuses_numbers_beyond_2_53_naming_the_field() -> None:
    with pytest.raises(DocumentError) as info:
        validate_input_document({**CHAT, "v": 3, "params": {"seed": MAX_SAFE_INTEGER + 1}})
    assert info.value.field == "params.seed" and "2^53" in info.value.message
    assert validate_input_document({**CHAT, "v": 1, "params": {"seed": 1 << 63}})  # v1 keeps any seed
    schema: Any = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 1 << 64}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    with pytest.raises(DocumentError) as info:
        validate_input_document({**CHAT, "v": 3, "params": {"tools": tools}})
    assert info.value.field == "params.tools[0].function.parameters.properties.n.maximum"
    schema["properties"]["n"]["maximum"] = 1e20  # JCS writes 100000000000000000000: an int when read
    with pytest.raises(DocumentError) as info:
        validate_input_document({**CHAT, "v": 3, "params": {"tools": tools}})
    assert info.value.field == "params.tools[0].function.parameters.properties.n.maximum"
    with pytest.raises(ValidationError, match="request_id: must be a number within"):
        OutputDocument.for_error(
            request_id=1 << 60, input_cid="c", model="m", system_fingerprint="f", created=0,
            error=OutputError(code="input_not_found", message="x"),
        )  # fmt: skip


def test_unsafe_numbers_are_found_in_document_order() -> None:
    assert find_unsafe_number({"a": [1, {"b": -(1 << 53)}], "c": 1 << 60}) == "a[1].b"
    assert find_unsafe_number({"a": True, "b": 1.0e15, "c": MAX_SAFE_INTEGER, "d": -0.5}) is None
    assert find_unsafe_number([0, {"x": 1e300}]) == "[1].x"
    with pytest.raises(UnsafeNumber) as info:
        jcs_json({"x": [0, 1 << 53]})
    assert info.value.field == "x[1]"


def test_output_version_follows_the_input() -> None:
    assert (output_version(1), output_version(2), output_version(3), output_version(None)) == (1, 1, 3, 3)
    assert CURRENT_VERSION == 3


def test_unknown_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown document version"):
        encode_json({}, 4)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(value=json_values)
def test_jcs_is_a_fixed_point_of_parsing(value: Any) -> None:
    data = jcs_json(value)
    assert jcs_json(json.loads(data)) == data
