"""Prometheus metrics of one gateway app, on its own registry (several apps can live in one process).

The wallet's money (`inferd_gateway_wallet_wei`, `inferd_gateway_gas_spent_wei_total`, by chain)
is what deploy/alerts.yml watches: a gateway whose wallet runs dry cannot put requests on chain.
`watch_wallets` starts one supervised balance loop per chain on the chain backend's supervisor, and
exports each chain's WebSocket heads (`inferd_gateway_ws_connected`, `_ws_reconnects_total`).

`ObserveRequests` is the ASGI middleware that feeds the per-endpoint request counts and latencies.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.chain.heads import HeadsCollector
from node.log import get_logger
from node.miner.metrics import build_info
from node.miner.money import DEFAULT_INTERVAL_S, watch_balance
from node.supervise import Supervisor, describe

log = get_logger("inferd.gateway.metrics")


class GatewayMetrics:
    """Request counts and latencies by endpoint and status, pending requests, rejected outputs,
    refusals by limit and the wallet's spend (never a key, a prompt or an address)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.build_info = build_info(self.registry)
        self.requests = Counter(
            "inferd_gateway_requests_total",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inferd_gateway_request_seconds",
            "Time to answer (to the last byte for streams), by endpoint.",
            ["endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.pending = Gauge(
            "inferd_gateway_pending_requests",
            "On-chain requests waiting for a verified result.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "inferd_gateway_rejected_outputs_total",
            "Outputs that failed verification (digest or signature) and were not returned.",
            registry=self.registry,
        )
        self.inferences = Counter(
            "inferd_gateway_inferences_total",
            "On-chain inference requests by outcome (ok, error, timeout, rejected).",
            ["outcome"],
            registry=self.registry,
        )

        self.limited = Counter(
            "inferd_gateway_limited_total",
            "Calls refused by a limit: rate, concurrency, insufficient_quota, gateway_budget_exhausted.",
            ["reason"],
            registry=self.registry,
        )
        self.spent = Counter(
            "inferd_gateway_spent_wei_total",
            "Wei the gateway wallet paid for request transactions (fees plus gas).",
            registry=self.registry,
        )

        self.wallet_wei = Gauge(
            "inferd_gateway_wallet_wei",
            "ETH balance of the gateway's wallet on a chain, in wei.",
            ["chain_id"],
            registry=self.registry,
        )
        self.gas_spent = Counter(
            "inferd_gateway_gas_spent_wei",
            "Wei the gateway wallet paid for gas (receipts of its request transactions), by chain.",
            ["chain_id"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def watch_wallets(backend: Any, metrics: GatewayMetrics, interval_s: float = DEFAULT_INTERVAL_S) -> None:
    """Keep `inferd_gateway_wallet_wei{chain_id}` fresh for every chain of a started chain backend.

    One `wallet-<chain id>` loop per chain on the backend's `Supervisor` (`loops`), reading the
    balance of the link's sender every `interval_s`. A backend without chain links (tests' fakes)
    gets nothing. An RPC error is logged at debug level and retried at the next interval.
    """
    loops = getattr(backend, "loops", None)
    links = getattr(backend, "links", None)
    if not isinstance(loops, Supervisor) or not isinstance(links, dict):
        return
    heads = {cid: getattr(getattr(link, "follower", None), "heads", None) for cid, link in links.items()}
    metrics.registry.register(HeadsCollector("inferd_gateway", lambda: heads))  # inferd_gateway_ws_*
    for chain_id, link in links.items():
        gauge = metrics.wallet_wei.labels(chain_id=str(chain_id))

        def failed(exc: BaseException, chain_id: int = chain_id) -> None:
            log.debug("wallet_balance_failed", chain_id=chain_id, error=describe(exc))

        loops.spawn(
            f"wallet-{chain_id}",
            functools.partial(
                watch_balance,
                link.hub.w3,
                link.sender.address,
                gauge.set,
                on_error=failed,
                interval_s=interval_s,
            ),
        )


def _endpoint_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class ObserveRequests:
    """Counts every HTTP response by endpoint and status and times it until its headers are sent.

    A plain ASGI middleware: Starlette's `BaseHTTPMiddleware` (`@app.middleware("http")`) runs each
    request through extra tasks and memory streams, a few percent of a loaded gateway's CPU for
    three HTTP requests per inference (the call, the seat's envelope, its sealed answer).
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._series: dict[tuple[str, int], tuple[Any, Any]] = {}
        """(endpoint, status) → its counter and latency children (`labels()` locks and hashes on
        every call); the routes and statuses are few."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start" and status is None:
                status = int(message["status"])
                self._record(scope, status, start)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            if status is None:  # nothing was sent (the app raised): Starlette answers 500
                self._record(scope, 500, start)

    def _record(self, scope: Scope, status: int, start: float) -> None:
        endpoint = _endpoint_label(scope)
        series = self._series.get((endpoint, status))
        if series is None:
            series = self._series[(endpoint, status)] = (
                self.metrics.requests.labels(endpoint=endpoint, status=str(status)),
                self.metrics.latency.labels(endpoint=endpoint),
            )
        series[0].inc()
        series[1].observe(time.perf_counter() - start)


__all__ = ["GatewayMetrics", "ObserveRequests", "watch_wallets"]
