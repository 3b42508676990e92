"""The one gate for untrusted JSON: every document, HTTP body and MQTT payload is parsed here.

A public network's nodes parse bytes written by strangers. Python's `json` module recurses once per
nesting level in C, so a 200 KB run of `[` overflows the C stack (SIGSEGV) where the recursion limit
has been raised, or raises `RecursionError` (not a `ValueError`) where it has not; huge strings,
millions of tiny elements and lone surrogates cost memory or break re-encoding later. So nothing is
handed to `json.loads` before one linear, non-recursive scan has checked its shape:

* **bytes** — checked before decoding (callers that read from a socket cap while reading, too);
* **nesting depth** — brackets counted outside strings, by one linear pass of C-level byte
  operations (`replace`, `split`, `translate`, `accumulate`: no recursion, no Python loop per byte);
* **string length** (in bytes) and **element count** (values and members, counted by their
  separators) — in the same pass;
* **UTF-8**, **duplicate keys**, **NaN/Infinity** (`NaN` literals and numbers that overflow a float),
  **lone surrogates** (`"\\ud800"`, which can never be written back as UTF-8) — while parsing.

Every refusal is an `UntrustedJSON` error with a `reason` code and a message that depends only on the
input bytes and the limits (never on paths, ports or local config), so two honest miners refusing the
same document write the same error output byte for byte.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

Reason = Literal[
    "too_large", "too_deep", "string_too_long", "too_many_items", "not_utf8", "invalid_json", "not_object"
]


class UntrustedJSON(ValueError):
    """Bytes refused by the gate; `reason` says which check failed."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class JsonLimits:
    """The bounds one kind of untrusted input is held to."""

    max_bytes: int
    max_depth: int = 32
    max_string_bytes: int = 1 << 20
    max_items: int = 1 << 18

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_depth, self.max_string_bytes, self.max_items) < 1:
            raise ValueError("every JSON limit must be at least 1")


MAX_NUMBER_DIGITS = 640
"""Longer digit runs are refused here, whatever `PYTHONINTMAXSTRDIGITS` says (640 is its minimum),
so the verdict on a huge integer never depends on a node's environment."""
# Every digit mapped to `0`, then one substring search (linear, unlike a `[0-9]{641}` regex that
# restarts at every digit): a run of more than MAX_NUMBER_DIGITS digits is a run of that many `0`s.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * (MAX_NUMBER_DIGITS + 1)

# Bytes that are neither a bracket nor a comma, deleted by `bytes.translate` to leave the skeleton.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[]{},")
# +1 for an opening bracket, -1 for a closing one: the running sum over the skeleton is the depth.
_DEPTH_STEP = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]
# A `\uD800`–`\uDFFF` escape: only then can a parsed string hold a surrogate (raw ones are not UTF-8).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _scan(raw: bytes, limits: JsonLimits) -> None:
    """Check depth, string length and element count before anything is parsed; C-speed, no recursion.

    Escaped backslashes and quotes are dropped first, so every remaining `"` opens or closes a string;
    splitting on `"` then puts string bodies at odd positions and the structure at even ones. Up to
    the first syntax error this is exactly how `json` reads the text, and `json` stops there, so the
    depth seen here bounds the depth `json` will recurse to.
    """
    parts = raw.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')
    longest = max(map(len, parts[1::2]), default=0)
    if longest > limits.max_string_bytes:
        raise UntrustedJSON("string_too_long", f"a string is longer than {limits.max_string_bytes} bytes")
    outside = b"".join(parts[0::2])
    if _LONG_RUN in outside.translate(_DIGITS_TO_ZERO):
        raise UntrustedJSON(
            "invalid_json", f"not valid JSON: a number has more than {MAX_NUMBER_DIGITS} digits"
        )
    skeleton = outside.translate(None, _NOT_STRUCTURE)
    if skeleton.count(b",") + 1 > limits.max_items:
        raise UntrustedJSON("too_many_items", f"more than {limits.max_items} JSON elements")
    depth = max(accumulate(map(_DEPTH_STEP.__getitem__, skeleton.replace(b",", b""))), default=0)
    if depth > limits.max_depth:
        raise UntrustedJSON("too_deep", f"JSON nesting deeper than {limits.max_depth} levels")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:32]!r} is out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _has_lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def load_json(raw: bytes, limits: JsonLimits) -> Any:
    """Parse untrusted bytes as strict JSON within `limits`; `UntrustedJSON` says why not."""
    if len(raw) > limits.max_bytes:
        raise UntrustedJSON("too_large", f"{len(raw)} bytes, over the {limits.max_bytes}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedJSON("not_utf8", f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    _scan(raw, limits)
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except RecursionError:  # unreachable after _scan with a sane max_depth; refuse, never crash
        raise UntrustedJSON("too_deep", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, int digit limit, duplicate keys, NaN/Infinity
        raise UntrustedJSON("invalid_json", f"not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text) is not None and _has_lone_surrogate(obj):
        raise UntrustedJSON("invalid_json", "not valid JSON: a string holds a lone UTF-16 surrogate")
    return obj


def load_json_object(raw: bytes, limits: JsonLimits) -> dict[str, Any]:
    """`load_json` for inputs that must be one JSON object."""
    obj = load_json(raw, limits)
    if not isinstance(obj, dict):
        raise UntrustedJSON("not_object", "the JSON value must be an object")
    return obj


def iter_members(obj: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of every object inside parsed JSON, walked with a stack, not recursion.

    For checks over requester-written JSON (a tool's or `response_format`'s schema) after the gate
    has bounded its depth; the order is fixed, so a check that stops at the first fault names the
    same fault on every node.
    """
    stack: list[Any] = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                stack.append(value)


DOCUMENT_LIMITS = JsonLimits(max_bytes=1 << 20, max_depth=32, max_string_bytes=1 << 20, max_items=1 << 18)
"""Input and output documents: one raw IPFS block (1 MiB); tool schemas need some depth."""

HTTP_BODY_LIMITS = JsonLimits(max_bytes=(1 << 20) + (64 << 10), max_depth=32, max_items=1 << 18)
"""API request bodies: a document's worth of parameters plus transport fields."""

MQTT_LIMITS = JsonLimits(
    max_bytes=(1 << 21) + (64 << 10), max_depth=8, max_string_bytes=(1 << 21) + 1024, max_items=4096
)
"""MQTT messages: a result carries a whole output document as one string (escaped: up to ~2×)."""


__all__ = [
    "DOCUMENT_LIMITS",
    "HTTP_BODY_LIMITS",
    "MAX_NUMBER_DIGITS",
    "MQTT_LIMITS",
    "JsonLimits",
    "UntrustedJSON",
    "iter_members",
    "load_json",
    "load_json_object",
]
