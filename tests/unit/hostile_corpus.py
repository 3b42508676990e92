"""Hostile inputs for every parser of untrusted bytes, and a runner that feeds them in a child process.

The corpus (`SAMPLES`) holds what a requester, an API client or a broker peer can send: nesting
200 KB deep (bare, and inside valid document fields such as a tool's `parameters`), numbers that
overflow a float or exceed Python's 4300-digit int limit, lone UTF-16 surrogates, duplicate keys,
NaN/Infinity, invalid and overlong UTF-8, a BOM, NUL bytes, too many elements and documents one
byte over 1 MiB, plus controls that must be *accepted* (brackets inside strings, a surrogate pair,
a document of exactly 1 MiB).

`tests/unit/test_hostile_corpus.py` runs `python -m tests.unit.hostile_corpus PARSER:SAMPLE ...` with
`sys.setrecursionlimit(10**6)` and an 8 MiB C stack: that is how a real process with a raised
recursion limit dies (SIGSEGV) on `json.loads` of deep input, so a parser that still recursed would
kill the child (a failed test) rather than the test runner. The child prints one line per pair:

    <parser>:<sample>\\t<outcome>

where the outcome is `accepted`, `none` (the MQTT parser dropped the message), `refused <Type>
<detail>` (the parser's typed error) or `crash <Type>: <message>` (any other exception: a bug).
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20
DEEP = 200_000  # levels of nesting: past an 8 MiB C stack at a 10**6 recursion limit (~60 000 levels)
HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
MINER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@dataclass(frozen=True)
class Sample:
    """One hostile input; `gate` is the gate's expected refusal reason (None: accepted) under
    `DOCUMENT_LIMITS`, and `says` a fragment the refusal message must contain."""

    name: str
    raw: bytes
    gate: str | None
    says: str = ""
    valid_input: bool = False  # a valid input document (the controls)


def _chat(content_json: str = '"hi"', params_json: str = "{}", extra: str = "") -> bytes:
    """A chat input document with raw JSON spliced into its content and params."""
    return (
        '{"v":1,"type":"chat","model":"m","messages":[{"role":"user","content":'
        + content_json
        + '}],"params":'
        + params_json
        + extra
        + "}"
    ).encode()


def _tool_with_parameters(parameters_json: str) -> str:
    return '{"tools":[{"type":"function","function":{"name":"f","parameters":' + parameters_json + "}}]}"


def _deep_object(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def _padded_to(doc: bytes, size: int) -> bytes:
    """`doc` with whitespace before its closing brace, `size` bytes in all."""
    assert doc.endswith(b"}") and len(doc) <= size
    return doc[:-1] + b" " * (size - len(doc)) + b"}"


def _samples() -> list[Sample]:
    deep_levels = DEEP // 2  # '{"a":1}' closed 100 000 levels deep: 600 KB, under the 1 MiB limit
    s = [
        Sample("deep_array_open", b"[" * DEEP, "too_deep", "nesting deeper than"),
        Sample("deep_array_closed", b"[" * DEEP + b"]" * DEEP, "too_deep", "nesting deeper than"),
        Sample("deep_object_open", b'{"a":' * DEEP, "too_deep", "nesting deeper than"),
        Sample("deep_object_closed", _deep_object(deep_levels).encode(), "too_deep", "nesting deeper than"),
        Sample("deep_mixed", b'[{"a":' * deep_levels, "too_deep", "nesting deeper than"),
        Sample(
            "deep_in_tool_parameters",
            _chat(params_json=_tool_with_parameters(_deep_object(deep_levels))),
            "too_deep",
            "nesting deeper than",
        ),
        Sample(
            "deep_in_message_content",
            _chat(content_json="[" * DEEP + "]" * DEEP),
            "too_deep",
            "nesting deeper than",
        ),
        Sample(
            "deep_in_logit_bias",
            _chat(params_json='{"logit_bias":' + _deep_object(deep_levels) + "}"),
            "too_deep",
            "nesting deeper than",
        ),
        Sample("huge_exponent", b"1e999999", "invalid_json", "out of range"),
        Sample("negative_overflow", b"-1e400", "invalid_json", "out of range"),
        Sample(
            "overflow_in_temperature",
            _chat(params_json='{"temperature":1e999999}'),
            "invalid_json",
            "out of range",
        ),
        Sample("int_100k_digits", b"9" * 100_000, "invalid_json", "digits"),
        Sample(
            "int_100k_digits_in_seed",
            _chat(params_json='{"seed":' + "9" * 100_000 + "}"),
            "invalid_json",
            "digits",
        ),
        Sample("lone_high_surrogate", b'"\\ud800"', "invalid_json", "lone UTF-16 surrogate"),
        Sample("lone_low_surrogate", b'"\\udc00"', "invalid_json", "lone UTF-16 surrogate"),
        Sample(
            "lone_surrogate_in_content",
            _chat(content_json='"x\\udbff"'),
            "invalid_json",
            "lone UTF-16 surrogate",
        ),
        Sample(
            "lone_surrogate_in_key",
            _chat(params_json='{"\\ud800":1}'),
            "invalid_json",
            "lone UTF-16 surrogate",
        ),
        Sample("reversed_surrogate_pair", b'"\\ude00\\ud83d"', "invalid_json", "lone UTF-16 surrogate"),
        Sample("duplicate_keys", _chat(extra=',"model":"other"'), "invalid_json", "duplicate key"),
        Sample("duplicate_keys_nested", _chat(params_json='{"n":1,"n":2}'), "invalid_json", "duplicate key"),
        Sample("nan", b"NaN", "invalid_json", "NaN is not valid JSON"),
        Sample("infinity", b"Infinity", "invalid_json", "Infinity is not valid JSON"),
        Sample("negative_infinity", b"-Infinity", "invalid_json", "-Infinity is not valid JSON"),
        Sample("nan_in_temperature", _chat(params_json='{"temperature":NaN}'), "invalid_json", "NaN"),
        Sample(
            "invalid_utf8", _chat(content_json='"a"').replace(b'"a"', b'"\xff\xfe"'), "not_utf8", "not UTF-8"
        ),
        Sample("overlong_utf8_slash", b'"\xc0\xaf"', "not_utf8", "not UTF-8"),
        Sample(
            "overlong_utf8_nul",
            _chat(content_json='"a"').replace(b'"a"', b'"\xc0\x80"'),
            "not_utf8",
            "not UTF-8",
        ),
        Sample("utf8_encoded_surrogate", b'"\xed\xa0\x80"', "not_utf8", "not UTF-8"),
        Sample("bom", b"\xef\xbb\xbf" + _chat(), "invalid_json", "BOM"),
        Sample("nul_byte", b"\x00", "invalid_json", "Expecting value"),
        Sample("nul_after_document", _chat() + b"\x00", "invalid_json", "Extra data"),
        Sample("raw_nul_in_string", _chat(content_json='"a\x00b"'), "invalid_json", "control character"),
        Sample("many_elements", b"[" + b"0," * 300_000 + b"0]", "too_many_items", "JSON elements"),
        Sample("document_1mib_plus_1", _padded_to(_chat(), MIB + 1), "too_large", "1048577 bytes"),
        Sample("giant_string_1mib_plus_1", b'"' + b"x" * (MIB - 1) + b'"', "too_large", "1048577 bytes"),
        # Controls: the gate must not refuse what is only hostile-looking.
        Sample(
            "control_brackets_in_string", _chat(content_json='"' + "[" * DEEP + '"'), None, valid_input=True
        ),
        Sample("control_surrogate_pair", _chat(content_json='"\\ud83d\\ude00"'), None, valid_input=True),
        Sample("control_document_1mib", _padded_to(_chat(), MIB), None, valid_input=True),
        Sample("control_escaped_nul", _chat(content_json='"a\\u0000b"'), None, valid_input=True),
    ]
    names = [x.name for x in s]
    assert len(names) == len(set(names))
    return s


SAMPLES: dict[str, Sample] = {x.name: x for x in _samples()}

MQTT_SAMPLES: dict[str, bytes] = {
    # Valid JSON objects whose fields are hostile for what the gateway does with them next.
    "result_lone_surrogate_output": b'{"output":"\\ud800","signature":"0x00","miner":"'
    + MINER.encode()
    + b'"}',
    "result_deep_output_field": b'{"output":' + b"[" * DEEP + b"]" * DEEP + b',"signature":"","miner":""}',
    "delta_lone_surrogate": b'{"seq":0,"choice":0,"delta":{"content":"\\udc00"}}',
    "delta_huge_seq": b'{"seq":' + b"9" * 100_000 + b',"choice":0,"delta":"x"}',
    "delta_deep_delta": b'{"seq":0,"choice":0,"delta":' + b'{"a":' * 40_000 + b"}",
    "mqtt_over_limit": b'{"output":"' + b"x" * (3 * MIB) + b'","signature":"","miner":""}',
    # Controls: a parser that dropped everything would pass the rest.
    "control_result": b'{"output":"{}","signature":"0x00","miner":"' + MINER.encode() + b'"}',
    "control_delta": b'{"seq":0,"choice":0,"delta":{"content":"hi"}}',
}


LONG_INTS: dict[str, bytes] = {
    # Between the smallest int-digit limit an interpreter can be set to (640) and past the default
    # (4300): whether these parse must not depend on PYTHONINTMAXSTRDIGITS / sys.set_int_max_str_digits.
    f"int_{n}_digits{where}": raw
    for n in (700, 5000)
    for where, raw in (("", b"9" * n), ("_in_tool_parameters", _chat(params_json=_tool_with_parameters(
        '{"maximum":' + "9" * n + "}"))))
}  # fmt: skip


# --------------------------------------------------------------------------- the parsers under test


def _topic(builder: Callable[..., str]) -> str:
    """A well-formed topic from `node.stream.topics`, whatever levels its builder takes today."""
    kwargs: dict[str, Any] = {"chain_id": 31337, "hub": HUB, "request_id": 5}
    if "miner" in inspect.signature(builder).parameters:
        kwargs["miner"] = MINER
    return builder(**kwargs)


def outcome(parser: str, raw: bytes) -> str:
    """Feed `raw` to `parser`; the outcome line (see the module docstring). Other exceptions escape."""
    if parser == "gate":
        from node.gate import DOCUMENT_LIMITS, UntrustedJSON, load_json

        try:
            load_json(raw, DOCUMENT_LIMITS)
        except UntrustedJSON as exc:
            return f"refused UntrustedJSON {exc.reason} {exc}"
        return "accepted"
    if parser in ("input", "output"):
        from node.content.documents import parse_input_document, parse_output_document
        from node.content.errors import DocumentError, DocumentTooLarge

        try:
            (parse_input_document if parser == "input" else parse_output_document)(raw)
        except (DocumentError, DocumentTooLarge) as exc:
            return f"refused {type(exc).__name__} {exc}"
        return "accepted"
    if parser == "http":
        from node.gateway.errors import InvalidRequest
        from node.gateway.schemas import parse_chat_request, parse_completion_request, parse_json_body

        try:
            body = parse_json_body(raw)
            (parse_chat_request if "messages" in body else parse_completion_request)(body)
        except InvalidRequest as exc:
            return f"refused InvalidRequest {exc.code} {exc}"
        return "accepted"
    if parser in ("mqtt_delta", "mqtt_result"):
        from node.gateway.mqtt import parse_message
        from node.stream import topics

        topic = _topic(topics.delta_topic if parser == "mqtt_delta" else topics.result_topic)
        return "none" if parse_message(topic, raw) is None else "routed"
    if parser == "plain_json":  # the control: what every parser did before the gate
        json.loads(raw)
        return "accepted"
    raise SystemExit(f"unknown parser {parser!r}")


def sample_bytes(name: str) -> bytes:
    return SAMPLES[name].raw if name in SAMPLES else {**MQTT_SAMPLES, **LONG_INTS}[name]


def main(argv: list[str]) -> None:
    """`PARSER:SAMPLE ...`: one outcome line each, flushed, so a crash is pinned to its pair."""
    for pair in argv:
        parser, name = pair.split(":", 1)
        raw = sample_bytes(name)
        print(f"{pair}\tstart", flush=True)
        try:
            line = outcome(parser, raw)
        except Exception as exc:
            line = f"crash {type(exc).__name__}: {str(exc)[:300]}"
        print(f"{pair}\t{line[:500]}".replace("\n", " "), flush=True)


if __name__ == "__main__":
    sys.setrecursionlimit(10**6)  # how a real process with a raised limit segfaults on deep JSON
    main(sys.argv[1:])
