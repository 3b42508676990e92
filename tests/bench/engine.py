"""Raw AsyncLLM throughput on the fixed 256 chat prompts: the baseline the miner benchmark is held to.

Runs vLLM directly (no documents, no inferd engine adapter) with the engine's CPU/GPU defaults,
submits all 256 requests at once (continuous batching), each with a fixed seed and `max_tokens`
from `node.engine.bench_prompts`, and prints one JSON object as its LAST line:
`{"output_tokens_per_s", "requests", "seconds", ...}`. `seconds` excludes model loading.

    .venv/bin/python tests/bench/engine.py [--requests 256] [--max-tokens 64] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from node.config import EngineSettings
from node.engine.bench_prompts import BENCH_MAX_TOKENS, bench_messages
from node.engine.engine import effective_dtype, engine_args, resolve_model_path


async def bench(model_path: str, requests: int, max_tokens: int, settings: EngineSettings) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.platforms import current_platform
    from vllm.v1.engine.async_llm import AsyncLLM

    on_cpu = bool(current_platform.is_cpu())
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(settings.cpu_kvcache_gib))))
    elif settings.batch_invariant:
        os.environ["VLLM_BATCH_INVARIANT"] = "1"
    dtype = effective_dtype(settings, on_cpu)
    started = time.monotonic()
    batch_invariant = dtype == "float32" if on_cpu else settings.batch_invariant
    llm = AsyncLLM.from_engine_args(
        engine_args(settings, model_path, on_cpu=on_cpu, dtype=dtype, batch_invariant=batch_invariant)
    )
    load_s = time.monotonic() - started
    tokenizer = llm.get_tokenizer()
    prompts = [
        tokenizer.apply_chat_template(m, tokenize=True, add_generation_prompt=True)
        for m in bench_messages()[:requests]
    ]
    prompts = [
        list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts
    ]

    async def one(i: int) -> int:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=i, ignore_eos=True)
        tokens = 0
        async for out in llm.generate({"prompt_token_ids": prompts[i]}, params, f"bench-{i}"):
            tokens = len(out.outputs[0].token_ids)
        return tokens

    await one(0)  # warm-up, not timed
    t0 = time.monotonic()
    counts = await asyncio.gather(*(one(i) for i in range(len(prompts))))
    seconds = time.monotonic() - t0
    llm.shutdown()
    llm.shutdown = lambda *args, **kwargs: None  # AsyncLLM.__del__ would try again at exit, noisily
    total = sum(counts)
    return {
        "output_tokens_per_s": round(total / seconds, 2),
        "requests": len(prompts),
        "seconds": round(seconds, 3),
        "output_tokens": total,
        "max_tokens": max_tokens,
        "dtype": dtype,
        "device": "cpu" if on_cpu else "gpu",
        "load_seconds": round(load_s, 1),
        "model": model_path,
    }


def main(argv: list[str] | None = None) -> int:
    # vLLM leaves a shared-memory segment to multiprocessing's resource tracker, which warns on exit
    # after our JSON; the tracker inherits sys.warnoptions, so the result stays the last line.
    sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=BENCH_MAX_TOKENS)
    parser.add_argument(
        "--model", default=None, help="model path or name (default: the fetched default model)"
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    settings = EngineSettings(dtype=args.dtype, max_num_seqs=256)
    model_path = args.model or resolve_model_path(settings)
    result = asyncio.run(bench(model_path, min(args.requests, 256), args.max_tokens, settings))
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
