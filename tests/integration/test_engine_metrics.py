"""vLLM's own engine metrics reach the miner's `/metrics` (real engine, shared session fixture).

The engine registers vLLM's `PrometheusStatLogger` on the default registry; `MinerMetrics.render()`
serves that registry after the miner's own. One greedy request must show up as a TTFT observation,
and the queue and KV-cache gauges must be there.
"""

from __future__ import annotations

import re

import pytest

from node.content.cid import cid_for_bytes
from node.content.documents import canonical_json
from node.engine.engine import Engine
from node.miner.metrics import MinerMetrics
from node.miner.money import engine_alive

pytestmark = pytest.mark.engine


def _value(text: str, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    assert found, f"{name} is not on the miner's /metrics"
    return sum(float(v) for v in found)


async def test_vllm_metrics_are_served_by_the_miner(engine: Engine) -> None:
    doc = {
        "v": 1,
        "type": "chat",
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "Say hi."}],
        "params": {"max_tokens": 4, "temperature": 0},
    }
    before = MinerMetrics().render().decode()
    ttft = "vllm:time_to_first_token_seconds_count"
    ttft_before = _value(before, ttft) if ttft in before else 0
    out = await engine.generate(doc, request_id=1, input_cid=cid_for_bytes(canonical_json(doc)), created=0)
    assert out.error is None
    text = MinerMetrics().render().decode()
    assert _value(text, ttft) >= ttft_before + 1
    assert _value(text, "vllm:num_requests_waiting") == 0
    assert 0 <= _value(text, "vllm:kv_cache_usage_perc") <= 1
    assert "inferd_build_info{" in text
    assert engine.alive and engine_alive(engine)
