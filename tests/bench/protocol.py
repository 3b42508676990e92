"""The protocol alone: what a request costs when the engine costs nothing.

`inferd devnet up --fake-engine` (one miner answering instantly with the deterministic fake engine,
automine anvil, the devnet's shipped chain/poll/batch settings; only the gateway's per-key admission
limits lifted, see `tests/bench/loadgen.py`), then chat completions over HTTP as an OpenAI client
sends them: latency at concurrency 1, then requests/s at concurrency 64. Every failed request
(non-200, broken stream, transport error) is counted, not retried. Issue 14's targets: p50 <= 100 ms
at concurrency 1, >= 100 requests/s at concurrency 64, no errors.

The LAST line is one JSON object: `{"protocol_c1_p50_ms", "protocol_c64_rps", "protocol_errors", ...}`.

    .venv/bin/python tests/bench/protocol.py [--c1 N] [--c64 N] [--runs N] [--block-time S]
    (env: BENCH_PROTOCOL_C1, BENCH_PROTOCOL_C64, BENCH_RUNS)
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

from tests.bench.loadgen import (
    devnet,
    gateway_calls,
    gateway_client,
    messages,
    percentile,
    run_closed,
    spread,
    summarize,
)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with devnet(fake_engine=True, block_time=args.block_time) as info, gateway_client(info) as http:
        await run_closed(gateway_calls(http, messages(4, 900_000), 16, 900_000, False), 4)
        errors = 0
        c1_p50: list[float] = []
        c1_p99: list[float] = []
        c64_rps: list[float] = []
        c64_p50: list[float] = []
        for run in range(args.runs):
            base = run * 100_000
            samples, _ = await run_closed(gateway_calls(http, messages(args.c1, base), 16, base, False), 1)
            totals, _, failed = summarize(samples)
            errors += failed
            c1_p50.append(percentile(totals, 0.5))
            c1_p99.append(percentile(totals, 0.99))
            c64 = gateway_calls(http, messages(args.c64, base + 50_000), 16, base + 50_000, False)
            samples, wall = await run_closed(c64, 64)
            totals, _, failed = summarize(samples)
            errors += failed
            c64_rps.append(len(totals) / wall)
            c64_p50.append(percentile(totals, 0.5))
            print(
                f"run {run + 1}: c1 p50 {c1_p50[-1]:.0f} ms p99 {c1_p99[-1]:.0f} ms | "
                f"c64 {c64_rps[-1]:.1f} req/s p50 {c64_p50[-1]:.0f} ms | errors so far {errors}",
                file=sys.stderr,
                flush=True,
            )
    return {
        "protocol_c1_p50_ms": spread(c1_p50)["median"],
        "protocol_c64_rps": spread(c64_rps)["median"],
        "protocol_errors": errors,
        "protocol_c1_p99_ms": spread(c1_p99)["median"],
        "protocol_c64_p50_ms": spread(c64_p50)["median"],
        "spread": {"c1_p50_ms": spread(c1_p50), "c64_rps": spread(c64_rps)},
        "runs": args.runs,
        "requests_c1": args.c1,
        "requests_c64": args.c64,
        "chain": "automine" if args.block_time is None else f"block_time_{args.block_time}s",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--c1", type=int, default=int(os.environ.get("BENCH_PROTOCOL_C1", "30")))
    parser.add_argument("--c64", type=int, default=int(os.environ.get("BENCH_PROTOCOL_C64", "256")))
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    parser.add_argument(
        "--block-time", type=float, default=None, help="anvil's --block-time (default automine)"
    )
    print(json.dumps(asyncio.run(main(parser.parse_args()))), flush=True)
