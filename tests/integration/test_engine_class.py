"""Two real engines (vLLM CPU, SmolLM2) of one engine class answer 200 requests with the same bytes.

The second engine differs from the session's in speed-only settings (max_num_seqs 16 instead of
64, and `vllm_args.max_num_batched_tokens` passed through to vLLM), so its batches are composed
differently; the engine class says they are the same engine, and the output documents agree.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from node.content.cid import cid_for_bytes
from node.content.documents import canonical_json, to_canonical_bytes
from node.engine.engine import Engine, EngineError
from node.engine.engine_class import EngineClassMismatch
from tests.integration.conftest import ENGINE_TEST_SETTINGS

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"
TOPICS = ["the sea", "a cat", "rain", "bread", "the moon", "trains", "music", "winter", "a garden", "stars"]


def requests_200() -> list[dict[str, Any]]:
    """Chat and completion, seeded and unseeded, greedy and sampled, 8-16 tokens."""
    docs: list[dict[str, Any]] = []
    for i in range(200):
        topic = TOPICS[i % len(TOPICS)]
        params: dict[str, Any] = {"max_tokens": 8 + i % 9}
        params["temperature"] = (0, 0.7, 1.0, 1.3)[i % 4]
        if i % 3:
            params["seed"] = 1000 + i
        if i % 10 == 7:
            params["top_p"] = 0.9
        if i % 2:
            doc: dict[str, Any] = {
                "v": 1,
                "type": "chat",
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Say something about {topic} ({i})."}],
                "params": params,
            }
        else:
            doc = {"v": 1, "type": "completion", "model": MODEL, "prompt": f"{i}. A story about {topic}:"}
            doc["params"] = params
        docs.append(doc)
    return docs


async def digests(engine: Engine, docs: list[dict[str, Any]]) -> list[str]:
    async def one(i: int, doc: dict[str, Any]) -> str:
        raw = canonical_json(doc)
        out = await engine.generate(raw, request_id=i, input_cid=cid_for_bytes(raw), created=1_700_000_000)
        assert out.error is None, out.error
        assert out.system_fingerprint == engine.system_fingerprint
        return hashlib.sha256(to_canonical_bytes(out)).hexdigest()

    return list(await asyncio.gather(*(one(i, d) for i, d in enumerate(docs))))


async def test_two_engines_of_one_class_agree_bit_for_bit_on_200_requests(engine: Engine) -> None:
    settings = ENGINE_TEST_SETTINGS.model_copy(
        update={"max_num_seqs": 16, "vllm_args": {"max_num_batched_tokens": 4096}}
    )
    docs = requests_200()
    first = await digests(engine, docs)
    second_engine = await Engine.start(settings)
    try:
        # the passthrough reached vLLM, and the class ignores it (it changes speed only)
        assert second_engine.vllm_config.scheduler_config.max_num_batched_tokens == 4096
        assert engine.vllm_config.scheduler_config.max_num_batched_tokens != 4096
        assert second_engine.vllm_config.scheduler_config.max_num_seqs == 16
        assert second_engine.engine_class is not None and engine.engine_class is not None
        assert second_engine.engine_class.id == engine.engine_class.id
        assert engine.system_fingerprint == engine.engine_class.text
        second = await digests(second_engine, docs)
    finally:
        second_engine.shutdown()
    mismatched = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
    assert not mismatched, f"{len(mismatched)} of 200 outputs differ: requests {mismatched[:20]}"
    assert len(set(first)) == 200  # 200 distinct answers, not one repeated


async def test_a_wrong_class_or_a_bad_vllm_arg_is_refused_before_vllm_loads() -> None:
    """Both checks run before AsyncLLM starts (no engine process is left behind to shut down)."""
    with pytest.raises(EngineClassMismatch, match="not the model's on-chain engine class 0x0000"):
        await Engine.start(ENGINE_TEST_SETTINGS, expected_class=bytes(32))
    bad = ENGINE_TEST_SETTINGS.model_copy(update={"vllm_args": {"max_num_batched_tokenz": 4096}})
    with pytest.raises(EngineError, match=r"engine\.vllm_args\.max_num_batched_tokenz is not an argument"):
        await Engine.start(bad)
