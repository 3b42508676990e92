"""The gateway's ONE MQTT subscription: deltas and results of every request on the configured hubs.

Wildcard topics (`.../req/+/+/delta`, `.../req/+/+/result`) mean no per-request subscribe; messages
are routed by request id into the pending registry, with the publishing miner taken from the topic
(on a locked-down broker the ACL made sure the publisher owns that name), so the registry can keep
only what the request's assignees sent. The broker is a fast path only: when it is down the
subscriber reconnects with backoff while the chain watcher and the content store still deliver every
result.

Everything in a message is untrusted: payloads go through `node.gate` with `MQTT_LIMITS`, anything
malformed is counted in `drops` and dropped, and nothing a peer sends can end the receive loop. A
delta's `tool_calls` fragments are checked for OpenAI's shape (an int index below `MAX_TOOL_CALLS`,
string id/name/arguments, an id and a name only together) before they reach the stream, which holds
them until the result is verified (see `streaming`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from node.gate import MQTT_LIMITS, UntrustedJSON, load_json_object
from node.gateway.pending import ResultMessage
from node.gateway.records import Delta, ToolCallFragment
from node.log import get_logger
from node.stream.connection import Backoff, Broker
from node.stream.topics import RequestTopic, parse_request_topic, request_filters

log = get_logger("gateway.mqtt")

MAX_QUEUED_MESSAGES = 1000
"""Messages received but not yet handled (each at most the broker's `max_packet_size`)."""


def request_topics(chain_id: int, hub: str) -> list[str]:
    """What the gateway subscribes to for one hub (every miner's deltas and results)."""
    return request_filters(chain_id, hub)


@dataclass(frozen=True)
class Routed:
    """A parsed message: which chain/hub/request it is for, who published it, and its payload."""

    chain_id: int
    hub: str
    request_id: int
    miner: str = ""
    delta: Delta | None = None
    result: ResultMessage | None = None


class Malformed(ValueError):
    """A message dropped before routing; `reason` is the drop counter's label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def route(topic: str, payload: bytes) -> Routed:
    """A delta or result message from its topic and JSON payload; `Malformed` says why not."""
    where = parse_request_topic(topic)
    if where is None:
        raise Malformed("bad_topic")
    try:
        body = load_json_object(payload, MQTT_LIMITS)
    except UntrustedJSON as exc:
        raise Malformed(f"payload_{exc.reason}") from None
    if where.kind == "delta":
        return _delta(where, body)
    return _result(where, body)


def parse_message(topic: str, payload: bytes) -> Routed | None:
    """`route`, with None for anything malformed."""
    try:
        return route(topic, payload)
    except Malformed:
        return None


MAX_TOOL_CALLS = 128
"""Tool-call indexes a delta may name (0 ≤ index < this), and entries one delta may carry."""
MAX_TOOL_ID_CHARS = 64
MAX_TOOL_NAME_CHARS = 256


def _delta(where: RequestTopic, body: dict[str, Any]) -> Routed:
    seq, choice, delta = body.get("seq"), body.get("choice", 0), body.get("delta")
    if type(seq) is not int or type(choice) is not int or seq < 0 or not 0 <= choice < 1024:
        raise Malformed("bad_delta")
    routed_delta = delta_of(seq, choice, where.miner, delta)
    return Routed(where.chain_id, where.hub, where.request_id, where.miner, delta=routed_delta)


def delta_of(seq: int, choice: int, miner: str, delta: Any) -> Delta:
    """A delta message's `delta` (text or an object) as a `Delta`; `Malformed` for bad tool calls.

    A private request's delta is `{"sealed": base64}` and is kept as such for the gateway to open.
    """
    text = ""
    fragments: tuple[ToolCallFragment, ...] = ()
    if isinstance(delta, dict):
        sealed = delta.get("sealed")
        if isinstance(sealed, str):
            return Delta(seq=seq, choice=choice, text="", miner=miner, sealed=sealed)
        value = delta.get("content", delta.get("text"))
        text = value if isinstance(value, str) else ""
        calls = delta.get("tool_calls")
        if calls is not None:
            fragments = _tool_call_fragments(calls)
    elif isinstance(delta, str):
        text = delta
    return Delta(seq=seq, choice=choice, text=text, miner=miner, tool_calls=fragments)


def _tool_call_fragments(calls: Any) -> tuple[ToolCallFragment, ...]:
    """A delta's `tool_calls` entries, checked for shape and bounds (sizes are already bounded by
    `MQTT_LIMITS`); anything else drops the whole delta (`bad_tool_calls`)."""
    if not isinstance(calls, list) or len(calls) > MAX_TOOL_CALLS:
        raise Malformed("bad_tool_calls")
    return tuple(_fragment(entry) for entry in calls)


def _fragment(entry: Any) -> ToolCallFragment:
    if not isinstance(entry, dict) or not isinstance(function := entry.get("function", {}), dict):
        raise Malformed("bad_tool_calls")
    index, call_id, name = entry.get("index"), entry.get("id"), function.get("name")
    arguments = function.get("arguments", "")
    if type(index) is not int or not 0 <= index < MAX_TOOL_CALLS or not isinstance(arguments, str):
        raise Malformed("bad_tool_calls")
    if entry.get("type", "function") != "function" or (call_id is None) != (name is None):
        raise Malformed("bad_tool_calls")  # a call starts with both its id and name, or neither
    if name is not None and not (
        isinstance(call_id, str) and isinstance(name, str)
        and 0 < len(call_id) <= MAX_TOOL_ID_CHARS and 0 < len(name) <= MAX_TOOL_NAME_CHARS
    ):  # fmt: skip
        raise Malformed("bad_tool_calls")
    return ToolCallFragment(index=index, id=call_id, name=name, arguments=arguments)


def _result(where: RequestTopic, body: dict[str, Any]) -> Routed:
    output, signature, miner = body.get("output"), body.get("signature"), body.get("miner", where.miner)
    if not (isinstance(output, str) and isinstance(signature, str) and isinstance(miner, str)):
        raise Malformed("bad_result")
    if miner.lower() != where.miner.lower():
        raise Malformed("miner_mismatch")  # the payload claims a sender the topic (and ACL) does not
    message = ResultMessage(output_bytes=output.encode("utf-8"), signature=signature, miner=where.miner)
    return Routed(where.chain_id, where.hub, where.request_id, where.miner, result=message)


class Subscriber:
    """Keeps one MQTT session subscribed to `topics`; hands every well-formed message to `on_message`."""

    def __init__(
        self,
        broker_url: str,
        topics: list[str],
        on_message: Callable[[Routed], None],
        *,
        username: str | None = None,
        password: str | None = None,
        max_backoff_s: float = 5.0,
        on_heartbeat: Callable[[str, bytes], object] | None = None,
    ) -> None:
        self.broker = Broker.from_url(broker_url, username=username, password=password)
        self.host, self.port = self.broker.host, self.broker.port
        self.topics = topics
        self.on_message = on_message
        self.on_heartbeat = on_heartbeat
        """Retained miner heartbeats (`.../miner/{address}`), if `topics` subscribes to them."""
        self.username = username
        self.max_backoff_s = max_backoff_s
        self.connected = asyncio.Event()
        self.received = 0
        self.drops: Counter[str] = Counter()
        """Messages dropped here, by reason (`bad_topic`, `payload_too_large`, `handler_error`, ...)."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gateway-mqtt")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        self.connected.clear()

    def handle(self, topic: str, payload: Any) -> None:
        """Route one received message; never raises (a hostile message is counted and dropped)."""
        self.received += 1
        if not isinstance(payload, bytes | bytearray):
            self.drops["bad_payload"] += 1
            return
        if self.on_heartbeat is not None and "/miner/" in topic:
            try:
                self.on_heartbeat(topic, bytes(payload))
            except Exception:  # a hostile heartbeat is dropped, never ends the subscription
                self.drops["bad_heartbeat"] += 1
            return
        try:
            routed = route(topic, bytes(payload))
        except Malformed as exc:
            self.drops[exc.reason] += 1
            return
        try:
            self.on_message(routed)
        except Exception as exc:  # a bug downstream must not end the subscription for everyone
            self.drops["handler_error"] += 1
            log.exception("mqtt_handler_error", error=f"{type(exc).__name__}", request_id=routed.request_id)

    async def _session(self, backoff: Backoff) -> None:
        client = self.broker.client(
            identifier=f"inferd-gateway-{secrets.token_hex(4)}",
            max_queued_incoming_messages=MAX_QUEUED_MESSAGES,
        )
        async with client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            self.connected.set()
            backoff.reset()
            log.info("mqtt_subscribed", broker=f"{self.host}:{self.port}", topics=len(self.topics))
            async for message in client.messages:
                self.handle(str(message.topic), message.payload)

    async def _run(self) -> None:
        backoff = Backoff(self.max_backoff_s)
        while True:
            try:
                await self._session(backoff)
            except aiomqtt.MqttError as exc:
                if self.connected.is_set():
                    log.warning("mqtt_disconnected", error=str(exc))
                else:
                    log.debug("mqtt_connect_failed", error=str(exc), retry_in_s=backoff.delay)
            except Exception as exc:  # never let one bad session end the gateway's only subscription
                log.exception("mqtt_session_error", error=type(exc).__name__)
            self.connected.clear()
            await backoff.wait()


class DropsCollector(Collector):
    """`inferd_gateway_mqtt_dropped_total{reason}`: MQTT messages and buffered bytes dropped.

    Register it on the gateway's metrics registry with the counters to export (the subscriber's
    `drops` and the pending registry's `drops`); it reads them at scrape time.
    """

    def __init__(self, sources: Iterable[Callable[[], Counter[str]]]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "inferd_gateway_mqtt_dropped",
            "MQTT messages dropped: malformed, oversized, from a non-assignee, or over a buffer bound.",
            labels=["reason"],
        )
        total: Counter[str] = Counter()
        for source in self.sources:
            total.update(source())
        for reason, count in sorted(total.items()):
            family.add_metric([reason], count)
        yield family


__all__ = [
    "MAX_QUEUED_MESSAGES",
    "MAX_TOOL_CALLS",
    "DropsCollector",
    "Malformed",
    "Routed",
    "Subscriber",
    "parse_message",
    "request_topics",
    "route",
]
