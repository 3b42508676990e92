"""The gateway's ONE MQTT subscription: deltas and results of every request on the configured hubs.

Wildcard topics (`.../req/+/delta`, `.../req/+/result`) mean no per-request subscribe; messages are
routed by request id into the pending registry. The broker is a fast path only: when it is down
the subscriber reconnects with backoff while the chain watcher and the content store still deliver
every result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt
from eth_utils.address import to_checksum_address

from node.gateway.pending import ResultMessage
from node.gateway.records import Delta
from node.log import get_logger
from node.stream.connection import Backoff, Broker
from node.stream.topics import PREFIX

log = get_logger("gateway.mqtt")


def request_topics(chain_id: int, hub: str) -> list[str]:
    base = f"{PREFIX}/{int(chain_id)}/{to_checksum_address(hub)}/req/+"
    return [f"{base}/delta", f"{base}/result"]


@dataclass(frozen=True)
class Routed:
    """A parsed message: which chain/hub/request it is for, and its payload."""

    chain_id: int
    hub: str
    request_id: int
    delta: Delta | None = None
    result: ResultMessage | None = None


def parse_message(topic: str, payload: bytes) -> Routed | None:
    """A delta or result message from its topic and JSON payload; None for anything malformed."""
    parts = topic.split("/")
    # inferd / v1 / {chain} / {hub} / req / {id} / {kind}
    if len(parts) != 7 or "/".join(parts[:2]) != PREFIX or parts[4] != "req":
        return None
    try:
        chain_id, request_id = int(parts[2]), int(parts[5])
        hub = to_checksum_address(parts[3])
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    if parts[6] == "delta":
        seq, choice, delta = body.get("seq"), body.get("choice", 0), body.get("delta")
        if not isinstance(seq, int) or not isinstance(choice, int):
            return None
        text = ""
        if isinstance(delta, dict):
            value = delta.get("content", delta.get("text"))
            text = value if isinstance(value, str) else ""
        elif isinstance(delta, str):
            text = delta
        return Routed(chain_id, hub, request_id, delta=Delta(seq=seq, choice=choice, text=text))
    if parts[6] == "result":
        output, signature, miner = body.get("output"), body.get("signature"), body.get("miner")
        if not (isinstance(output, str) and isinstance(signature, str) and isinstance(miner, str)):
            return None
        message = ResultMessage(output_bytes=output.encode("utf-8"), signature=signature, miner=miner)
        return Routed(chain_id, hub, request_id, result=message)
    return None


class Subscriber:
    """Keeps one MQTT session subscribed to `topics`; hands every message to `on_message`."""

    def __init__(
        self,
        broker_url: str,
        topics: list[str],
        on_message: Callable[[Routed], None],
        *,
        username: str | None = None,
        password: str | None = None,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.broker = Broker.from_url(broker_url, username=username, password=password)
        self.host, self.port = self.broker.host, self.broker.port
        self.topics = topics
        self.on_message = on_message
        self.username = username
        self.password = password
        self.max_backoff_s = max_backoff_s
        self.connected = asyncio.Event()
        self.received = 0
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

    async def _run(self) -> None:
        backoff = Backoff(self.max_backoff_s)
        while True:
            try:
                async with self.broker.client(identifier=f"inferd-gateway-{secrets.token_hex(4)}") as client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self.connected.set()
                    backoff.reset()
                    log.info("mqtt_subscribed", broker=f"{self.host}:{self.port}", topics=len(self.topics))
                    async for message in client.messages:
                        self.received += 1
                        routed = parse_message(str(message.topic), bytes(message.payload or b""))  # type: ignore[arg-type]
                        if routed is not None:
                            self.on_message(routed)
            except aiomqtt.MqttError as exc:
                if self.connected.is_set():
                    log.warning("mqtt_disconnected", error=str(exc))
                self.connected.clear()
                await backoff.wait()


__all__ = ["Routed", "Subscriber", "parse_message", "request_topics"]
