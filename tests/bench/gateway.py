"""Latency through the gateway vs the engine alone, for the same requests, at concurrency 1 and 16.

A one-box devnet in this process: anvil (automine), mosquitto, a miner daemon with the real CPU
engine (SmolLM2), and the gateway under uvicorn; requests go over HTTP as an OpenAI client sends
them. The engine-alone numbers run the very same input documents through `Engine.generate`.
The last line is one JSON object:
`{"c1_p50_ms", "c1_p99_ms", "c16_p50_ms", "c16_p99_ms", "engine_c1_p50_ms", "engine_c16_p50_ms", ...}`.

    .venv/bin/python tests/bench/gateway.py [--c1 N] [--c16 N] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

MODEL = "SmolLM2-135M-Instruct"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def bodies(count: int, max_tokens: int, offset: int) -> list[dict[str, Any]]:
    return [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Name a colour and a fruit. ({offset + i})"}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": offset + i,
        }
        for i in range(count)
    ]


async def timed(calls: list[Callable[[], Awaitable[None]]], concurrency: int) -> tuple[list[float], float]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            t0 = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in calls))
    return latencies, time.perf_counter() - start


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from node.log import configure_logging

    configure_logging("warning", "console")  # before the modules below bind their loggers
    import httpx

    from node.chain.hub import HubClient
    from node.config import EngineSettings, load_settings
    from node.content.cid import cid_for_bytes
    from node.content.documents import to_canonical_bytes
    from node.content.local import LocalStore
    from node.devnet.processes import anvil_private_keys, anvil_process, mosquitto_process
    from node.engine.engine import Engine
    from node.gateway.app import create_app
    from node.gateway.auth import KeyStore
    from node.gateway.schemas import parse_chat_request
    from node.gateway.server import GatewayServer
    from node.miner.daemon import DaemonConfig
    from node.miner.testing import deploy_dev_hub, local_daemon

    tmp = Path(tempfile.mkdtemp(prefix="inferd-bench-gw-"))
    anvil = anvil_process(tmp)
    broker = mosquitto_process(tmp)
    anvil.start()
    broker.start()
    engine = await Engine.start(EngineSettings(max_num_seqs=32))
    stop = asyncio.Event()
    server: GatewayServer | None = None
    miner_task: asyncio.Task[None] | None = None
    try:
        keys = anvil_private_keys(4)
        hub = await deploy_dev_hub(anvil.rpc_url, keys[0], [keys[1]], model_name=MODEL, timeout_blocks=1000)
        store = LocalStore(tmp / "blocks")
        daemon = local_daemon(
            hub=HubClient(HubClient.web3(anvil.rpc_url), hub.owner.address, keys[1]),
            miner_key=keys[1],
            engine=engine,
            store=store,
            journal_path=tmp / "journal.sqlite",
            broker_url=broker.url,
            config=DaemonConfig(chain_id=31337, poll_interval_s=0.1, batch_wait_s=0.02, sweep_interval_s=0.5),
        )
        miner_task = asyncio.create_task(daemon.run(stop))
        settings = load_settings(
            data_dir=tmp,
            chain={"rpc_url": anvil.rpc_url, "hub_address": hub.owner.address, "private_key": keys[2],
                   "poll_interval_s": 0.1},
            stream={"broker_url": broker.url},
            gateway={"rate_limit_per_minute": 100_000, "request_timeout_s": 300},
        )  # fmt: skip
        api_key, _ = KeyStore(tmp / "gateway" / "api_keys.json").add("bench")
        server = GatewayServer(create_app(settings))
        await server.start()
        await server.app.state.gateway.backend.wait_ready(10)

        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=300
        ) as http:

            def via_gateway(body: dict[str, Any]) -> Callable[[], Awaitable[None]]:
                async def call() -> None:
                    reply = await http.post("/v1/chat/completions", json=body)
                    reply.raise_for_status()

                return call

            rid = iter(range(10**6, 10**7))

            def via_engine(body: dict[str, Any]) -> Callable[[], Awaitable[None]]:
                data = to_canonical_bytes(parse_chat_request(body).document)
                cid = cid_for_bytes(data)

                async def call() -> None:
                    await engine.generate(data, request_id=next(rid), input_cid=cid, created=0)

                return call

            warm = bodies(2, args.max_tokens, 900_000)
            await timed([via_gateway(b) for b in warm], 1)
            await timed([via_engine(b) for b in warm], 1)

            c1 = bodies(args.c1, args.max_tokens, 0)
            c16 = bodies(args.c16, args.max_tokens, 1000)
            results: dict[str, Any] = {}
            for label, batch, conc in (("c1", c1, 1), ("c16", c16, 16)):
                eng, eng_wall = await timed([via_engine(b) for b in batch], conc)
                gw, gw_wall = await timed([via_gateway(b) for b in batch], conc)
                results[f"{label}_p50_ms"] = round(percentile(gw, 0.5), 1)
                results[f"{label}_p99_ms"] = round(percentile(gw, 0.99), 1)
                results[f"engine_{label}_p50_ms"] = round(percentile(eng, 0.5), 1)
                results[f"engine_{label}_p99_ms"] = round(percentile(eng, 0.99), 1)
                results[f"{label}_rps"] = round(len(batch) / gw_wall, 2)
                results[f"engine_{label}_rps"] = round(len(batch) / eng_wall, 2)
                p50, p99 = results[f"{label}_p50_ms"], results[f"{label}_p99_ms"]
                print(
                    f"{label}: gateway p50 {p50} ms p99 {p99} ms"
                    f" | engine p50 {results[f'engine_{label}_p50_ms']} ms"
                    f" | overhead p50 {statistics.median(gw) - statistics.median(eng):.0f} ms",
                    file=sys.stderr,
                )
        results.update(
            {"requests_c1": args.c1, "requests_c16": args.c16, "max_tokens": args.max_tokens, "model": MODEL}
        )
        return results
    finally:
        if server is not None:
            await server.stop()
        stop.set()
        if miner_task is not None:
            await asyncio.wait_for(miner_task, 60)
        engine.shutdown()
        broker.stop()
        anvil.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c1", type=int, default=10, help="requests at concurrency 1")
    parser.add_argument("--c16", type=int, default=48, help="requests at concurrency 16")
    parser.add_argument("--max-tokens", type=int, default=16)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
