"""Miner throughput vs the raw engine, in the same run, on anvil with the real CPU engine.

The 256 chat prompts of `tests/bench/engine.py` (`node.engine.bench_prompts`) with `max_tokens` 64,
temperature 0.8 and seed i:

1. engine: all 256 input documents through `Engine.generate` at once (no chain, no content store);
2. miner: the same 256 documents stored and requested on chain (a fresh hub on anvil), then a
   `MinerDaemon` is started and timed until every request is finalized on chain (fetch, infer,
   upload, sign, batched submit, receipts).

Prints both output token rates and their ratio; the LAST line is one JSON object
`{"miner_tokens_per_s", "engine_tokens_per_s", "ratio", ...}`.

    .venv/bin/python tests/bench/miner.py [--requests 256] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account import Account

from node.chain.hub import HubClient, Phase
from node.config import EngineSettings
from node.content.cid import digest_of, digest_to_cid
from node.content.documents import (
    ChatInputDocument,
    ChatParams,
    UserMessage,
    parse_input_document,
    parse_output_document,
    to_canonical_bytes,
)
from node.content.local import LocalStore
from node.devnet.processes import anvil_private_keys, anvil_process
from node.engine.bench_prompts import BENCH_MAX_TOKENS, bench_prompts
from node.miner.daemon import DaemonConfig, MinerDaemon, engine_class_id
from node.miner.journal import JobState, Journal
from node.miner.testing import deploy_dev_hub, dev_request

MODEL = "SmolLM2-135M-Instruct"


def documents(n: int, max_tokens: int) -> list[bytes]:
    return [
        to_canonical_bytes(
            ChatInputDocument(
                model=MODEL,
                messages=[UserMessage(role="user", content=p)],
                params=ChatParams(max_tokens=max_tokens, temperature=0.8, seed=i),
            )
        )
        for i, p in enumerate(bench_prompts()[:n])
    ]


def _cpu_of(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


async def engine_phase(engine: Any, docs: list[bytes]) -> tuple[int, float]:
    parsed = [parse_input_document(d) for d in docs]
    cpu0 = time.process_time()
    await engine.generate(
        parsed[0], request_id=0, input_cid=digest_to_cid(digest_of(docs[0])), created=0
    )  # warm-up
    t0 = time.monotonic()
    outs = await asyncio.gather(
        *(
            engine.generate(p, request_id=i + 1, input_cid=digest_to_cid(digest_of(d)), created=0)
            for i, (p, d) in enumerate(zip(parsed, docs, strict=True))
        )
    )
    seconds = time.monotonic() - t0
    print(f"engine phase: main-process CPU {time.process_time() - cpu0:.1f}s", flush=True)
    return sum(o.usage.completion_tokens for o in outs if o.usage), seconds


async def miner_phase(engine: Any, docs: list[bytes], work: Path) -> tuple[int, float, dict[str, Any]]:
    anvil = anvil_process(work)
    anvil.start()
    try:
        keys = anvil_private_keys(4)
        ec = engine_class_id(engine)
        assert ec is not None
        hub = await deploy_dev_hub(
            anvil.rpc_url, keys[0], [keys[1]], model_name=MODEL, timeout_blocks=200, engine_class=ec
        )
        requester = HubClient(hub.owner.w3, hub.owner.address, keys[2])
        store = LocalStore(work / "blocks")
        ids = []
        for d in docs:
            await store.put(d)
            ids.append(await dev_request(requester, hub.model, d, assign=False))
        for _ in range(0, len(docs), 16):  # seats drawn in a later block, 16 requests a transaction
            await requester.assign(16)
        account = Account.from_key(keys[1])
        client = HubClient(HubClient.web3(anvil.rpc_url), hub.owner.address, keys[1])
        journal = Journal(work / "journal.sqlite", scope="bench")
        config = DaemonConfig(
            chain_id=31337, max_concurrency=len(docs), poll_interval_s=0.2, batch_wait_s=0.5
        )
        daemon = MinerDaemon(
            config=config, hub=client, account=account, engine=engine, store=store, journal=journal
        )
        stop = asyncio.Event()
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
        print(
            f"miner phase: main-process CPU {time.process_time() - cpu0:.1f}s, anvil CPU {anvil_cpu:.1f}s",
            flush=True,
        )
        stop.set()
        await task
        infos = [await hub.owner.get_request(i) for i in ids]
        assert all(i.phase == Phase.FINAL for i in infos), "journal and chain disagree"
        tokens = 0
        for info in infos:
            out = parse_output_document(await store.get(digest_to_cid(info.output_digest or b"")))
            tokens += out.usage.completion_tokens if out.usage else 0
        extra = {
            "txs": int(daemon.metrics.txs.labels("ok")._value.get()),
            "gas": int(daemon.metrics.tx_gas._value.get()),
        }
        return tokens, seconds, extra
    finally:
        anvil.stop()


async def main_async(requests: int, max_tokens: int) -> dict[str, Any]:
    from node.engine.engine import Engine

    engine = await Engine.start(EngineSettings(max_num_seqs=64))
    try:
        docs = documents(requests, max_tokens)
        e_tokens, e_s = await engine_phase(engine, docs)
        e_rate = e_tokens / e_s
        print(f"engine: {e_tokens} tokens in {e_s:.1f}s = {e_rate:.1f} tokens/s", flush=True)
        with tempfile.TemporaryDirectory(prefix="inferd-bench-") as tmp:
            m_tokens, m_s, extra = await miner_phase(engine, docs, Path(tmp))
        m_rate = m_tokens / m_s
        print(f"miner:  {m_tokens} tokens in {m_s:.1f}s = {m_rate:.1f} tokens/s "
              f"({extra['txs']} submit txs, {extra['gas']} gas)", flush=True)  # fmt: skip
        return {
            "miner_tokens_per_s": round(m_rate, 2),
            "engine_tokens_per_s": round(e_rate, 2),
            "ratio": round(m_rate / e_rate, 3),
            "requests": requests,
            "max_tokens": max_tokens,
            "miner_seconds": round(m_s, 2),
            "engine_seconds": round(e_s, 2),
            "submit_txs": extra["txs"],
        }
    finally:
        engine.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=BENCH_MAX_TOKENS)
    args = parser.parse_args()
    result = asyncio.run(main_async(args.requests, args.max_tokens))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":  # vLLM spawns processes
    sys.exit(main())
