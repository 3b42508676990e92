"""Shared Hypothesis settings and strategies for the parser fuzz tests (test_gate, test_fuzz_parsers).

Runs are derandomized by default: CI (2 cores) sees the same modest set of examples every time, and a
failure prints its falsifying example plus a `@reproduce_failure` blob. For a wider search set
`INFERD_FUZZ_SEED` (any integer, printed at the start of the run) and `INFERD_FUZZ_EXAMPLES`, e.g.
`INFERD_FUZZ_SEED=$RANDOM INFERD_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/unit/test_fuzz_parsers.py -s`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st

F = TypeVar("F", bound=Callable[..., Any])

_SEED = os.environ.get("INFERD_FUZZ_SEED")
_EXAMPLES = int(os.environ.get("INFERD_FUZZ_EXAMPLES", "0"))
if _SEED is not None:
    print(f"\nfuzz: INFERD_FUZZ_SEED={_SEED} (re-run with the same value to repeat this search)")


def fuzz(max_examples: int) -> Callable[[F], F]:
    """`@settings` for one fuzz test: modest, deterministic unless INFERD_FUZZ_SEED is set."""

    def wrap(test: F) -> F:
        configured = settings(
            max_examples=_EXAMPLES or max_examples,
            derandomize=_SEED is None,
            deadline=None,
            print_blob=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(test)
        return seed(int(_SEED))(configured) if _SEED is not None else configured

    return wrap


# --------------------------------------------------------------------------- JSON values

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)


def json_values(max_leaves: int = 25) -> st.SearchStrategy[Any]:
    """Any JSON value Python's `json` writes (no lone surrogates: Hypothesis text never has them)."""
    return st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
        max_leaves=max_leaves,
    )


def json_objects(max_leaves: int = 25) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(max_size=8), json_values(max_leaves), max_size=6)


@st.composite
def json_texts(draw: st.DrawFn, values: st.SearchStrategy[Any] | None = None) -> tuple[Any, str]:
    """(value, text): a value and one of its spellings (indent, separators, escaping vary)."""
    value = draw(values if values is not None else json_values())
    indent = draw(st.sampled_from([None, 0, 1, 2, "\t"]))
    compact = draw(st.booleans())
    separators = (",", ":") if compact and indent is None else None
    text = json.dumps(value, indent=indent, separators=separators, ensure_ascii=draw(st.booleans()))
    return value, text


# --------------------------------------------------------------------------- JSON-ish token soup

TOKENS = [
    "[", "]", "{", "}", ",", ":", '"', "\\", '"a"', '"k":', "0", "-1", "1.5", "1e999", "-1e400", "1e-999",
    "NaN", "Infinity", "-Infinity", "true", "null", '"\\ud800"', '"\\udc00"', '"\\ud83d\\ude00"',
    '"\\u0000"', '"\\"', '"\\\\"', '"[{"', " ", "\n", "\x00", "\ufeff", "é", "9" * 5000,
]  # fmt: skip


def json_soup(max_size: int = 60) -> st.SearchStrategy[bytes]:
    """Near-JSON: structural tokens, hostile literals and escapes in any order, as UTF-8."""
    return st.lists(st.sampled_from(TOKENS), max_size=max_size).map(lambda toks: "".join(toks).encode())


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with a few bytes inserted, deleted or replaced (any byte values, so invalid UTF-8 too)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([t.encode() for t in TOKENS]))
        if op == "insert":
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos : pos + len(chunk)]
        else:
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


def containers_depth(value: Any) -> int:
    """Nesting depth as the gate counts it: a scalar is 0, `[]` is 1."""
    if isinstance(value, list):
        return 1 + max((containers_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((containers_depth(v) for v in value.values()), default=0)
    return 0


def separators(value: Any) -> int:
    """Commas between elements and members, over the whole value."""
    if isinstance(value, list):
        return max(len(value) - 1, 0) + sum(separators(v) for v in value)
    if isinstance(value, dict):
        return max(len(value) - 1, 0) + sum(separators(v) for v in value.values())
    return 0


def strings_of(value: Any) -> list[str]:
    """Every string in the value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings_of(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_of(v)]]
    return []
