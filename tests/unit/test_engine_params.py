"""Parameter mapping to vLLM sampling arguments, without the engine."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from node.content.documents import ChatParams, CompletionParams
from node.engine.params import (
    CONTEXT_EXCEEDED,
    SEED_MODULUS,
    ParamError,
    chat_sampling,
    completion_sampling,
    normalize_seed,
    seed_from_digest,
)

CTX: dict[str, Any] = {"max_model_len": 2048, "vocab_size": 49152, "default_seed": 42}


def test_defaults_fill_the_context_left_and_use_the_derived_seed() -> None:
    spec = chat_sampling(ChatParams(), prompt_tokens=48, **CTX)
    assert spec.max_tokens == 2000
    assert spec.seed == 42
    assert spec.temperature == 1.0 and spec.top_p == 1.0 and spec.n == 1
    assert spec.logprobs is None and spec.stop == []


def test_every_param_is_mapped() -> None:
    params = ChatParams.model_validate(
        {
            "max_tokens": 10,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 7,
            "stop": ["\n", "END"],
            "n": 3,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "logprobs": True,
            "top_logprobs": 4,
            "logit_bias": {"13": 5.0},
        }
    )
    kw = chat_sampling(params, prompt_tokens=10, **CTX).kwargs()
    assert kw["max_tokens"] == 10 and kw["temperature"] == 0.5 and kw["top_p"] == 0.9
    assert kw["seed"] == 7 and kw["stop"] == ["\n", "END"] and kw["n"] == 3
    assert kw["presence_penalty"] == 0.5 and kw["frequency_penalty"] == -0.5
    assert kw["logprobs"] == 4 and kw["logit_bias"] == {13: 5.0}


def test_logprobs_true_without_top_asks_for_the_sampled_token_only() -> None:
    spec = chat_sampling(ChatParams(logprobs=True), prompt_tokens=1, **CTX)
    assert spec.logprobs == 0


def test_max_tokens_is_bounded_by_the_context_left() -> None:
    spec = chat_sampling(ChatParams(max_tokens=5000), prompt_tokens=2000, **CTX)
    assert spec.max_tokens == 48


def test_a_prompt_filling_the_context_is_an_error() -> None:
    with pytest.raises(ParamError) as err:
        chat_sampling(ChatParams(), prompt_tokens=2100, **CTX)
    assert err.value.code == "context_length_exceeded"
    assert err.value.message == f"messages: {CONTEXT_EXCEEDED}"  # no local max_model_len, no counts


def test_without_max_tokens_the_default_is_capped() -> None:
    big = {**CTX, "max_model_len": 200_000}
    assert chat_sampling(ChatParams(), prompt_tokens=10, **big).max_tokens == 32768
    spec = completion_sampling(CompletionParams(), prompt_tokens=10, default_max_tokens=2048, **big)
    assert spec.max_tokens == 2048
    assert (
        chat_sampling(ChatParams(max_tokens=7), prompt_tokens=10, default_max_tokens=2, **big).max_tokens == 7
    )


def test_vllm_refusals_become_fixed_errors() -> None:
    from node.engine.engine import refusal

    long = refusal(
        ValueError("The decoder prompt (length 5000) is longer than the maximum model length of 2048.")
    )
    assert (long.code, long.message) == ("context_length_exceeded", CONTEXT_EXCEEDED)
    schema = refusal(ValueError("Error in xgrammar: invalid JSON schema at /usr/lib/x"))
    assert schema.code == "invalid_request" and schema.param == "tools" and "/usr" not in schema.message
    other = refusal(RuntimeError("vllm 0.32.0 internal detail 12345"))
    assert other.code == "input_unprocessable" and "12345" not in other.message


def test_logit_bias_outside_the_vocab_is_an_error() -> None:
    with pytest.raises(ParamError) as err:
        chat_sampling(ChatParams.model_validate({"logit_bias": {"99999": 1.0}}), prompt_tokens=1, **CTX)
    assert err.value.param == "logit_bias"


def test_seeds_are_normalized_for_vllm() -> None:
    assert normalize_seed(-1) != -1 and normalize_seed(-1) >= 0  # -1 would mean "random" in vLLM
    assert 0 <= normalize_seed((1 << 64) - 1) < SEED_MODULUS
    assert normalize_seed(5) == 5
    digest = hashlib.sha256(b"doc").digest()
    assert seed_from_digest(digest) == int.from_bytes(digest[:8], "big") % SEED_MODULUS


def test_completion_best_of_echo_and_logprobs() -> None:
    params = CompletionParams.model_validate({"n": 2, "best_of": 4, "logprobs": 3, "echo": True})
    spec = completion_sampling(params, prompt_tokens=3, **CTX)
    assert spec.best_of == 4 and spec.samples == 4 and spec.n == 2
    assert spec.logprobs == 3 and spec.prompt_logprobs == 3
    assert spec.kwargs()["n"] == 4
    same = completion_sampling(CompletionParams.model_validate({"best_of": 1}), prompt_tokens=3, **CTX)
    assert same.best_of is None
    ranked = completion_sampling(CompletionParams.model_validate({"best_of": 3}), prompt_tokens=3, **CTX)
    assert ranked.kwargs()["logprobs"] == 0  # ranking needs each candidate's logprob


def test_forced_call_schemas_with_unbounded_counts_are_refused() -> None:
    from node.engine.params import check_forced_schema

    ok = {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "string", "maxLength": 64}}},
    }
    check_forced_schema(ok)
    for key in ("minItems", "maxLength", "maxProperties"):
        deep = {"anyOf": [{"type": "object", "properties": {"a": {key: 10**9}}}]}
        with pytest.raises(ParamError) as err:
            check_forced_schema(deep)
        assert err.value.code == "invalid_request" and err.value.param == "tools" and key in err.value.message
    with pytest.raises(ParamError):
        check_forced_schema({"minItems": -5})


def test_echo_with_logprobs_is_bounded_in_prompt_tokens() -> None:
    from node.engine.params import MAX_ECHO_LOGPROB_TOKENS, check_echo_logprobs

    check_echo_logprobs([MAX_ECHO_LOGPROB_TOKENS // 2] * 2)
    with pytest.raises(ParamError) as err:
        check_echo_logprobs([2000] * 3)
    assert err.value.param == "echo" and "6000" in err.value.message
