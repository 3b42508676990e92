"""Prometheus metrics of one gateway app, on its own registry (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class GatewayMetrics:
    """Request counts and latencies by endpoint and status, pending requests, rejected outputs,
    refusals by limit and the wallet's spend (never a key, a prompt or an address)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["GatewayMetrics"]
