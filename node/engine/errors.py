"""The engine's two kinds of failure, apart from the adapter so the miner can tell them apart cheaply.

`EngineError` is the node's trouble (not started, dead, crashed, out of memory): no answer may be
published, because an "internal error" document would be a wrong answer the miner is slashed for.
Everything one request causes is instead an answer: `refusal` maps vLLM's refusal of a request to a
fixed `ParamError` code and message, never vLLM's own text (its wording carries the local
`max_model_len` and changes between versions), so every honest miner writes the same bytes.
"""

from __future__ import annotations

from node.engine.params import CONTEXT_EXCEEDED, ParamError


class EngineError(Exception):
    """The engine itself failed (not started, dead, crashed): no answer should be published."""


UNPROCESSABLE = "the engine could not process this input"
_CONTEXT_HINTS = ("maximum model length", "max_model_len", "context length", "maximum context", "too long")
_SCHEMA_HINTS = ("json", "schema", "grammar", "structured output", "xgrammar", "guided")


def refusal(exc: BaseException, schema_param: str = "tools") -> ParamError:
    """vLLM's refusal of one request as a fixed code and message (never its text, see module doc).

    `schema_param` is where the job's grammar came from: `tools` (a forced call) or `response_format`.
    """
    text = str(exc).lower()
    if any(hint in text for hint in _CONTEXT_HINTS):
        return ParamError("context_length_exceeded", CONTEXT_EXCEEDED)
    if any(hint in text for hint in _SCHEMA_HINTS):
        what = "the function's parameters schema" if schema_param == "tools" else "the response_format schema"
        return ParamError("invalid_request", f"{what} cannot be enforced as structured output", schema_param)
    return ParamError("input_unprocessable", UNPROCESSABLE)


__all__ = ["UNPROCESSABLE", "EngineError", "refusal"]
