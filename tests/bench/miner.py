"""Miner vs raw vLLM on the same prompts, all at once and with requests arriving over time.

The chat prompts of `tests/bench/engine.py` (`node.engine.bench_prompts`), `max_tokens` 64,
temperature 0.8, seed i, in four phases:

1. engine, all at once: raw vLLM (`AsyncLLM` with the miners' engine arguments and the shipped
   `max_num_seqs`, not inferd's adapter) generates every prompt; its requests/s is the capacity;
2. engine, Poisson: the next prompts arrive at exponential gaps at `--load` (0.8) x that capacity;
3. miner, all at once: the first prompts are stored and requested on a fresh hub on anvil (assigned
   16 a transaction), then a `MinerDaemon` with the shipped settings (`max_concurrency`, batching,
   poll interval, `chain.ws_url`) and streaming on (mosquitto, token deltas published) is started
   and timed until every request is finalized (fetch, infer, stream, upload, sign, submit, receipts);
4. miner, Poisson: the daemon keeps running; the Poisson prompts are requested on chain (pay,
   assign, as the gateway does) at the same instants as in 2, each timed from its request to its
   finalization in the miner's journal.

Prints both sides and their ratios; the LAST line is one JSON object: `miner_tokens_per_s`,
`engine_tokens_per_s`, `ratio` (all at once, as before), `poisson_rate_rps`, `miner_poisson_p50_ms`,
`engine_poisson_p50_ms`, `poisson_p50_ratio`, `miner_poisson_rps`, `engine_poisson_rps`, ...

    .venv/bin/python tests/bench/miner.py [--requests 256] [--poisson 128] [--max-tokens 64] [--load 0.8]
    (env: BENCH_MINER_REQUESTS, BENCH_MINER_POISSON; a quick run: --requests 32 --poisson 24 --max-tokens 32)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

from node.chain.hub import HubClient, Phase
from node.config import load_settings
from node.content.cid import digest_to_cid
from node.content.documents import (
    ChatInputDocument,
    ChatParams,
    UserMessage,
    parse_output_document,
    to_canonical_bytes,
)
from node.content.local import LocalStore
from node.devnet.processes import anvil_private_keys, anvil_process, mosquitto_process
from node.engine.bench_prompts import BENCH_MAX_TOKENS, bench_prompts
from node.miner.daemon import DaemonConfig, engine_class_id
from node.miner.journal import JobState
from node.miner.testing import deploy_dev_hub, dev_request, local_daemon
from tests.bench.loadgen import (
    Call,
    RawEngine,
    Sample,
    devnet_engine_settings,
    percentile,
    run_closed,
    run_poisson,
    summarize,
)

MODEL = "SmolLM2-135M-Instruct"
TEMPERATURE = 0.8


def document(prompt: str, max_tokens: int, seed: int) -> bytes:
    params = ChatParams(max_tokens=max_tokens, temperature=TEMPERATURE, seed=seed)
    return to_canonical_bytes(
        ChatInputDocument(model=MODEL, messages=[UserMessage(role="user", content=prompt)], params=params)
    )


def workload(n: int, offset: int) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: the bench prompts from `offset`, wrapping around, seed = position."""
    prompts = bench_prompts()
    return [(prompts[(offset + i) % len(prompts)], offset + i) for i in range(n)]


def _cpu_of(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


async def engine_phases(
    burst: list[tuple[str, int]], arrivals: list[tuple[str, int]], args: argparse.Namespace
) -> dict[str, Any]:
    raw = await RawEngine.start(devnet_engine_settings())
    try:

        def calls(work: list[tuple[str, int]]) -> list[Call]:
            msgs = [[{"role": "user", "content": p}] for p, _ in work]
            return [
                partial(raw.chat, m, args.max_tokens, seed, TEMPERATURE)
                for m, (_, seed) in zip(msgs, work, strict=True)
            ]

        await run_closed(calls(burst[:1]), 1)  # warm-up, not timed
        samples, seconds = await run_closed(calls(burst), len(burst))
        tokens = sum(s.tokens for s in samples)
        capacity = len(burst) / seconds
        rate = args.load * capacity
        print(f"engine all at once: {tokens} tokens in {seconds:.1f}s = {tokens / seconds:.1f} tokens/s, "
              f"{capacity:.2f} req/s; Poisson at {rate:.2f} req/s", file=sys.stderr, flush=True)  # fmt: skip
        poisson, p_wall = await run_poisson(calls(arrivals), rate)
        totals, _, errors = summarize(poisson)
        return {
            "tokens": tokens,
            "seconds": seconds,
            "rate": rate,
            "poisson_totals": totals,
            "poisson_rps": len(totals) / p_wall,
            "errors": errors,
        }
    finally:
        raw.shutdown()


async def miner_phases(
    burst: list[tuple[str, int]], arrivals: list[tuple[str, int]], rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    from node.engine.engine import Engine

    work = Path(tempfile.mkdtemp(prefix="inferd-bench-miner-"))
    engine = await Engine.start(devnet_engine_settings())
    anvil = anvil_process(work)
    broker = mosquitto_process(work)
    anvil.start()
    broker.start()
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:
        keys = anvil_private_keys(4)
        ec = engine_class_id(engine)
        assert ec is not None
        hub = await deploy_dev_hub(
            anvil.rpc_url, keys[0], [keys[1]], model_name=MODEL, timeout_blocks=200, engine_class=ec
        )
        requester = HubClient(hub.owner.w3, hub.owner.address, keys[2])
        store = LocalStore(work / "blocks")
        docs = [document(p, args.max_tokens, seed) for p, seed in burst]
        ids = []
        for d in docs:
            await store.put(d)
            ids.append(await dev_request(requester, hub.model, d, assign=False))
        for _ in range(0, len(docs), 16):  # seats drawn in a later block, 16 requests a transaction
            await requester.assign(16)
        chain = {"rpc_url": anvil.rpc_url, "ws_url": anvil.ws_url, "hub_address": hub.owner.address}
        shipped = load_settings(data_dir=work, chain=chain)
        config = DaemonConfig(
            chain_id=31337,
            max_concurrency=shipped.miner.max_concurrency,
            batch_max=shipped.miner.batch_max,
            batch_wait_s=shipped.miner.batch_wait_s,
            confirmations=shipped.chain.confirmations,
            poll_interval_s=shipped.chain.poll_interval_s,
            ws_url=shipped.chain.ws_url,
        )
        daemon = local_daemon(
            hub=HubClient(HubClient.web3(anvil.rpc_url), hub.owner.address, keys[1]),
            miner_key=keys[1],
            engine=engine,
            store=store,
            journal_path=work / "journal.sqlite",
            broker_url=broker.url,
            config=config,
        )
        journal = daemon.journal
        cpu0, anvil0 = time.process_time(), _cpu_of(anvil.proc.pid if anvil.proc else 0)
        t0 = time.monotonic()
        task = asyncio.create_task(daemon.run(stop))
        # Poll the miner's journal (cheap, in-process) so the benchmark itself does not eat the CPU
        # the engine needs; the chain is checked once the miner says everything is finalized.
        while journal.counts()[JobState.FINALIZED] < len(ids):
            if task.done():
                task.result()
            await asyncio.sleep(0.2)
        seconds = time.monotonic() - t0
        anvil_cpu = _cpu_of(anvil.proc.pid if anvil.proc else 0) - anvil0
        print(f"miner all at once: {seconds:.1f}s, main-process CPU {time.process_time() - cpu0:.1f}s, "
              f"anvil CPU {anvil_cpu:.1f}s", file=sys.stderr, flush=True)  # fmt: skip
        infos = [await hub.owner.get_request(i) for i in ids]
        assert all(i.phase == Phase.FINAL for i in infos), "journal and chain disagree"
        tokens = 0
        for info in infos:
            out = parse_output_document(await store.get(digest_to_cid(info.output_digest or b"")))
            tokens += out.usage.completion_tokens if out.usage else 0

        async def arrive(data: bytes) -> Sample:
            t = time.perf_counter()
            await store.put(data)
            rid = await dev_request(requester, hub.model, data)
            while True:
                job = journal.get(rid)
                if job is not None and job.state == JobState.FINALIZED:
                    return Sample((time.perf_counter() - t) * 1000)
                if job is not None and job.state in (JobState.FAILED, JobState.EXPIRED, JobState.DROPPED):
                    return Sample((time.perf_counter() - t) * 1000, error=str(job.state))
                if task is not None and task.done():
                    task.result()
                await asyncio.sleep(0.05)

        calls: list[Call] = [partial(arrive, document(p, args.max_tokens, seed)) for p, seed in arrivals]
        poisson, p_wall = await run_poisson(calls, rate)
        totals, _, errors = summarize(poisson)
        return {
            "tokens": tokens,
            "seconds": seconds,
            "poisson_totals": totals,
            "poisson_rps": len(totals) / p_wall,
            "errors": errors,
            "txs": int(daemon.metrics.txs.labels("ok")._value.get()),
        }
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 60)
        engine.shutdown()
        broker.stop()
        anvil.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    burst = workload(args.requests, 0)
    arrivals = workload(args.poisson, args.requests)
    e = await engine_phases(burst, arrivals, args)
    m = await miner_phases(burst, arrivals, e["rate"], args)
    e_rate, m_rate = e["tokens"] / e["seconds"], m["tokens"] / m["seconds"]
    e_p50, m_p50 = percentile(e["poisson_totals"], 0.5), percentile(m["poisson_totals"], 0.5)
    result = {
        "miner_tokens_per_s": round(m_rate, 2),
        "engine_tokens_per_s": round(e_rate, 2),
        "ratio": round(m_rate / e_rate, 3),
        "poisson_rate_rps": round(e["rate"], 3),
        "miner_poisson_p50_ms": round(m_p50, 1),
        "engine_poisson_p50_ms": round(e_p50, 1),
        "poisson_p50_ratio": round(m_p50 / e_p50, 3),
        "miner_poisson_p99_ms": round(percentile(m["poisson_totals"], 0.99), 1),
        "engine_poisson_p99_ms": round(percentile(e["poisson_totals"], 0.99), 1),
        "miner_poisson_rps": round(m["poisson_rps"], 3),
        "engine_poisson_rps": round(e["poisson_rps"], 3),
        "poisson_rps_ratio": round(m["poisson_rps"] / e["poisson_rps"], 3),
        "errors": e["errors"] + m["errors"],
        "requests": args.requests,
        "poisson_requests": args.poisson,
        "load": args.load,
        "max_tokens": args.max_tokens,
        "miner_seconds": round(m["seconds"], 2),
        "engine_seconds": round(e["seconds"], 2),
        "submit_txs": m["txs"],
        "engine": "raw vLLM AsyncLLM",
        "streaming": True,
    }
    print(
        f"all at once: miner {m_rate:.1f} / engine {e_rate:.1f} tokens/s = {result['ratio']} | Poisson at "
        f"{e['rate']:.2f} req/s: p50 miner {m_p50:.0f} ms / engine {e_p50:.0f} ms "
        f"= {result['poisson_p50_ratio']}",
        file=sys.stderr,
        flush=True,
    )
    return result


def main() -> int:
    sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=int(os.environ.get("BENCH_MINER_REQUESTS", "256")))
    parser.add_argument("--poisson", type=int, default=int(os.environ.get("BENCH_MINER_POISSON", "128")))
    parser.add_argument("--max-tokens", type=int, default=BENCH_MAX_TOKENS)
    parser.add_argument(
        "--load", type=float, default=0.8, help="Poisson rate as a share of the engine's capacity"
    )
    args = parser.parse_args()
    from node.log import configure_logging

    configure_logging("warning", "console")
    result = asyncio.run(main_async(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":  # vLLM spawns processes
    sys.exit(main())
