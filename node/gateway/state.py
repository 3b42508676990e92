"""What one gateway app shares between its parts: settings, the backend, the stores and metrics.

`create_app` builds one `GatewayState` and hangs it on `app.state.gateway`; the routes, the
caller check (`node.gateway.caller`) and each call (`node.gateway.calls`) reach it through the
request with `gateway_state`. It lives in its own module so that those modules need not import
`node.gateway.app`, which imports them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request

from node.config import Settings
from node.gateway.backend import InferenceBackend
from node.gateway.metrics import GatewayMetrics
from node.gateway.stores import ApiKeys, InFlightLimits, RateLimits, SpendLedgers


@dataclass
class GatewayState:
    settings: Settings
    backend: InferenceBackend
    keys: ApiKeys
    limiter: RateLimits
    metrics: GatewayMetrics
    ledger: SpendLedgers
    concurrency: InFlightLimits
    settling: set[asyncio.Task[None]] = field(default_factory=set)
    """Spend settling after a background `assign` (`PendingInference.assigning`) is mined."""


def gateway_state(request: Request) -> GatewayState:
    """The state of the app that received `request`."""
    st: GatewayState = request.app.state.gateway
    return st


__all__ = ["GatewayState", "gateway_state"]
