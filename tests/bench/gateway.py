"""What a user waits for through the gateway vs the engine alone, on automine and on a 2-second chain.

The setup is the one an operator gets: `inferd devnet up --detach` (anvil, mosquitto, one miner with
the real CPU engine on SmolLM2, the gateway) with the SHIPPED chain, poll and batch settings, once on
automine and once on `--block-time 2` (an L2's block time). Only the gateway's per-key admission
limits are lifted (`tests/bench/loadgen.py`). The engine alone is raw vLLM (`AsyncLLM` in this
process, the miners' engine arguments, the same prompts, seeds and sampling), not inferd's adapter,
measured in the same run, interleaved with the gateway, so both see the same machine.

Per chain and run: concurrency 1 (engine; gateway non-streamed for the total; gateway streamed for
the time to first token), then concurrency 16 (requests/s). On the 2-second chain each concurrency-1
request starts after a pause drawn uniformly from [0, 2 s) (`loadgen.arrival_phases`, seeded with
`--seed`, printed): requests sent back to back lock onto the block schedule, each leaving at the same
point of a block and waiting `2 s - latency` for inclusion every time, where a user's request
arrives at a random point and waits 1 s on average. The back-to-back figures are kept beside them
(`b2_back_to_back_total_p50_ms`, `b2_back_to_back_ttft_p50_ms`). Each figure is the median over the runs;
`spread` holds min/median/max.

Each timed phase starts after `SETTLE_S` of quiet: the two vLLM engines on the machine (the miner's
and the one measured alone) each keep busy-polling their shared-memory queue for a second after
their last step (vLLM's `SpinCondition`, `busy_loop_s` = 1), so a phase started right after the other
path's would share a core with that spin for its first second (on 2 cores, an engine-alone c16 run
measured 10.2 req/s after a quiet second and 8.7 right after the gateway's phase).

Concurrency 16 sends `--c16` (192) requests per run: twelve rounds of 16, so that the start (the
engine alone gets 16 prompts at once, in step; the gateway's arrive spread over the protocol) and
the drain (the run ends with its slowest request) weigh little in a steady-state throughput.

The LAST line is one JSON object; automine keys as before (`c1_p50_ms`, `c1_p99_ms`, `c16_p50_ms`,
`c16_p99_ms`, `engine_c1_p50_ms`, `engine_c16_p50_ms`, `c16_rps`, `engine_c16_rps`, ...) plus
`ttft_p50_ms` / `engine_ttft_p50_ms`, and for the 2-second chain `b2_total_p50_ms`,
`b2_engine_total_p50_ms`, `b2_ttft_p50_ms`, `b2_engine_ttft_p50_ms`, `b2_c16_rps`, `b2_engine_c16_rps`
(and p99s).

    .venv/bin/python tests/bench/gateway.py [--c1 N] [--c16 N] [--runs N] [--max-tokens N] [--seed N]
        [--chains both|automine|b2]
    (env: BENCH_GATEWAY_C1, BENCH_GATEWAY_C16, BENCH_RUNS; a quick run: --c1 4 --c16 16 --runs 2,
    mostly two devnet starts loading vLLM; one chain only with --chains automine|b2)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

from tests.bench.loadgen import (
    MODEL,
    RawEngine,
    arrival_phases,
    devnet,
    engine_calls,
    gateway_calls,
    gateway_client,
    messages,
    percentile,
    run_closed,
    spread,
    summarize,
)

SETTLE_S = 1.5
"""Quiet before each timed phase: longer than vLLM's 1 s busy-poll after an engine's last step."""

FIGURES = (
    "total_p50_ms", "total_p99_ms", "ttft_p50_ms", "engine_total_p50_ms", "engine_total_p99_ms",
    "engine_ttft_p50_ms", "c1_rps", "engine_c1_rps", "c16_p50_ms", "c16_p99_ms", "engine_c16_p50_ms",
    "engine_c16_p99_ms", "c16_rps", "engine_c16_rps",
)  # fmt: skip


async def chain_section(
    engine: RawEngine, block_time: float | None, args: argparse.Namespace
) -> dict[str, Any]:
    """Every figure of FIGURES on one chain, median over `args.runs` runs, plus spread and errors."""
    phased = block_time is not None
    keys = FIGURES + (("back_to_back_total_p50_ms", "back_to_back_ttft_p50_ms") if phased else ())
    runs: dict[str, list[float]] = {k: [] for k in keys}
    errors = 0
    tokens = {"gateway": 0, "engine": 0}
    label = "automine" if block_time is None else f"block time {block_time}s"
    async with devnet(fake_engine=False, block_time=block_time) as info, gateway_client(info) as http:
        warm = messages(2, 900_000)  # both paths once (first request compiles, connects, subscribes)
        await run_closed(gateway_calls(http, warm, args.max_tokens, 1, False), 1)
        await run_closed(engine_calls(engine, warm, args.max_tokens, 1), 1)
        for run in range(args.runs):
            base = run * 10_000
            c1 = messages(args.c1, base)
            pauses = arrival_phases(args.c1, block_time, args.seed + run) if block_time is not None else None
            await asyncio.sleep(SETTLE_S)
            eng, eng_wall = await run_closed(engine_calls(engine, c1, args.max_tokens, base), 1, pauses)
            await asyncio.sleep(SETTLE_S)
            gw, gw_wall = await run_closed(gateway_calls(http, c1, args.max_tokens, base, False), 1, pauses)
            await asyncio.sleep(SETTLE_S)
            gws, _ = await run_closed(gateway_calls(http, c1, args.max_tokens, base, True), 1, pauses)
            if phased:
                await asyncio.sleep(SETTLE_S)
                b2b, _ = await run_closed(gateway_calls(http, c1, args.max_tokens, base, False), 1)
                await asyncio.sleep(SETTLE_S)
                b2bs, _ = await run_closed(gateway_calls(http, c1, args.max_tokens, base, True), 1)
                b_tot, _, b_err = summarize(b2b)
                _, b_ttft, bs_err = summarize(b2bs)
                errors += b_err + bs_err
                runs["back_to_back_total_p50_ms"].append(percentile(b_tot, 0.5))
                runs["back_to_back_ttft_p50_ms"].append(percentile(b_ttft, 0.5))
            e_tot, e_ttft, e_err = summarize(eng)
            g_tot, _, g_err = summarize(gw)
            _, g_ttft, s_err = summarize(gws)
            errors += e_err + g_err + s_err
            tokens["gateway"] += sum(s.tokens for s in gw)
            tokens["engine"] += sum(s.tokens for s in eng)
            runs["total_p50_ms"].append(percentile(g_tot, 0.5))
            runs["total_p99_ms"].append(percentile(g_tot, 0.99))
            runs["ttft_p50_ms"].append(percentile(g_ttft, 0.5))
            runs["engine_total_p50_ms"].append(percentile(e_tot, 0.5))
            runs["engine_total_p99_ms"].append(percentile(e_tot, 0.99))
            runs["engine_ttft_p50_ms"].append(percentile(e_ttft, 0.5))
            runs["c1_rps"].append(len(g_tot) / gw_wall)
            runs["engine_c1_rps"].append(len(e_tot) / eng_wall)

            c16 = messages(args.c16, base + 5_000)
            await asyncio.sleep(SETTLE_S)
            eng, eng_wall = await run_closed(engine_calls(engine, c16, args.max_tokens, base + 5_000), 16)
            await asyncio.sleep(SETTLE_S)
            gw, gw_wall = await run_closed(gateway_calls(http, c16, args.max_tokens, base + 5_000, False), 16)
            e_tot, _, e_err = summarize(eng)
            g_tot, _, g_err = summarize(gw)
            errors += e_err + g_err
            runs["c16_p50_ms"].append(percentile(g_tot, 0.5))
            runs["c16_p99_ms"].append(percentile(g_tot, 0.99))
            runs["engine_c16_p50_ms"].append(percentile(e_tot, 0.5))
            runs["engine_c16_p99_ms"].append(percentile(e_tot, 0.99))
            runs["c16_rps"].append(len(g_tot) / gw_wall)
            runs["engine_c16_rps"].append(len(e_tot) / eng_wall)
            last = {k: v[-1] for k, v in runs.items()}
            print(
                f"{label} run {run + 1}: c1 total p50 gateway {last['total_p50_ms']:.0f} ms / engine "
                f"{last['engine_total_p50_ms']:.0f} ms, ttft p50 gateway {last['ttft_p50_ms']:.0f} ms / "
                f"engine {last['engine_ttft_p50_ms']:.0f} ms | c16 gateway {last['c16_rps']:.2f} req/s / "
                f"engine {last['engine_c16_rps']:.2f} req/s | errors {errors}"
                + (
                    f" | c1 back to back: total p50 {last['back_to_back_total_p50_ms']:.0f} ms, ttft p50 "
                    f"{last['back_to_back_ttft_p50_ms']:.0f} ms; arrival phases seed {args.seed + run}"
                    if phased
                    else ""
                ),
                file=sys.stderr,
                flush=True,
            )
    out: dict[str, Any] = {k: spread(v)["median"] for k, v in runs.items()}
    out["spread"] = {k: spread(v) for k, v in runs.items()}
    out["errors"] = errors
    out["completion_tokens"] = tokens
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from node.log import configure_logging

    configure_logging("warning", "console")
    engine = await RawEngine.start()  # shipped engine settings, the devnet's KV cache
    results: dict[str, Any] = {}
    try:
        if args.chains in ("both", "automine"):
            a = await chain_section(engine, None, args)
            results.update(
                {
                    "c1_p50_ms": a["total_p50_ms"],
                    "c1_p99_ms": a["total_p99_ms"],
                    "engine_c1_p50_ms": a["engine_total_p50_ms"],
                    "engine_c1_p99_ms": a["engine_total_p99_ms"],
                    "c1_rps": a["c1_rps"],
                    "engine_c1_rps": a["engine_c1_rps"],
                    "ttft_p50_ms": a["ttft_p50_ms"],
                    "engine_ttft_p50_ms": a["engine_ttft_p50_ms"],
                    **{k: a[k] for k in FIGURES if k.startswith(("c16_", "engine_c16_"))},
                    "overhead_c1_p50_ms": round(a["total_p50_ms"] - a["engine_total_p50_ms"], 1),
                    "c16_ratio": round(a["c16_rps"] / a["engine_c16_rps"], 3),
                }
            )
            results["automine"] = {k: a[k] for k in ("spread", "errors", "completion_tokens")}
        if args.chains in ("both", "b2"):
            b = await chain_section(engine, 2.0, args)
            results.update({f"b2_{k}": b[k] for k in FIGURES if not k.endswith("c1_rps")})
            results["b2_back_to_back_total_p50_ms"] = b["back_to_back_total_p50_ms"]
            results["b2_back_to_back_ttft_p50_ms"] = b["back_to_back_ttft_p50_ms"]
            results["b2_arrival_seed"] = args.seed
            results["b2_c16_ratio"] = round(b["c16_rps"] / b["engine_c16_rps"], 3)
            results["b2"] = {k: b[k] for k in ("spread", "errors", "completion_tokens")}
    finally:
        engine.shutdown()
    results.update(
        {
            "requests_c1": args.c1,
            "requests_c16": args.c16,
            "runs": args.runs,
            "max_tokens": args.max_tokens,
            "model": MODEL,
            "engine": "raw vLLM AsyncLLM",
        }
    )
    return results


if __name__ == "__main__":
    sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--c1", type=int, default=int(os.environ.get("BENCH_GATEWAY_C1", "10")))
    parser.add_argument("--c16", type=int, default=int(os.environ.get("BENCH_GATEWAY_C16", "192")))
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("BENCH_SEED", "1")))
    parser.add_argument("--chains", choices=["both", "automine", "b2"], default="both")
    print(json.dumps(asyncio.run(main(parser.parse_args()))), flush=True)
