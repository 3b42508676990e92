"""node.gate: what it accepts equals `json.loads`, and each limit refuses exactly what is over it.

Property tests (Hypothesis; settings and seeds in tests/unit/fuzzing.py) pin the gate against two
references: `json.loads` itself for everything within limits, and the strict parser documents used
before the gate (`git show ce99bbe:node/content/documents.py`: json.loads with duplicate keys and
NaN/Infinity refused, then a canonical re-encode that refuses lone surrogates and overflowing floats)
for everything else. Hostile byte strings in a child process: tests/unit/test_hostile_corpus.py.
"""

from __future__ import annotations

import contextlib
import json
import re
from types import SimpleNamespace
from typing import Any, get_args
from unittest import mock

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from node import gate
from node.gate import (
    DOCUMENT_LIMITS,
    HTTP_BODY_LIMITS,
    MAX_NUMBER_DIGITS,
    MQTT_LIMITS,
    JsonLimits,
    Reason,
    UntrustedJSON,
    load_json,
    load_json_object,
)
from tests.unit.fuzzing import (
    containers_depth,
    fuzz,
    json_objects,
    json_soup,
    json_texts,
    json_values,
    mutated,
    separators,
    strings_of,
)

LONG_DIGITS = re.compile(rb"[0-9]{%d}" % (MAX_NUMBER_DIGITS + 1))
WIDE = JsonLimits(max_bytes=1 << 20, max_depth=10_000, max_string_bytes=1 << 20, max_items=1 << 20)
"""Limits nothing generated here reaches, for properties about one limit at a time."""


def refusal(raw: bytes, limits: JsonLimits) -> UntrustedJSON | None:
    try:
        load_json(raw, limits)
    except UntrustedJSON as exc:
        return exc
    return None


def strict_reference(raw: bytes) -> Any:
    """The document parser before the gate (commit ce99bbe), minus its size check: ValueError if refused."""

    def no_dup(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def reject(name: str) -> Any:
        raise ValueError(name)

    obj = json.loads(raw.decode("utf-8"), object_pairs_hook=no_dup, parse_constant=reject)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    return obj


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values (`==` plus NaN-free float identity, `1` vs `1.0` kept apart)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --------------------------------------------------------------------------- within limits: json.loads


@fuzz(100)
@given(json_texts())
def test_within_limits_equals_json_loads(value_text: tuple[Any, str]) -> None:
    _, text = value_text
    raw = text.encode()
    expected = json.loads(text)
    assume(containers_depth(expected) <= DOCUMENT_LIMITS.max_depth)
    assert same_json(load_json(raw, DOCUMENT_LIMITS), expected)


@fuzz(50)
@given(json_objects())
def test_load_json_object_accepts_objects_and_refuses_other_values(obj: dict[str, Any]) -> None:
    assert same_json(load_json_object(json.dumps(obj).encode(), DOCUMENT_LIMITS), obj)
    for other in ([obj], "x", 1, None):
        with pytest.raises(UntrustedJSON) as info:
            load_json_object(json.dumps(other).encode(), DOCUMENT_LIMITS)
        assert info.value.reason == "not_object"


# --------------------------------------------------------------------------- each limit, exactly


@st.composite
def nested(draw: st.DrawFn) -> tuple[Any, int]:
    """A JSON value wrapped in `extra` more arrays/objects; (value, its depth)."""
    value = draw(json_values(10))
    for _ in range(draw(st.integers(min_value=0, max_value=70))):
        key = draw(st.text(max_size=3))
        value = draw(st.sampled_from([[value], {key: value}, [1, value, "]"], {"[": 0, key + "{": value}]))
    return value, containers_depth(value)


@fuzz(60)
@given(nested(), st.integers(min_value=1, max_value=64), st.booleans())
@example(([[[[]]]], 4), 3, False)
@example(([[[[]]]], 4), 4, False)
def test_too_deep_iff_depth_over_the_limit(
    value_depth: tuple[Any, int], max_depth: int, pretty: bool
) -> None:
    value, depth = value_depth
    raw = json.dumps(value, indent=1 if pretty else None).encode()
    exc = refusal(raw, JsonLimits(max_bytes=1 << 20, max_depth=max_depth))
    if depth > max_depth:
        assert exc is not None and exc.reason == "too_deep"
    else:
        assert exc is None


@fuzz(40)
@given(st.integers(min_value=33, max_value=300_000), st.sampled_from(["[", '{"a":', '[{"k":', "[1,"]))
@example(200_000, "[")
def test_deep_prefix_is_refused_whatever_follows(levels: int, opener: str) -> None:
    """Unclosed nesting (what a stack-overflow payload looks like) is refused as too deep, at once."""
    raw = (opener * levels).encode()
    assume(len(raw) <= DOCUMENT_LIMITS.max_bytes)
    exc = refusal(raw, DOCUMENT_LIMITS)
    assert exc is not None and exc.reason in ("too_deep", "too_many_items"), exc


@fuzz(100)
@given(st.integers(min_value=0, max_value=5000), st.sampled_from("[]{},:"))
def test_structural_characters_inside_strings_do_not_count(n: int, char: str) -> None:
    text = json.dumps({"s": char * n, "t": ["\\" + char * n, '"' + char]})
    assert load_json(text.encode(), JsonLimits(max_bytes=1 << 20, max_depth=2, max_items=3)) == json.loads(
        text
    )


@fuzz(80)
@given(json_values(40), st.integers(min_value=1, max_value=40))
def test_too_many_items_iff_more_separators_than_the_limit(value: Any, max_items: int) -> None:
    """The gate counts elements by their separators: a value has `commas + 1` of them."""
    raw = json.dumps(value).encode()
    exc = refusal(raw, JsonLimits(max_bytes=1 << 20, max_depth=10_000, max_items=max_items))
    if separators(value) + 1 > max_items:
        assert exc is not None and exc.reason == "too_many_items"
    else:
        assert exc is None


PLAIN_TEXT = st.text(st.characters(exclude_characters='"\\'), max_size=20)
"""Strings without quotes or backslashes: written at exactly their escaped UTF-8 length."""


@fuzz(80)
@given(
    st.recursive(
        st.integers() | PLAIN_TEXT,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(PLAIN_TEXT, c, max_size=4),
    ),
    st.integers(min_value=1, max_value=40),
    st.booleans(),
)
def test_string_too_long_iff_a_written_string_is_over_the_limit(
    value: Any, max_bytes: int, ascii_: bool
) -> None:
    """Strings (keys too) are measured in bytes as written (`\\u00e9` is 6, `é` 2)."""
    raw = json.dumps(value, ensure_ascii=ascii_).encode()
    longest = max(
        (len(json.dumps(s, ensure_ascii=ascii_).encode()) - 2 for s in strings_of(value)), default=0
    )
    exc = refusal(raw, JsonLimits(max_bytes=1 << 20, max_depth=10_000, max_string_bytes=max_bytes))
    if longest > max_bytes:
        assert exc is not None and exc.reason == "string_too_long"
    else:
        assert exc is None


@fuzz(60)
@given(json_values(15), st.integers(min_value=1, max_value=40), st.booleans())
def test_a_string_within_the_limit_as_written_is_never_refused(
    value: Any, max_bytes: int, ascii_: bool
) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_).encode()
    longest = max(
        (len(json.dumps(s, ensure_ascii=ascii_).encode()) - 2 for s in strings_of(value)), default=0
    )
    assume(longest <= max_bytes)
    assert refusal(raw, JsonLimits(max_bytes=1 << 20, max_depth=10_000, max_string_bytes=max_bytes)) is None


@fuzz(100)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=100))
def test_too_large_is_checked_first_on_any_bytes(raw: bytes, max_bytes: int) -> None:
    exc = refusal(raw, JsonLimits(max_bytes=max_bytes))
    if len(raw) > max_bytes:
        assert exc is not None and exc.reason == "too_large"
    else:
        assert exc is None or exc.reason != "too_large"


@pytest.mark.parametrize("limits", [DOCUMENT_LIMITS, HTTP_BODY_LIMITS, MQTT_LIMITS])
def test_byte_limit_is_exact(limits: JsonLimits) -> None:
    at_limit = b"[" + b" " * (limits.max_bytes - 2) + b"]"
    assert load_json(at_limit, limits) == []
    with pytest.raises(UntrustedJSON) as info:
        load_json(at_limit + b" ", limits)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("limits", [DOCUMENT_LIMITS, HTTP_BODY_LIMITS, MQTT_LIMITS])
def test_depth_limit_is_exact(limits: JsonLimits) -> None:
    d = limits.max_depth
    assert load_json(b"[" * d + b"]" * d, limits) is not None
    with pytest.raises(UntrustedJSON) as info:
        load_json(b"[" * (d + 1) + b"]" * (d + 1), limits)
    assert info.value.reason == "too_deep"


def test_mqtt_limits_take_a_whole_escaped_output_document() -> None:
    """A result message carries a 1 MiB output document as one string; escaping may double it."""
    doc = '"' * ((1 << 20) // 2) + "\\" * ((1 << 20) // 2)
    raw = json.dumps({"output": doc, "signature": "0x" + "ab" * 65, "miner": "0x" + "cd" * 20}).encode()
    assert load_json_object(raw, MQTT_LIMITS)["output"] == doc


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_bytes": 0},
        {"max_bytes": 1, "max_depth": 0},
        {"max_bytes": 1, "max_string_bytes": 0},
        {"max_bytes": 1, "max_items": 0},
    ],
)
def test_limits_below_one_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        JsonLimits(**kwargs)


# --------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    "raw",
    [b"NaN", b"[Infinity]", b'{"a":-Infinity}', b"1e400", b"[-1e999]", b"9" * 4301, b"-" + b"9" * 641,
     b"1." + b"0" * 641, b'{"a":1,"a":1}',
     b'"\\ud800"', b'"\\uDFFF"', b'{"\\udc00":0}', b'["\\ude00\\ud83d"]', b"\xef\xbb\xbf{}", b'"\x00"',
     b"", b" ", b"[1,]", b"{'a':1}", b"[1] [2]"],
)  # fmt: skip
def test_strictness(raw: bytes) -> None:
    exc = refusal(raw, DOCUMENT_LIMITS)
    assert exc is not None and exc.reason == "invalid_json"


@pytest.mark.parametrize("raw", [b"\xff", b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'["\xf4\x90\x80\x80"]'])
def test_not_utf8(raw: bytes) -> None:
    exc = refusal(raw, DOCUMENT_LIMITS)
    assert exc is not None and exc.reason == "not_utf8"


@pytest.mark.parametrize(
    "raw", [b'"\\ud83d\\ude00"', b"1e-999", b"-0", b"0.0000001", b'"\\u0000"', b"9" * 640, b"1." + b"0" * 639]
)
def test_accepted_edge_cases(raw: bytes) -> None:
    assert same_json(load_json(raw, DOCUMENT_LIMITS), json.loads(raw))


# --------------------------------------------------------------------------- anything at all


def check_against_reference(raw: bytes) -> None:
    """The gate refuses with a known reason or returns what the pre-gate strict parser returns."""
    try:
        got = load_json(raw, WIDE)
    except UntrustedJSON as exc:
        assert exc.reason in get_args(Reason)
        assert str(exc) == str(refusal(raw, WIDE)), "the same bytes get the same message"
        try:
            strict_reference(raw)
        except (ValueError, RecursionError):
            return
        if f"more than {MAX_NUMBER_DIGITS} digits" in str(exc) and LONG_DIGITS.search(raw):
            return  # the gate's own number bound, tighter than the interpreter's (which varies)
        raise AssertionError(f"the gate refused what the strict parser accepts: {exc}") from None
    try:
        expected = strict_reference(raw)
    except (ValueError, RecursionError) as exc:
        raise AssertionError(f"the gate accepted what the strict parser refuses: {exc}") from None
    assert same_json(got, expected)


@fuzz(150)
@given(json_soup())
@example(b'["\\"[[[[[[[[[[["]')
@example(b'"\\\\"[[[')
def test_json_soup_matches_the_strict_reference(raw: bytes) -> None:
    check_against_reference(raw)


@fuzz(100)
@given(st.binary(max_size=300))
def test_any_bytes_match_the_strict_reference(raw: bytes) -> None:
    check_against_reference(raw)


@fuzz(50)
@given(st.data())
def test_mutated_json_matches_the_strict_reference(data: st.DataObject) -> None:
    _, text = data.draw(json_texts())
    check_against_reference(data.draw(mutated(text.encode())))


# --------------------------------------------------------------------------- the scan bounds json's recursion


class DepthTracker(json.JSONDecoder):
    """`json`'s own grammar (its pure-Python scanner), recording how deep it recursed before it stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = self.deepest = 0
        for name in ("parse_array", "parse_object"):  # what json's scanner calls at each `[` and `{`
            setattr(self, name, self._tracked(getattr(self, name)))
        self.scan_once = json.scanner.py_make_scanner(self)  # type: ignore[attr-defined]

    def _tracked(self, parse: Any) -> Any:
        def inner(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            self.deepest = max(self.deepest, self.depth)
            try:
                return parse(*args, **kwargs)
            finally:
                self.depth -= 1

        return inner


def json_recursion_depth(raw: bytes) -> int:
    """How many arrays/objects deep `json` gets into `raw` (valid or not) before it returns or fails."""
    tracker = DepthTracker()
    with contextlib.suppress(ValueError):
        tracker.decode(raw.decode("utf-8"))
    return tracker.deepest


TRICKY_TEXT = st.text(st.sampled_from('\\"[]{},:u0é'), max_size=8)
"""Strings that are all escapes and brackets: where a scan could mistake a string's end."""


@st.composite
def truncated_deep_json(draw: st.DrawFn) -> bytes:
    """Nested JSON full of tricky strings, cut anywhere and followed by a little soup."""
    value = draw(
        st.recursive(
            TRICKY_TEXT | st.integers(),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(TRICKY_TEXT, c, max_size=3),
            max_leaves=12,
        )
    )
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        key = draw(TRICKY_TEXT)
        value = draw(st.sampled_from([[value], {key: value}, [key, value], {key: key, "": value}]))
    text = json.dumps(value, ensure_ascii=draw(st.booleans())).encode()
    cut = draw(st.integers(min_value=0, max_value=len(text)))
    return text[:cut] + draw(json_soup(6))


@fuzz(100)
@given(truncated_deep_json(), st.data())
@example(b'["\\\\"[[[[', None)
@example(b'["\\\\\\"[[[[', None)
def test_the_scan_keeps_json_from_recursing_past_the_limit(raw: bytes, data: Any) -> None:
    """Soundness of the pre-parse scan: where `json` would go N levels deep, under a limit below N
    the gate refuses without ever calling `json.loads`.

    If the scan ever under-counted (a quote it took for a string boundary that `json` does not,
    say), `json` would recurse past `max_depth`: on 200 KB of nesting, a SIGSEGV.
    """
    deepest = json_recursion_depth(raw)
    assume(deepest >= 2)
    max_depth = deepest - 1 if data is None else data.draw(st.integers(min_value=1, max_value=deepest - 1))
    calls: list[str] = []

    def spy(text: str, **kwargs: Any) -> Any:
        calls.append(text)
        return json.loads(text, **kwargs)

    with mock.patch.object(gate, "json", SimpleNamespace(loads=spy, dumps=json.dumps)):
        exc = refusal(raw, JsonLimits(max_bytes=1 << 20, max_depth=max_depth, max_items=1 << 20))
    assert exc is not None, (deepest, max_depth)
    assert not calls, (
        f"json.loads was handed input it recurses {deepest} deep into, over a limit of {max_depth}"
    )
