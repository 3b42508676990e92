"""Document parsing throughput on ~1 MiB input documents: before vs after the gate, side by side.

"before" is the parser documents used until commit ce99bbe (`git show ce99bbe:node/content/documents.py`):
`json.loads(text, object_pairs_hook=no_dup, parse_constant=reject)` then a `canonical_json(obj)`
re-encode to catch lone surrogates. "after" is today's `node.content.documents.load_json`, which goes
through `node.gate` (byte-level shape scan, then `json.loads` with strict hooks). Both are timed on
the JSON layer alone and on the whole `parse_input_document` (JSON + pydantic validation), runs
interleaved before/after so that drift on a shared machine hits both alike.

Inputs: a chat document with many messages of ordinary text (ASCII and non-ASCII), a completion
document whose prompt is a long list of token ids (number-heavy), and a hostile but valid chat
document whose tool schema lists 640-digit numbers (the longest the gate accepts).
Prints median / min / max per case and the after/before ratio of medians; the LAST line is one JSON
object `{"<input>_<layer>_ratio": ..., "<input>_<layer>_min_ratio": ...}` (< 1: after is faster;
the ratio of minima is the steadier one on a busy machine).

    .venv/bin/python tests/bench/parser.py [--runs N]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from node.content.documents import (
    MAX_PROMPT_TOKEN_IDS,
    canonical_json,
    load_json,
    parse_input_document,
    validate_input_document,
)
from node.content.errors import MAX_DOCUMENT_BYTES, DocumentError

# --------------------------------------------------------------------------- the previous parser (ce99bbe)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_json_before(raw: bytes) -> Any:
    """`node.content.documents.load_json` as of ce99bbe (size check, UTF-8, strict json, re-encode)."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise DocumentError("", "too large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError("", f"document is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
        canonical_json(obj)  # rejects lone surrogates, which could never be re-encoded
    except ValueError as exc:
        raise DocumentError("", f"document is not valid JSON: {exc}") from exc
    return obj


def parse_input_document_before(raw: bytes) -> Any:
    return validate_input_document(load_json_before(raw))


# --------------------------------------------------------------------------- inputs

WORDS = ["the", "model", "answers", "each", "question", "briefly", "and", "cites", "the", "relevant",
         "passage", "where", "it", "can;", "façade", "naïve", "coöperate", "—", "東京", "café",
         "😀", "✓"]  # fmt: skip


def _fill(build: Callable[[int], dict[str, Any]], target: int) -> bytes:
    """The largest `build(n)` whose canonical bytes fit in `target` bytes (binary search on n)."""
    lo, hi = 1, 1
    while len(canonical_json(build(hi))) <= target and hi < 1 << 24:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if len(canonical_json(build(mid))) <= target else (lo, mid)
    return canonical_json(build(lo))


def chat_document(target: int) -> bytes:
    """1000 messages (under the 1024 limit) of ordinary text, each about `n` words long."""

    def build(n: int) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful assistant."}]
        for i in range(1000):
            text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n + i % 20))
            messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}: {text}"})
        messages.append({"role": "user", "content": "Summarise the conversation."})
        return {"v": 1, "type": "chat", "model": "SmolLM2-135M-Instruct", "messages": messages,
                "params": {"max_tokens": 256, "temperature": 0.7, "seed": 7}}  # fmt: skip

    return _fill(build, target)


def token_prompt_document(target: int) -> bytes:
    """One prompt of 6-digit token ids (a 200k vocabulary), up to the 131072-id limit (~0.9 MB)."""

    def build(n: int) -> dict[str, Any]:
        prompt = [100_000 + (i * 7919) % 100_000 for i in range(min(n, MAX_PROMPT_TOKEN_IDS))]
        return {"v": 1, "type": "completion", "model": "SmolLM2-135M-Instruct", "prompt": prompt,
                "params": {"max_tokens": 16}}  # fmt: skip

    return _fill(build, target)


def long_numbers_document(target: int) -> bytes:
    """Hostile but valid: a tool schema listing numbers of 640 digits (the most the gate takes)."""

    def build(n: int) -> dict[str, Any]:
        tool = {"type": "function", "function": {"name": "f", "parameters": {"enum": [10**639] * n}}}
        return {"v": 1, "type": "chat", "model": "SmolLM2-135M-Instruct",
                "messages": [{"role": "user", "content": "hi"}], "params": {"tools": [tool]}}  # fmt: skip

    return _fill(build, target)


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[bytes], Any], raw: bytes) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn(raw)
    return time.perf_counter() - t0


def compare(
    name: str, raw: bytes, before: Callable[[bytes], Any], after: Callable[[bytes], Any], runs: int
) -> tuple[float, float]:
    """Time both on `raw`, interleaved; (after/before of the medians, of the minima)."""
    assert json.dumps(before(raw), sort_keys=True, default=str) == json.dumps(
        after(raw), sort_keys=True, default=str
    ), f"{name}: before and after disagree"
    b: list[float] = []
    a: list[float] = []
    for i in range(runs):  # interleaved, alternating which goes first
        pair = [(b, before), (a, after)] if i % 2 == 0 else [(a, after), (b, before)]
        for out, fn in pair:
            out.append(timed(fn, raw))
    mb = len(raw) / 1e6
    ratio = statistics.median(a) / statistics.median(b)
    min_ratio = min(a) / min(b)
    for label, xs in (("before", b), ("after", a)):
        med = statistics.median(xs)
        print(
            f"  {name:<26} {label:<6} median {med * 1e3:7.2f} ms  min {min(xs) * 1e3:7.2f}  "
            f"max {max(xs) * 1e3:7.2f}  ({mb / med:6.1f} MB/s)"
        )
    print(f"  {name:<26} after/before = {ratio:.3f} (medians), {min_ratio:.3f} (minima)")
    return ratio, min_ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args(argv)
    inputs = {
        "chat": chat_document(MAX_DOCUMENT_BYTES),
        "token_prompt": token_prompt_document(MAX_DOCUMENT_BYTES),
        "long_numbers": long_numbers_document(MAX_DOCUMENT_BYTES),
    }
    summary: dict[str, Any] = {"runs": args.runs}
    print(
        f"parser bench: before = ce99bbe's load_json, after = node.gate; {args.runs} runs each, interleaved"
    )
    for name, raw in inputs.items():
        print(f"{name}: {len(raw)} bytes")
        cases = {
            "json": ("load_json", load_json_before, load_json),
            "parse": ("parse_input_document", parse_input_document_before, parse_input_document),
        }
        for layer, (label, before, after) in cases.items():
            median_ratio, min_ratio = compare(f"{name} {label}", raw, before, after, args.runs)
            summary[f"{name}_{layer}_ratio"] = round(median_ratio, 3)
            summary[f"{name}_{layer}_min_ratio"] = round(min_ratio, 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
