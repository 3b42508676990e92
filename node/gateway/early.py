"""What MQTT peers can make the gateway hold, and the bounded buffer for events that arrive before
their request is registered.

Events may arrive before the gateway has registered their request (a fast miner can finalize in the
block after the request, and publish its deltas and result even sooner). Those are kept here,
keyed by (chain id, request id), and handed to `PendingRegistry.register` to replay. MQTT is open to
every miner on the network, so its messages are charged in bytes (`ITEM_OVERHEAD` on top of each
message's text, so a flood of empty deltas costs too) against `BufferLimits`, and the oldest request
ids are evicted first; what does not fit is dropped and counted in the registry's `drops`. The
chain's events are kept apart (`EarlyEvents`): they come from one trusted watcher, and evicting MQTT
noise must never lose a finalization.

This lives apart from `node.gateway.pending` because it is its own concern (bounded memory against
untrusted peers) with its own invariants (`bytes` is the sum of what every `EarlyStream` holds).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from node.gateway.errors import GatewayError
from node.gateway.records import Delta

Key = tuple[int, int]
"""(chain id, request id)."""
ITEM_OVERHEAD = 64
"""Bytes charged per buffered message on top of its text, so a flood of empty deltas costs too."""


@dataclass(frozen=True)
class BufferLimits:
    """Byte bounds on what MQTT peers can make the gateway hold."""

    per_request_bytes: int = 8 << 20
    """Deltas not yet streamed plus result candidates, for one request (registered or not)."""
    total_bytes: int = 256 << 20
    """Everything buffered for registered requests, together."""
    early_total_bytes: int = 64 << 20
    """Everything buffered for request ids not registered (yet): the oldest are evicted first."""
    max_early_requests: int = 4096


@dataclass(frozen=True)
class ResultMessage:
    """A miner's MQTT result: the output document's bytes, its signature, and who published it."""

    output_bytes: bytes
    signature: str
    miner: str


def delta_cost(delta: Delta) -> int:
    """Bytes a buffered delta is charged."""
    return ITEM_OVERHEAD + delta.nbytes


def result_cost(message: ResultMessage) -> int:
    """Bytes a buffered result candidate is charged."""
    return ITEM_OVERHEAD + len(message.output_bytes) + len(message.signature)


def message_cost(message: Delta | ResultMessage) -> int:
    """Bytes a buffered delta or result is charged."""
    return delta_cost(message) if isinstance(message, Delta) else result_cost(message)


@dataclass
class EarlyStream:
    """MQTT messages for a request id nobody has registered yet (senders checked on `register`)."""

    deltas: list[Delta] = field(default_factory=list)
    results: list[ResultMessage] = field(default_factory=list)
    bytes: int = 0


@dataclass
class EarlyEvents:
    """Chain events for a request id nobody has registered yet (kept apart from MQTT's, which any
    peer can flood: evicting those must never lose a finalization)."""

    submitted: list[tuple[str, str, bytes]] = field(default_factory=list)
    commits: list[tuple[str, str]] = field(default_factory=list)
    finalized: tuple[bytes, str | None] | None = None
    failure: GatewayError | None = None
    assigned: list[tuple[str, ...]] = field(default_factory=list)
    committed: bool = False
    audited: bool = False
    disputed: bool = False


class EarlyBuffer:
    """Events for request ids not registered yet: chain events (bounded in count) and MQTT messages
    (bounded in count and bytes, oldest evicted first); drops are counted in the shared `drops`."""

    def __init__(self, limits: BufferLimits, drops: Counter[str]) -> None:
        self.limits = limits
        self.drops = drops
        self.events: OrderedDict[Key, EarlyEvents] = OrderedDict()
        self.streams: OrderedDict[Key, EarlyStream] = OrderedDict()
        self.bytes = 0
        """Bytes held in `streams`, together."""

    def events_for(self, key: Key) -> EarlyEvents:
        """The chain events kept for `key` (created, evicting the oldest id when over the count)."""
        early = self.events.get(key)
        if early is None:
            early = self.events[key] = EarlyEvents()
            while len(self.events) > self.limits.max_early_requests:
                self.events.popitem(last=False)
        return early

    def buffer(self, key: Key, cost: int) -> EarlyStream | None:
        """The early MQTT buffer of `key` with `cost` bytes charged to it, or None (dropped, counted)."""
        limits = self.limits
        early = self.streams.get(key)
        if early is None:
            early = self.streams[key] = EarlyStream()
        self.streams.move_to_end(key)
        if early.bytes + cost > min(limits.per_request_bytes, limits.early_total_bytes):
            self.drops["per_request_bytes"] += 1
            return None
        while len(self.streams) > limits.max_early_requests:
            self._evict_oldest()
        while self.bytes + cost > limits.early_total_bytes and next(iter(self.streams)) != key:
            self._evict_oldest()
        if self.bytes + cost > limits.early_total_bytes:
            self.drops["early_total_bytes"] += 1
            return None
        early.bytes += cost
        self.bytes += cost
        return early

    def pop_stream(self, key: Key) -> EarlyStream | None:
        """Take the MQTT messages kept for `key` (their bytes leave the early bound)."""
        stream = self.streams.pop(key, None)
        if stream is not None:
            self.bytes -= stream.bytes
        return stream

    def pop_events(self, key: Key) -> EarlyEvents | None:
        """Take the chain events kept for `key`."""
        return self.events.pop(key, None)

    def _evict_oldest(self) -> None:
        _, old = self.streams.popitem(last=False)
        self.bytes -= old.bytes
        self.drops["early_evicted"] += len(old.deltas) + len(old.results)


__all__ = [
    "ITEM_OVERHEAD",
    "BufferLimits",
    "EarlyBuffer",
    "EarlyEvents",
    "EarlyStream",
    "Key",
    "ResultMessage",
    "delta_cost",
    "message_cost",
    "result_cost",
]
