"""What the latency benches share: a devnet driven as a user drives it, an HTTP load generator, and
raw vLLM as the baseline.

`tests/bench/gateway.py`, `protocol.py` and `miner.py` compare inferd against the engine alone. For
the comparison to mean anything the baseline must not be inferd's own adapter (`node.engine`), so
`RawEngine` runs vLLM's `AsyncLLM` directly with the engine arguments the miners get
(`node.engine.engine_args` from the shipped `EngineSettings`) and the prompts rendered by the
model's own chat template, as an OpenAI-style server built on vLLM would.

The devnet is started with `inferd devnet up --detach` exactly as documented, so the chain, poll and
batch settings are the shipped ones. Only the gateway's admission limits are lifted (`ADMISSION_ENV`:
rate limit, concurrent requests per key, daily budgets): they protect a public gateway from one key,
and a bench that sends hundreds of requests from one key would measure those refusals instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from node.config import EngineSettings

ROOT = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct"
ADMISSION_ENV = {
    "INFERD_GATEWAY__RATE_LIMIT_PER_MINUTE": str(10**7),
    "INFERD_GATEWAY__MAX_CONCURRENT_PER_KEY": "4096",
    "INFERD_GATEWAY__DAILY_BUDGET_WEI_PER_KEY": str(10**24),
    "INFERD_GATEWAY__DAILY_BUDGET_WEI_TOTAL": str(10**24),
}


class BenchError(RuntimeError):
    """The bench could not set up what it measures (devnet, engine); the message says where to look."""


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of one figure over several runs (nan-free, rounded)."""
    good = [v for v in values if not math.isnan(v)]
    if not good:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {
        "median": round(statistics.median(good), 2),
        "min": round(min(good), 2),
        "max": round(max(good), 2),
    }


def messages(count: int, offset: int) -> list[list[dict[str, str]]]:
    """Distinct short chat prompts (the same for the gateway and the engine alone)."""
    return [[{"role": "user", "content": f"Name a colour and a fruit. ({offset + i})"}] for i in range(count)]


@dataclass
class Sample:
    """One request: total and time to first token (ms; nan when not streamed), ok or the error."""

    total_ms: float
    ttft_ms: float = float("nan")
    tokens: int = 0
    error: str | None = None


Call = Callable[[], Coroutine[Any, Any, Sample]]


async def run_closed(
    calls: Sequence[Call], concurrency: int, pauses: Sequence[float] | None = None
) -> tuple[list[Sample], float]:
    """Run `calls` with at most `concurrency` in flight; the samples and the wall time (s).

    `pauses[i]` (s) is slept before call i starts, holding its place (not part of its latency): a
    user who arrives at a random moment, not in step with the previous answer (see `arrival_phases`).
    """
    sem = asyncio.Semaphore(concurrency)
    waits = iter(pauses or ())

    async def one(call: Call) -> Sample:
        async with sem:
            pause = next(waits, 0.0)
            if pause > 0:
                await asyncio.sleep(pause)
            return await call()

    start = time.perf_counter()
    samples = await asyncio.gather(*(one(c) for c in calls))
    return list(samples), time.perf_counter() - start


def arrival_phases(n: int, block_time: float, seed: int) -> list[float]:
    """`n` pauses drawn uniformly from [0, block_time): on a chain with a block time, requests sent
    back to back lock onto the block schedule (each one leaves just after its answer, always at the
    same point of a block, and waits `block_time - latency` for inclusion, every time); a user's
    request arrives at a random point of a block and waits `block_time / 2` on average."""
    rng = random.Random(seed)
    return [rng.uniform(0.0, block_time) for _ in range(n)]


async def run_poisson(calls: Sequence[Call], rate_per_s: float, seed: int = 7) -> tuple[list[Sample], float]:
    """Start `calls` at exponential gaps of mean 1/rate (an open, Poisson arrival process)."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[Sample]] = []
    start = time.perf_counter()
    due = 0.0
    for call in calls:
        delay = start + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(call()))
        due += rng.expovariate(rate_per_s)
    samples = await asyncio.gather(*tasks)
    return list(samples), time.perf_counter() - start


def summarize(samples: Sequence[Sample]) -> tuple[list[float], list[float], int]:
    ok = [s for s in samples if s.error is None]
    ttfts = [s.ttft_ms for s in ok if not math.isnan(s.ttft_ms)]
    return [s.total_ms for s in ok], ttfts, len(samples) - len(ok)


# --------------------------------------------------------------------------- the gateway over HTTP


def chat_body(msgs: list[dict[str, str]], max_tokens: int, seed: int, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": msgs,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": seed,
        "stream": stream,
    }


async def gateway_chat(http: aiohttp.ClientSession, body: dict[str, Any]) -> Sample:
    """One chat completion through the gateway; streamed when `body["stream"]` (TTFT = first content).

    The load client is aiohttp, not httpx (the `openai` SDK's): both speak the same HTTP/1.1 to the
    gateway, and this client shares the 2-core machine with what it measures. At concurrency 64 httpx
    spent 2.8-5 ms of CPU per request, about as much as the gateway, aiohttp 0.3 ms."""
    t0 = time.perf_counter()
    try:
        async with http.post("/v1/chat/completions", json=body) as reply:
            if reply.status != 200:
                await reply.read()
                return Sample((time.perf_counter() - t0) * 1000, error=f"HTTP {reply.status}")
            if not body.get("stream"):
                usage = json.loads(await reply.read()).get("usage") or {}
                tokens = int(usage.get("completion_tokens") or 0)
                return Sample((time.perf_counter() - t0) * 1000, tokens=tokens)
            ttft = float("nan")
            chunks = 0
            async for raw in reply.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    return Sample((time.perf_counter() - t0) * 1000, error=str(event["error"])[:120])
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        if math.isnan(ttft):
                            ttft = (time.perf_counter() - t0) * 1000
            return Sample((time.perf_counter() - t0) * 1000, ttft_ms=ttft, tokens=chunks)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sample((time.perf_counter() - t0) * 1000, error=type(exc).__name__)


@asynccontextmanager
async def devnet(
    *, fake_engine: bool, block_time: float | None, timeout_s: float = 900
) -> AsyncIterator[dict[str, Any]]:
    """`inferd devnet up --detach --fresh`, one miner, a throwaway dir: its devnet.json; down at exit."""
    data_dir = Path(tempfile.mkdtemp(prefix="inferd-bench-devnet-"))
    cli = [sys.executable, "-m", "node.cli.devnet"]
    env = {**os.environ, **ADMISSION_ENV, "VLLM_NO_USAGE_STATS": "1"}
    argv = [*cli, "up", "--detach", "--fresh", "--miners", "1", "--data-dir", str(data_dir)]
    argv += ["--timeout", str(timeout_s)]
    if fake_engine:
        argv.append("--fake-engine")
    if block_time is not None:
        argv += ["--block-time", str(block_time)]
    t0 = time.monotonic()
    up = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout_s + 60
    )
    try:
        if up.returncode != 0:
            raise BenchError(
                f"inferd devnet up failed ({up.returncode}); logs in {data_dir}/logs:\n{up.stderr[-2000:]}"
            )
        print(f"devnet up ({'fake engine' if fake_engine else 'vLLM'}, "
              f"{'automine' if block_time is None else f'block time {block_time}s'}): "
              f"{time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)  # fmt: skip
        info: dict[str, Any] = json.loads((data_dir / "devnet.json").read_text())
        yield info
    finally:
        await asyncio.to_thread(
            subprocess.run,
            [*cli, "down", "--data-dir", str(data_dir)],
            capture_output=True,
            env=env,
            timeout=240,
        )


def gateway_calls(
    http: aiohttp.ClientSession, msgs: list[list[dict[str, str]]], max_tokens: int, seed0: int, stream: bool
) -> list[Call]:
    """One call per prompt through the gateway, seeds seed0, seed0 + 1, ..."""
    return [
        partial(gateway_chat, http, chat_body(m, max_tokens, seed0 + i, stream)) for i, m in enumerate(msgs)
    ]


def gateway_client(info: dict[str, Any]) -> aiohttp.ClientSession:
    """The load client for the devnet's gateway (its API key; up to 1,024 connections)."""
    return aiohttp.ClientSession(
        info["gateway_url"],
        headers={"Authorization": f"Bearer {info['api_key']}"},
        timeout=aiohttp.ClientTimeout(total=600),
        connector=aiohttp.TCPConnector(limit=1024),
    )


# --------------------------------------------------------------------------- raw vLLM


def devnet_engine_settings() -> EngineSettings:
    """The shipped engine settings (max_num_seqs 64) with the KV cache the devnet gives its miners."""
    return EngineSettings(cpu_kvcache_gib=float(os.environ.get("INFERD_ENGINE__CPU_KVCACHE_GIB", "1")))


class RawEngine:
    """vLLM's AsyncLLM with the miners' engine arguments: the engine alone, no inferd code in the loop."""

    def __init__(self, llm: Any, tokenizer: Any) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self._ids = iter(range(10**9))

    @classmethod
    async def start(cls, settings: EngineSettings | None = None) -> RawEngine:
        """vLLM with `settings` (default: the shipped ones with the devnet's KV cache size)."""
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        from node.engine.engine import effective_dtype, engine_args, resolve_model_path

        settings = settings or devnet_engine_settings()
        on_cpu = bool(current_platform.is_cpu())
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(settings.cpu_kvcache_gib))))
        dtype = effective_dtype(settings, on_cpu)
        batch_invariant = dtype == "float32" if on_cpu else settings.batch_invariant
        path = resolve_model_path(settings)
        args = engine_args(settings, path, on_cpu=on_cpu, dtype=dtype, batch_invariant=batch_invariant)
        llm = AsyncLLM.from_engine_args(args)
        return cls(llm, llm.get_tokenizer())

    def prompt(self, msgs: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        return list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)

    async def chat(
        self, msgs: list[dict[str, str]], max_tokens: int, seed: int, temperature: float = 0.7
    ) -> Sample:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        prompt = self.prompt(msgs)
        t0 = time.perf_counter()
        ttft = float("nan")
        tokens = 0
        async for out in self.llm.generate({"prompt_token_ids": prompt}, params, f"raw-{next(self._ids)}"):
            tokens = len(out.outputs[0].token_ids)
            if tokens and math.isnan(ttft):
                ttft = (time.perf_counter() - t0) * 1000
        return Sample((time.perf_counter() - t0) * 1000, ttft_ms=ttft, tokens=tokens)

    def shutdown(self) -> None:
        self.llm.shutdown()
        self.llm.shutdown = lambda *args, **kwargs: None  # AsyncLLM.__del__ would try again at exit, noisily


def engine_calls(
    engine: RawEngine, msgs: list[list[dict[str, str]]], max_tokens: int, seed0: int
) -> list[Call]:
    """The same prompts and seeds as `gateway_calls`, on raw vLLM."""
    return [partial(engine.chat, m, max_tokens, seed0 + i) for i, m in enumerate(msgs)]
