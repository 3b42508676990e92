"""Input-document parameters mapped to vLLM sampling arguments, checked against the model.

The document models already enforce OpenAI's ranges; what is left here needs the model and the
rendered prompt: the context left for `max_tokens`, token ids in `logit_bias` against the vocab,
`suffix` against a fill-in-the-middle vocabulary. A failed check is a `ParamError` that the engine
writes into the output document (`error.code` / `error.message`), never an exception to the miner.

Messages depend only on the input and the model (its tokenizer, its vocabulary), never on local
settings such as `max_model_len`, so two honest miners refusing the same input write the same bytes.

The result is plain data (`SamplingSpec`), so the mapping is unit-tested without vLLM;
`SamplingSpec.kwargs()` is what `vllm.SamplingParams(**...)` receives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from node.content.documents import MAX_TOKENS, ChatParams, CompletionParams
from node.gate import iter_members

CONTEXT_EXCEEDED = "the prompt leaves no room for a completion in this model's context window"
"""One text for every way a prompt can be too long (no counts: they would depend on local settings)."""
SEED_MODULUS = (1 << 63) - 1024  # vLLM gives child i of n the seed `seed + i`: stay inside int64
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


class ParamError(ValueError):
    """A parameter this model or prompt cannot honour; becomes the output document's `error`."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        self.code = code
        self.param = param
        self.message = f"{param}: {message}" if param else message
        super().__init__(self.message)


def seed_from_digest(digest: bytes) -> int:
    """The seed of a request that gave none: the input digest's first 8 bytes (big-endian)."""
    return normalize_seed(int.from_bytes(digest[:8], "big"))


def normalize_seed(seed: int) -> int:
    """Any document seed (-2^63 .. 2^64) as a non-negative seed vLLM accepts (-1 means random there)."""
    return seed % SEED_MODULUS


@dataclass(frozen=True)
class SamplingSpec:
    """Everything vLLM needs to sample one prompt, as plain data."""

    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # top-k per generated token (0: only the sampled token's)
    prompt_logprobs: int | None = None  # legacy completions with echo + logprobs
    logit_bias: dict[int, float] | None = None
    json_schema: dict[str, Any] | None = None  # forced tool call or response_format (structured outputs)
    json_object: bool = False  # response_format json_object (or json_schema without a schema)
    best_of: int | None = None  # candidates generated; the n best by mean logprob are kept
    stop_token_ids: list[int] = field(default_factory=list)
    skip_special_tokens: bool = True

    @property
    def samples(self) -> int:
        """How many sequences vLLM generates (best_of candidates, else n)."""
        return self.best_of or self.n

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vllm.SamplingParams` (structured outputs added by the engine)."""
        logprobs = self.logprobs
        if self.best_of is not None and logprobs is None:
            logprobs = 0  # ranking needs each candidate's cumulative logprob
        return {
            "n": self.samples,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop) or None,
            "stop_token_ids": list(self.stop_token_ids) or None,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logprobs": logprobs,
            "prompt_logprobs": self.prompt_logprobs,
            "logit_bias": dict(self.logit_bias) if self.logit_bias else None,
            "skip_special_tokens": self.skip_special_tokens,
        }


MAX_ECHO_LOGPROB_TOKENS = 4096
"""Prompt tokens a completion may ask logprobs for (`echo` with `logprobs`), over all its prompts.

Prompt logprobs cost a full-vocabulary pass and a detokenized top-k per prompt token (16 echoed
prompts of 1800 tokens kept a 2-core CPU miner busy for over 4 minutes), and beyond about 5000
tokens the answer no longer fits a 1 MiB output document anyway."""


def check_echo_logprobs(prompt_lengths: list[int]) -> None:
    """ParamError when `echo` + `logprobs` would cover more than `MAX_ECHO_LOGPROB_TOKENS` tokens."""
    total = sum(prompt_lengths)
    if total > MAX_ECHO_LOGPROB_TOKENS:
        raise ParamError(
            "invalid_request",
            f"with logprobs, echo covers at most {MAX_ECHO_LOGPROB_TOKENS} prompt tokens per request; "
            f"the prompts are {total} tokens",
            "echo",
        )


SCHEMA_BOUND_KEYWORDS = (
    "minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties", "minContains",
    "maxContains",
)  # fmt: skip
MAX_SCHEMA_BOUND = 4096
"""Largest count or length a forced tool call's schema may ask for: the grammar compiler spends
time per unit (100000 characters of `maxLength` is seconds), and an unbounded one is refused."""


_QUANTIFIER = re.compile(r"\{([0-9]{1,12})(?:,([0-9]{0,12}))?\}")


def _pattern_repeats(pattern: str) -> int:
    """The product of a regex's `{n}` / `{n,m}` bounds: what nested repeats can multiply up to."""
    product = 1
    for low, high in _QUANTIFIER.findall(pattern):
        product *= max(int(low), int(high or 0), 1)
        if product > MAX_SCHEMA_BOUND:
            break
    return product


def check_schema_bounds(schema: Any, what: str, param: str) -> None:
    """ParamError when a JSON schema asks the grammar compiler for unbounded work.

    A requester's schema (`tools[].function.parameters` of a forced call, a `response_format`
    schema; depth already bounded by the gate) is compiled into a grammar by every miner: counts
    and lengths (`SCHEMA_BOUND_KEYWORDS`) and the repeats a `pattern` can multiply to are bounded
    by `MAX_SCHEMA_BOUND`. `what` names the schema in the message, `param` the parameter.
    """
    for key, value in iter_members(schema):
        if key == "pattern" and isinstance(value, str) and _pattern_repeats(value) > MAX_SCHEMA_BOUND:
            raise ParamError(
                "invalid_request",
                f"{what} has a pattern whose repeats multiply over the limit of {MAX_SCHEMA_BOUND}",
                param,
            )
        bad = key in SCHEMA_BOUND_KEYWORDS and isinstance(value, int | float)
        if bad and not -1 < value <= MAX_SCHEMA_BOUND:
            raise ParamError(
                "invalid_request", f"{what} has {key} {value}, over the limit of {MAX_SCHEMA_BOUND}", param
            )


def check_forced_schema(schema: Any) -> None:
    """`check_schema_bounds` for a forced tool call's schema (blames `tools`)."""
    check_schema_bounds(schema, "a function's parameters schema for a forced tool call", "tools")


def _context_left(prompt_tokens: int, max_model_len: int) -> int:
    left = max_model_len - prompt_tokens
    if left < 1:
        raise ParamError(
            "context_length_exceeded",
            CONTEXT_EXCEEDED,
            "messages",
        )
    return left


def _logit_bias(raw: dict[str, float] | None, vocab_size: int) -> dict[int, float] | None:
    if not raw:
        return None
    out: dict[int, float] = {}
    for key, bias in raw.items():
        token = int(key)
        if token >= vocab_size:
            raise ParamError(
                "invalid_request",
                f"token id {token} is outside the vocabulary (0..{vocab_size - 1})",
                "logit_bias",
            )
        out[token] = float(bias)
    return out


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _common(
    params: ChatParams | CompletionParams,
    *,
    prompt_tokens: int,
    max_model_len: int,
    vocab_size: int,
    default_seed: int,
    default_max_tokens: int,
) -> dict[str, Any]:
    left = _context_left(prompt_tokens, max_model_len)
    wanted = default_max_tokens if params.max_tokens is None else params.max_tokens
    max_tokens = min(wanted, left)
    seed = default_seed if params.seed is None else normalize_seed(params.seed)
    return {
        "n": params.n or 1,
        "max_tokens": max_tokens,
        "temperature": DEFAULT_TEMPERATURE if params.temperature is None else float(params.temperature),
        "top_p": DEFAULT_TOP_P if params.top_p is None else float(params.top_p),
        "seed": seed,
        "stop": _stops(params.stop),
        "presence_penalty": float(params.presence_penalty or 0.0),
        "frequency_penalty": float(params.frequency_penalty or 0.0),
        "logit_bias": _logit_bias(params.logit_bias, vocab_size),
    }


def chat_sampling(
    params: ChatParams,
    *,
    prompt_tokens: int,
    max_model_len: int,
    vocab_size: int,
    default_seed: int,
    default_max_tokens: int = MAX_TOKENS,
    json_schema: dict[str, Any] | None = None,
    json_object: bool = False,
    stop_token_ids: list[int] | None = None,
    skip_special_tokens: bool = True,
) -> SamplingSpec:
    """Chat parameters as a `SamplingSpec`; ParamError when the model or prompt cannot honour them.

    Without `max_tokens` a sequence gets the context left, at most `default_max_tokens`
    (`node.content.documents.default_max_tokens` of the document: the protocol caps).
    """
    common = _common(
        params,
        prompt_tokens=prompt_tokens,
        max_model_len=max_model_len,
        vocab_size=vocab_size,
        default_seed=default_seed,
        default_max_tokens=default_max_tokens,
    )
    logprobs = None
    if params.logprobs:
        logprobs = params.top_logprobs or 0
    return SamplingSpec(
        **common,
        logprobs=logprobs,
        json_schema=json_schema,
        json_object=json_object,
        stop_token_ids=list(stop_token_ids or []),
        skip_special_tokens=skip_special_tokens,
    )


def completion_sampling(
    params: CompletionParams,
    *,
    prompt_tokens: int,
    max_model_len: int,
    vocab_size: int,
    default_seed: int,
    default_max_tokens: int = MAX_TOKENS,
) -> SamplingSpec:
    """Legacy completion parameters as a `SamplingSpec` (suffix is checked by the engine)."""
    common = _common(
        params,
        prompt_tokens=prompt_tokens,
        max_model_len=max_model_len,
        vocab_size=vocab_size,
        default_seed=default_seed,
        default_max_tokens=default_max_tokens,
    )
    n = common["n"]
    best_of = params.best_of if params.best_of is not None and params.best_of > n else None
    prompt_logprobs = params.logprobs if params.echo and params.logprobs is not None else None
    return SamplingSpec(**common, logprobs=params.logprobs, prompt_logprobs=prompt_logprobs, best_of=best_of)


__all__ = [
    "CONTEXT_EXCEEDED",
    "MAX_ECHO_LOGPROB_TOKENS",
    "MAX_SCHEMA_BOUND",
    "ParamError",
    "SamplingSpec",
    "chat_sampling",
    "check_echo_logprobs",
    "check_forced_schema",
    "check_schema_bounds",
    "completion_sampling",
    "normalize_seed",
    "seed_from_digest",
]
