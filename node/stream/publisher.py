"""A never-blocking MQTT publisher: jobs hand it messages, a background task ships them.

Publishing must never slow down or fail a job: `publish*` only puts onto a bounded queue (dropping
the oldest deltas when full) and returns. The background task connects with aiomqtt, reconnects
with backoff when the broker goes away, and re-publishes the retained heartbeat after every
(re)connect. Deltas (QoS 0) queued while disconnected are discarded: they are only useful live;
results (QoS 1) are kept (bounded) and sent after reconnecting. A last will marks the miner offline.
Every topic carries the miner's own address (see `node.stream.topics`): on a locked-down broker the
miner logs in with that address as its username and may publish nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
from eth_utils.address import to_checksum_address

from node.log import get_logger
from node.stream.connection import Backoff, Broker
from node.stream.topics import delta_topic, miner_topic, result_topic

log = get_logger("inferd.stream")


@dataclass
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass
class PublisherStats:
    published: int = 0
    dropped: int = 0
    connects: int = 0
    connected: bool = False


class StreamPublisher:
    """Publishes deltas, results and heartbeats for one miner on one hub."""

    def __init__(
        self,
        broker_url: str,
        *,
        chain_id: int,
        hub: str,
        miner: str,
        heartbeat: Callable[[], dict[str, Any]],
        heartbeat_s: float = 10.0,
        username: str | None = None,
        password: str | None = None,
        max_queue: int = 10_000,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.broker = Broker.from_url(broker_url, username=username, password=password)
        self.host, self.port = self.broker.host, self.broker.port
        self.chain_id = chain_id
        self.hub = hub
        self.miner = to_checksum_address(miner)  # a topic level: the broker's ACL matches it exactly
        self.heartbeat = heartbeat
        self.heartbeat_s = heartbeat_s
        self.username = username
        self.password = password
        self.max_backoff_s = max_backoff_s
        self.stats = PublisherStats()
        if username is not None and username != self.miner:
            # The broker's ACL lets a login publish only under topics named after it.
            log.warning("mqtt_username_not_miner_address", username=username, miner=self.miner)
        self._results: deque[_Message] = deque(maxlen=max_queue)
        self._deltas: deque[_Message] = deque(maxlen=max_queue)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------------ producer side (never blocks)

    def _put(self, queue: deque[_Message], msg: _Message) -> None:
        if len(queue) == queue.maxlen:
            self.stats.dropped += 1
        queue.append(msg)
        self._wake.set()

    def publish_delta(self, request_id: int, seq: int, choice: int, delta: dict[str, Any]) -> None:
        """A token delta (QoS 0); dropped silently when the broker is unreachable."""
        if not self.stats.connected:
            self.stats.dropped += 1
            return
        payload = json.dumps({"seq": seq, "choice": choice, "delta": delta}, separators=(",", ":"))
        topic = delta_topic(self.chain_id, self.hub, request_id, self.miner)
        self._put(self._deltas, _Message(topic, payload.encode(), 0))

    def publish_result(self, request_id: int, output: str, signature: str) -> None:
        """The final output document (as a string) and its signature (QoS 1)."""
        payload = json.dumps({"output": output, "signature": signature, "miner": self.miner})
        topic = result_topic(self.chain_id, self.hub, request_id, self.miner)
        self._put(self._results, _Message(topic, payload.encode(), 1))

    # ------------------------------------------------------------------ background task

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mqtt-publisher")

    async def close(self) -> None:
        """Flush what can be flushed quickly, publish the offline heartbeat, disconnect."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 3.0)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task

    def _heartbeat_msg(self, online: bool = True) -> _Message:
        body = {**self.heartbeat(), "online": online} if online else {"online": False, "miner": self.miner}
        return _Message(
            miner_topic(self.chain_id, self.hub, self.miner),
            json.dumps(body, separators=(",", ":")).encode(),
            1,
            retain=True,
        )

    async def _send(self, client: aiomqtt.Client, msg: _Message) -> None:
        await client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        self.stats.published += 1

    async def _session(self) -> None:
        will = self._heartbeat_msg(online=False)
        async with self.broker.client(
            will=aiomqtt.Will(will.topic, will.payload, qos=1, retain=True), timeout=5
        ) as client:
            self.stats.connected = True
            self.stats.connects += 1
            log.info("mqtt_connected", host=self.host, port=self.port)
            await self._send(client, self._heartbeat_msg())
            loop = asyncio.get_running_loop()
            next_beat = loop.time() + self.heartbeat_s
            while True:
                while self._results:
                    await self._send(client, self._results[0])
                    self._results.popleft()
                while self._deltas and not self._results:  # a result never waits behind deltas
                    await self._send(client, self._deltas.popleft())
                if self._closing:
                    await self._send(client, self._heartbeat_msg(online=False))
                    return
                if loop.time() >= next_beat:
                    await self._send(client, self._heartbeat_msg())
                    next_beat = loop.time() + self.heartbeat_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.01, next_beat - loop.time()))
                self._wake.clear()

    async def _run(self) -> None:
        backoff = Backoff(self.max_backoff_s)
        while not self._closing:
            try:
                await self._session()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                was = self.stats.connected
                self.stats.connected = False
                self._deltas.clear()
                if was:
                    backoff.reset()
                    log.warning("mqtt_disconnected", error=f"{type(exc).__name__}: {exc}")
                else:
                    log.debug(
                        "mqtt_connect_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=backoff.delay
                    )
                if self._closing:
                    return
                await backoff.wait()
                continue
            finally:
                self.stats.connected = False


__all__ = ["PublisherStats", "StreamPublisher"]
