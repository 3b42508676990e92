"""Fuzzing every parser of untrusted bytes: a valid result or the parser's typed error, never another.

* documents (`parse_input_document`, `parse_output_document`): `DocumentError` / `DocumentTooLarge`;
  an accepted input document re-encodes to canonical bytes that parse back to the same document;
* API request bodies (`parse_json_body` then `parse_chat_request` / `parse_completion_request`):
  `InvalidRequest` (400) / `PayloadTooLarge` (413);
* MQTT messages (`parse_message(topic, payload)`): a `Routed` message or None.

Inputs are random bytes, valid inputs with bytes mutated, and valid inputs with one field (at any
depth) replaced by any JSON value, hostile ones included (NaN, huge ints, lone surrogates, empty and
deep containers). Example counts stay modest for CI; tests/unit/fuzzing.py says how to search wider
with a printed seed. Fixed hostile samples in a child process: tests/unit/test_hostile_corpus.py.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from node.content.documents import (
    parse_input_document,
    parse_output_document,
    to_canonical_bytes,
)
from node.content.errors import DocumentError, DocumentTooLarge
from node.gate import HTTP_BODY_LIMITS
from node.gateway.errors import InvalidRequest, PayloadTooLarge
from node.gateway.mqtt import Routed, parse_message
from node.gateway.schemas import ParsedRequest, parse_chat_request, parse_completion_request, parse_json_body
from node.stream import topics
from tests.unit.fuzzing import fuzz, json_values, mutated, separators

HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
MINER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"

CHAT_DOC: dict[str, Any] = {
    "v": 1,
    "type": "chat",
    "model": "SmolLM2-135M-Instruct",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What's 2+2? ünïcødé"}]},
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
        "seed": 42,
        "stop": ["\n\n"],
        "logprobs": True,
        "top_logprobs": 3,
        "logit_bias": {"50256": -100},
        "tools": [
            {
                "type": "function",
                "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {}}}},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "add"}},
    },
}
COMPLETION_DOC: dict[str, Any] = {
    "v": 1,
    "type": "completion",
    "model": "SmolLM2-135M-Instruct",
    "prompt": [[1, 2, 3], [4, 5]],
    "params": {"max_tokens": 8, "n": 2, "best_of": 3, "logprobs": 2, "echo": True, "suffix": None},
}
OUTPUT_DOC: dict[str, Any] = {
    "v": 1,
    "request_id": 7,
    "input_cid": "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq",
    "model": "SmolLM2-135M-Instruct",
    "system_fingerprint": "inferd",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "4"},
            "finish_reason": "stop",
            "logprobs": {"content": [{"token": "4", "logprob": -0.1, "top_logprobs": []}]},
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    "error": None,
}
CHAT_BODY: dict[str, Any] = {
    "model": "SmolLM2-135M-Instruct",
    "messages": CHAT_DOC["messages"],
    **CHAT_DOC["params"],
    "max_completion_tokens": 16,
    "stream": True,
    "stream_options": {"include_usage": True},
    "chain_id": 31337,
}
COMPLETION_BODY: dict[str, Any] = {
    "model": "SmolLM2-135M-Instruct",
    "prompt": "Once upon a time",
    **{k: v for k, v in COMPLETION_DOC["params"].items() if k != "best_of"},
    "stream": False,
}

HOSTILE_VALUES: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, 0, -1, 2**63, -(2**64), 2**256, 1e308, -0.0, 0.5, float("nan"), float("inf"), float("-inf"),
     "", "\x00", "\ud800", "\udc00x", "x" * 5000, "[" * 100, "1e999", [], {}, [[[[[[]]]]]], {"": {"": {}}},
     [None], ["\ud800"], {"\ud800": 1}, {"type": "function"}]
)  # fmt: skip
ANY_VALUE = HOSTILE_VALUES | json_values(8)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `value` (keys and indices), the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        out.append((*prefix, key))
        out.extend(paths(child, (*prefix, key)))
    return out


@st.composite
def with_one_field_replaced(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with a value at a random depth replaced, a key dropped, or a key added."""
    doc = copy.deepcopy(base)
    path = draw(st.sampled_from(paths(doc)))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(ANY_VALUE)
    elif action == "drop":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.sampled_from(["v", "type", "role", "content", "x", "name", "best_of", ""]))] = draw(
            ANY_VALUE
        )
    else:
        parent.append(draw(ANY_VALUE))
    return doc


def encode(value: Any, ascii_: bool = True) -> bytes:
    """JSON bytes of `value`; NaN/Infinity written as Python writes them, lone surrogates escaped."""
    return json.dumps(value, ensure_ascii=ascii_).encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- documents


def check_input(raw: bytes) -> None:
    try:
        doc = parse_input_document(raw)
    except (DocumentError, DocumentTooLarge):
        return
    again = to_canonical_bytes(doc)  # an accepted document always has canonical bytes ...
    assert parse_input_document(again) == doc  # ... that parse back to the same document


def check_output(raw: bytes) -> None:
    try:
        doc = parse_output_document(raw)
    except (DocumentError, DocumentTooLarge):
        return
    assert parse_output_document(to_canonical_bytes(doc)) == doc


def test_the_bases_are_valid() -> None:
    """The fuzzers start from valid inputs, so their mutations probe past the first check."""
    parse_input_document(encode(CHAT_DOC))
    parse_input_document(encode(COMPLETION_DOC))
    parse_output_document(encode(OUTPUT_DOC))
    assert isinstance(parse_chat_request(parse_json_body(encode(CHAT_BODY))), ParsedRequest)
    assert isinstance(parse_completion_request(parse_json_body(encode(COMPLETION_BODY))), ParsedRequest)
    assert isinstance(parse_message(topic("delta"), b'{"seq":0,"choice":0,"delta":"x"}'), Routed)
    assert isinstance(parse_message(topic("result"), result_payload("{}")), Routed)


@fuzz(150)
@given(st.binary(max_size=400))
@example(b"[" * 100_000)
def test_input_document_any_bytes(raw: bytes) -> None:
    check_input(raw)


@fuzz(250)
@given(st.sampled_from([CHAT_DOC, COMPLETION_DOC]).flatmap(with_one_field_replaced), st.booleans())
def test_input_document_with_any_field_replaced(doc: dict[str, Any], ascii_: bool) -> None:
    check_input(encode(doc, ascii_))


@fuzz(150)
@given(st.sampled_from([encode(CHAT_DOC), encode(COMPLETION_DOC, False)]).flatmap(mutated))
def test_input_document_with_bytes_mutated(raw: bytes) -> None:
    check_input(raw)


@fuzz(100)
@given(st.binary(max_size=400))
def test_output_document_any_bytes(raw: bytes) -> None:
    check_output(raw)


@fuzz(200)
@given(with_one_field_replaced(OUTPUT_DOC), st.booleans())
def test_output_document_with_any_field_replaced(doc: dict[str, Any], ascii_: bool) -> None:
    check_output(encode(doc, ascii_))


@fuzz(100)
@given(mutated(encode(OUTPUT_DOC)))
def test_output_document_with_bytes_mutated(raw: bytes) -> None:
    check_output(raw)


# --------------------------------------------------------------------------- API request bodies


def check_body(raw: bytes) -> None:
    """A typed refusal, or a document that every miner accepts as it is (what the client pays for)."""
    try:
        body = parse_json_body(raw)
        parse = parse_chat_request if "messages" in body else parse_completion_request
        parsed = parse(body)
    except (InvalidRequest, PayloadTooLarge):
        return
    try:
        assert parse_input_document(parsed.document_bytes) == parsed.document
    except (DocumentError, DocumentTooLarge) as exc:
        raise AssertionError(f"the gateway accepted a request whose document miners refuse: {exc}") from None


def nested_object(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def with_tool_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """A chat body whose one tool takes `parameters` (free-form JSON, one level deeper in a document)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}


def at_the_item_limit() -> dict[str, Any]:
    """A chat body with exactly as many elements as a request body may have (its document has more)."""
    base = with_tool_parameters({"enum": [0]})
    n = HTTP_BODY_LIMITS.max_items - separators(base)  # elements = separators + 1
    return with_tool_parameters({"enum": [0] * n})


@fuzz(100)
@given(st.binary(max_size=400))
def test_request_body_any_bytes(raw: bytes) -> None:
    check_body(raw)


@fuzz(250)
@given(st.sampled_from([CHAT_BODY, COMPLETION_BODY]).flatmap(with_one_field_replaced), st.booleans())
@example({**COMPLETION_BODY, "stream": True, "best_of": "3"}, True)  # compared with n before validation
@example({**COMPLETION_BODY, "stream": True, "best_of": 2, "n": [1]}, True)
@example(with_tool_parameters(nested_object(HTTP_BODY_LIMITS.max_depth - 4)), True)  # body at the depth limit
@example(at_the_item_limit(), True)
def test_request_body_with_any_field_replaced(body: dict[str, Any], ascii_: bool) -> None:
    check_body(encode(body, ascii_))


@fuzz(100)
@given(st.sampled_from([encode(CHAT_BODY), encode(COMPLETION_BODY)]).flatmap(mutated))
def test_request_body_with_bytes_mutated(raw: bytes) -> None:
    check_body(raw)


# --------------------------------------------------------------------------- MQTT messages


def topic(kind: str, chain_id: int = 31337, request_id: int = 5) -> str:
    """A well-formed topic from `node.stream.topics`, whatever levels its builders take."""
    builder: Callable[..., str] = topics.delta_topic if kind == "delta" else topics.result_topic
    kwargs: dict[str, Any] = {"chain_id": chain_id, "hub": HUB, "request_id": request_id}
    if "miner" in inspect.signature(builder).parameters:
        kwargs["miner"] = MINER
    return builder(**kwargs)


def result_payload(output: str) -> bytes:
    return encode({"output": output, "signature": "0x" + "ab" * 65, "miner": MINER})


TOPIC_LEVELS = st.sampled_from(
    ["", "+", "#", "req", "delta", "result", "miner", "inferd", "v1", "31337", "-1", "007", "1" * 100, "٣",
     " 5", "5_0", HUB, HUB.lower(), MINER, MINER.lower(), "0x", "\x00", "\ud800"]
)  # fmt: skip


@st.composite
def topics_any(draw: st.DrawFn) -> str:
    """Real topics, real topics with one level swapped, and level soup."""
    base = draw(st.sampled_from([topic("delta"), topic("result")])).split("/")
    choice = draw(st.integers(min_value=0, max_value=2))
    if choice == 0:
        return "/".join(base)
    if choice == 1:
        i = draw(st.integers(min_value=0, max_value=len(base) - 1))
        base[i] = draw(TOPIC_LEVELS)
        return "/".join(base)
    return "/".join(draw(st.lists(TOPIC_LEVELS, max_size=10)))


MESSAGE_KEYS = st.sampled_from(["seq", "choice", "delta", "output", "signature", "miner", "content", "text"])


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(min_value=0, max_value=3))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        base = {"seq": 0, "choice": 0, "delta": {"content": "hi"}}
    else:
        base = {"output": "{}", "signature": "0x00", "miner": MINER}
    if kind == 3:
        return draw(mutated(encode(base)))
    value = draw(with_one_field_replaced(base))
    value.update(draw(st.dictionaries(MESSAGE_KEYS, ANY_VALUE, max_size=2)))
    return encode(value, draw(st.booleans()))


@fuzz(300)
@given(topics_any(), payloads())
@example(topic("result"), result_payload("\ud800"))
@example(topic("delta"), b'{"seq":0,"choice":0,"delta":{"content":"\\ud800"}}')
@example(topic("delta"), b'{"seq":' + b"9" * 5000 + b',"delta":"x"}')
def test_mqtt_message_routed_or_dropped(topic_: str, payload: bytes) -> None:
    routed = parse_message(topic_, payload)
    assert routed is None or isinstance(routed, Routed)
    if routed is not None and routed.result is not None:
        routed.result.output_bytes.decode("utf-8")  # what the gateway verifies next is real UTF-8
