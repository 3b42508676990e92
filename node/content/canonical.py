"""Canonical bytes of documents, chosen by each document's own version `"v"`.

A document's CID (and the digest on chain) is the sha2-256 of its canonical bytes, so every producer
must write the same document as the same bytes, and every verifier (a Python node, a browser, a Go
indexer) must be able to rebuild those bytes from the parsed document. Which encoding a document
uses is fixed by its version, forever: a stored document keeps its CID whatever version writers use.

* **Version 3** (what gateways and miners write now, `CURRENT_VERSION`) is **RFC 8785, the JSON
  Canonicalization Scheme** (JCS), encoded by the `rfc8785` package so that any language's JCS
  library (npm `canonicalize`, Go `github.com/gowebpki/jcs`, Python `rfc8785`) rebuilds the exact
  bytes from the parsed JSON: object keys sorted by their UTF-16 code units; no whitespace; strings
  as UTF-8 with only `"`, `\\` and the control characters escaped (`\\n`, `\\u001f`); numbers as
  ECMAScript writes them: the shortest round-trip digits, integral values with no `.0` (`1.0` is
  `1`, a logprob of `-9999.0` is `-9999`), an exponent only below 1e-6 (`1e-7`, not `1e-07`), `-0`
  as `0`. Every number must lie within ±(2^53 − 1) (`MAX_SAFE_INTEGER`, I-JSON): beyond that
  a double holds integers only approximately, so a JavaScript verifier would parse a different
  value and hash different bytes (`2^60` reads back as `1152921504606847000`), and JCS writes a large
  integral float as an integer (`1e20` as `100000000000000000000`), which Python reads back as an
  int. Such a document is refused (`DocumentError` naming the field, e.g. `params.seed`), never
  silently rounded; see `find_unsafe_number`. (Document floats are small: logprobs, sampling
  parameters; only free-form JSON such as a tool's schema could hold a larger number.)
* **Versions 1 and 2** (`LEGACY_VERSIONS`) keep the encoder they were written with
  (`canonical_json`): keys sorted by code point, separators `,` and `:`, non-ASCII as itself,
  floats in Python's `repr` form (`1.0`, `1e-07`, `1e+16`), integers of any size. It differs from
  JCS only in floats (every integral or exponent float) and in the order of keys beyond U+FFFF
  (an emoji sorts after `ｱ` U+FF71 by code point, before it by UTF-16), so a v1/v2 document is
  always re-encoded with this function and never with JCS.

NaN, infinities and lone surrogates are refused by both. `pydantic`'s `model_dump(mode="json")` feeds
both encoders: floats stay floats and ints stay ints, and a float field accepts a JSON integer (`1`
parses back to `1.0`), so a v3 document that JCS wrote as `"temperature":1` re-encodes to the same
bytes. Which fields are written (None omitted, `null` kept where a reader needs it) is the
documents' concern (`node.content.documents`); this module only turns their JSON data into bytes.

`to_canonical_bytes(doc)` is the one entry point for documents: it dispatches on `doc.v`, and the
1 MiB block limit applies to its result.
"""

from __future__ import annotations

import json
from typing import Any, Final

import rfc8785
from pydantic import BaseModel

from node.content.errors import MAX_DOCUMENT_BYTES, DocumentError, DocumentTooLarge

DOCUMENT_VERSION: Final = 1
"""Version 1: every document written before version 2 (legacy encoding)."""
DOCUMENT_VERSION_2: Final = 2
"""Version 2: a chat document that uses any of `V2_PARAMS` (legacy encoding)."""
DOCUMENT_VERSION_3: Final = 3
"""Version 3: RFC 8785 bytes; any parameter of its document type."""
CURRENT_VERSION: Final = DOCUMENT_VERSION_3
"""The version gateways and miners write new documents in."""
LEGACY_VERSIONS = (DOCUMENT_VERSION, DOCUMENT_VERSION_2)
"""Versions encoded with `canonical_json`, kept byte for byte so their CIDs never change."""
SUPPORTED_VERSIONS = (DOCUMENT_VERSION, DOCUMENT_VERSION_2, DOCUMENT_VERSION_3)
MAX_SAFE_INTEGER = (1 << 53) - 1
"""The largest integer a version-3 document may hold (and its negation the smallest)."""
UNSAFE_NUMBER = (
    f"must be a number within ±{MAX_SAFE_INTEGER} (2^53 - 1) in a version-3 document: RFC 8785 numbers "
    "are IEEE doubles, which hold larger integers only approximately, so other languages would read "
    "a different value"
)


def canonical_json(obj: Any) -> bytes:
    """The version-1/2 encoding of JSON-able data (see module docstring); ValueError if impossible."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a "\ud800" escape
        raise ValueError(f"string is not valid Unicode (lone surrogate at {exc.start})") from exc


class UnsafeNumber(ValueError):
    """A number beyond ±`MAX_SAFE_INTEGER` in data for a version-3 document; `field` names it."""

    def __init__(self, field: str) -> None:
        self.field = field
        super().__init__(f"{field}: {UNSAFE_NUMBER}" if field else UNSAFE_NUMBER)


def jcs_json(obj: Any) -> bytes:
    """The version-3 encoding (RFC 8785) of JSON-able data.

    UnsafeNumber names the first number beyond ±(2^53 - 1); ValueError for NaN, infinities, lone
    surrogates or non-string keys.
    """
    if (field := find_unsafe_number(obj)) is not None:
        raise UnsafeNumber(field)
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(str(exc)) from None


def encode_json(obj: Any, v: int) -> bytes:
    """JSON-able data as the canonical bytes of document version `v` (ValueError if unknown)."""
    if v == DOCUMENT_VERSION_3:
        return jcs_json(obj)
    if v in LEGACY_VERSIONS:
        return canonical_json(obj)
    raise ValueError(f"unknown document version {v!r}; known: {', '.join(map(str, SUPPORTED_VERSIONS))}")


def _unsafe(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
    )


def find_unsafe_number(obj: Any) -> str | None:
    """The path (`params.seed`, `a.b[2]`) of the first number beyond ±(2^53 - 1), or None.

    Integers and floats alike: JCS writes an integral float as an integer (`1e20` as
    `100000000000000000000`), which every reader then parses as that integer. Walks the data in its
    own order without recursion (the gate bounds its size and depth), so two nodes reading the same
    bytes name the same field; `""` is the value itself. A first pass looks without building paths.
    """
    stack: list[Any] = [obj]
    found = False
    while stack and not found:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        else:
            found = _unsafe(value)
    if not found:
        return None
    paths: list[tuple[str, Any]] = [("", obj)]
    while paths:
        path, value = paths.pop()
        if isinstance(value, dict):
            paths.extend(reversed([(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]))
        elif isinstance(value, list):
            paths.extend(reversed([(f"{path}[{i}]", v) for i, v in enumerate(value)]))
        elif _unsafe(value):
            return path
    return None  # pragma: no cover - the first pass found one


def to_canonical_bytes(doc: BaseModel) -> bytes:
    """The canonical bytes of a document, in the encoding of its own `v`.

    DocumentTooLarge over 1 MiB; DocumentError if it cannot be encoded (an unknown `v`, a number
    beyond ±(2^53 - 1) in a version-3 document: the error names the field).
    """
    v = getattr(doc, "v", None)
    if not isinstance(v, int) or isinstance(v, bool) or v not in SUPPORTED_VERSIONS:
        raise DocumentError("v", f"must be one of {', '.join(map(str, SUPPORTED_VERSIONS))}, got {v!r}")
    try:
        data = encode_json(doc.model_dump(mode="json"), v)
    except UnsafeNumber as exc:
        raise DocumentError(exc.field, UNSAFE_NUMBER) from None
    except ValueError as exc:
        raise DocumentError("", str(exc)) from exc
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge(len(data))
    return data


__all__ = [
    "CURRENT_VERSION",
    "DOCUMENT_VERSION",
    "DOCUMENT_VERSION_2",
    "DOCUMENT_VERSION_3",
    "LEGACY_VERSIONS",
    "MAX_SAFE_INTEGER",
    "SUPPORTED_VERSIONS",
    "UNSAFE_NUMBER",
    "UnsafeNumber",
    "canonical_json",
    "encode_json",
    "find_unsafe_number",
    "jcs_json",
    "to_canonical_bytes",
]
