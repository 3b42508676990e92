"""New chain heads pushed over `chain.ws_url` (`eth_subscribe("newHeads")`), used only to wake a poller.

Why heads and not logs: the follower (`node.chain.watcher`) owns confirmations, the cursor and
reorg detection, all built on `eth_getLogs` over confirmed ranges. A `logs` subscription would
bring unconfirmed logs, `removed: true` re-deliveries on reorgs, and nothing at all for what happened
while the socket was down: a second path to keep consistent with the first. A head notification
only says "look now", so a missed or duplicated one costs nothing but latency. With the socket up,
the follower reacts to a block within a round trip instead of up to `poll_interval_s` later and
polls only as a slow safety net; with it down or not configured it polls exactly as before.

`HeadSubscription.run()` reconnects forever with exponential backoff (capped; reset once a head
arrives on a new connection) and never raises into its caller: the worst it can do is not wake
anyone. Each change between connected and not connected also calls `on_change`, so the follower
switches between its push and poll intervals at once. It uses web3.py's own `WebSocketProvider`
with pings every `ping_s` so that a silently dead connection is noticed.

WebSocket URLs of RPC providers often carry an API key in their path: our lines name only the
endpoint's scheme, host and port; the URL's path, query and password are registered with `node.log`
as secrets (web3 puts the URL in its own messages); and web3's per-connection chatter (INFO
"Connecting to: <url>" on every retry, ERROR "Stopping message stream" on every drop, both said
better by our own lines) is kept out of the logs.

`HeadsCollector` exports `<prefix>_ws_connected`, `<prefix>_ws_reconnects_total` and
`<prefix>_ws_heads_total` by chain, for each configured subscription (none when `ws_url` is unset).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from web3 import AsyncWeb3, WebSocketProvider

from node.log import get_logger, register_secret

log = get_logger("inferd.chain.heads")
Sleep = Callable[[float], Awaitable[Any]]


class _DropStreamEnd(logging.Filter):
    """Drops web3's ERROR "Stopping message stream" (a drop we handle and log ourselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Stopping message stream")


def _quiet_web3_socket_logs() -> None:
    for name in ("web3.providers.WebSocketProvider", "web3.providers.persistent.subscription_manager"):
        logging.getLogger(name).setLevel(logging.WARNING)
    manager = logging.getLogger("web3.manager.RequestManager")
    if not any(isinstance(f, _DropStreamEnd) for f in manager.filters):
        manager.addFilter(_DropStreamEnd())


class HeadStreamEnded(ConnectionError):
    """The node closed the subscription stream without an error (a graceful close is still a drop)."""


def endpoint_label(url: str) -> str:
    """`scheme://host:port` of a URL: what may be logged of it (paths and queries can hold API keys)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


@dataclass
class HeadStats:
    """What the subscription has done, for metrics and tests."""

    connected: bool = False
    connects: int = 0  # subscriptions established (the first one included)
    heads: int = 0  # notifications received
    last_head: int = -1
    last_error: str | None = None  # the type of the last connection error (and its cause's), never a message
    retry_in_s: float | None = None

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


class HeadSubscription:
    """Calls `on_head(number)` for every new head while a WebSocket subscription is up (see module)."""

    def __init__(
        self,
        url: str,
        *,
        on_head: Callable[[int], None],
        on_change: Callable[[bool], None] | None = None,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        open_timeout_s: float = 10.0,
        ping_s: float = 20.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"chain.ws_url must start with ws:// or wss://, got {endpoint_label(url)!r}")
        self.url = url
        self.endpoint = endpoint_label(url)
        parts = urlsplit(url)
        for secret in (parts.password, parts.path.strip("/"), parts.query):
            if secret:
                register_secret(secret)  # (only those of 8 characters or more)
        _quiet_web3_socket_logs()
        self.on_head = on_head
        self.on_change = on_change
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.open_timeout_s = open_timeout_s
        self.ping_s = ping_s
        self.stats = HeadStats()
        self._sleep = sleep

    def _provider(self) -> WebSocketProvider:
        return WebSocketProvider(
            self.url,
            websocket_kwargs={
                "open_timeout": self.open_timeout_s,
                "ping_interval": self.ping_s,
                "ping_timeout": self.ping_s,
            },
            max_connection_retries=1,  # the backoff is ours: web3's own retries would block run()
            request_timeout=self.open_timeout_s,
        )

    def _set_connected(self, connected: bool) -> None:
        if connected == self.stats.connected:
            return
        self.stats.connected = connected
        if self.on_change is not None:
            self.on_change(connected)

    async def _session(self) -> None:
        """One connection: subscribe, then report heads until the stream ends or fails."""
        async with AsyncWeb3(self._provider()) as w3:
            await w3.eth.subscribe("newHeads")
            self.stats.connects += 1
            self.stats.retry_in_s = None
            self._set_connected(True)
            log.info("ws_heads_subscribed", endpoint=self.endpoint, connects=self.stats.connects)
            async for message in w3.socket.process_subscriptions():
                number = _head_number(message)
                if number is None:
                    continue
                self.stats.heads += 1
                self.stats.last_head = max(self.stats.last_head, number)
                self.on_head(number)
        raise HeadStreamEnded("the node ended the newHeads stream")

    async def run(self) -> None:
        """Subscribe, and after any failure subscribe again with backoff, until cancelled."""
        delay = self.first_backoff_s
        while True:
            heads_before = self.stats.heads
            try:
                await self._session()
            except asyncio.CancelledError:
                self._set_connected(False)
                raise
            except Exception as exc:
                cause = exc.__cause__ or exc.__context__
                self.stats.last_error = type(exc).__name__ + (f"({type(cause).__name__})" if cause else "")
                if self.stats.heads > heads_before:
                    delay = self.first_backoff_s  # that connection worked: start the backoff over
                was_connected = self.stats.connected
                self._set_connected(False)
                self.stats.retry_in_s = delay
                log.warning(
                    "ws_heads_down" if was_connected else "ws_heads_unreachable",
                    endpoint=self.endpoint, error=self.stats.last_error, retry_in_s=delay,
                    note="polling every poll_interval_s meanwhile",
                )  # fmt: skip
            await self._sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)


def _head_number(message: Any) -> int | None:
    try:
        number = message["result"]["number"]
        return int(number, 16) if isinstance(number, str) else int(number)
    except (KeyError, TypeError, ValueError):
        return None


class HeadsCollector(Collector):
    """Prometheus view of head subscriptions by chain id (`None`: ws_url not set, no series)."""

    def __init__(self, prefix: str, sources: Callable[[], Mapping[int, HeadSubscription | None]]) -> None:
        self.prefix = prefix
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        p = self.prefix
        connected = GaugeMetricFamily(
            f"{p}_ws_connected", "1 while new heads arrive over chain.ws_url, 0 while polling only",
            labels=["chain_id"],
        )  # fmt: skip
        reconnects = CounterMetricFamily(
            f"{p}_ws_reconnects", "newHeads subscriptions re-established after a drop", labels=["chain_id"]
        )
        heads = CounterMetricFamily(
            f"{p}_ws_heads", "New heads received over chain.ws_url", labels=["chain_id"]
        )
        for chain_id, sub in self.sources().items():
            if sub is None:
                continue
            label = [str(chain_id)]
            connected.add_metric(label, 1.0 if sub.stats.connected else 0.0)
            reconnects.add_metric(label, sub.stats.reconnects)
            heads.add_metric(label, sub.stats.heads)
        return [connected, reconnects, heads]


__all__ = ["HeadStats", "HeadStreamEnded", "HeadSubscription", "HeadsCollector", "endpoint_label"]
