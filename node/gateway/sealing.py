"""Private requests on the chain backend's event and MQTT paths: seal the input to each seat the
chain names, open the seats' sealed answers and deltas.

`node.gateway.private` holds the desk itself (the plaintext held per request; seats' keys are
`node.gateway.seat_keys`, the served envelopes `node.gateway.envelopes`); this module decides
*when* it acts, from chain events (`InferenceAssigned`, `AuditOpened`, `CommitteeOpened`,
`EscalationOpened`'s voters; forgotten on `InferenceFinalized`/`InferenceRefunded`) and MQTT
messages, across every `ChainLink` the backend holds. Sealing runs as background tasks under the
backend's supervisor (`private-seal`), so a seat whose key cannot be found is logged, not fatal.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from node.chain.events import (
    AuditOpened,
    CommitteeOpened,
    EscalationOpened,
    HubEvent,
    InferenceAssigned,
    InferenceFinalized,
    InferenceRefunded,
)
from node.content.envelope import MAX_RECIPIENTS
from node.content.errors import ContentError
from node.gateway.link import ChainLink
from node.gateway.mqtt import Routed, delta_of
from node.miner.private import open_delta
from node.supervise import Supervisor


class Sealer:
    """Private-input sealing and private-answer opening over the backend's links (shared dict)."""

    def __init__(self, links: dict[int, ChainLink], loops: Supervisor) -> None:
        self.links = links
        self.loops = loops
        self.tasks: set[asyncio.Task[None]] = set()
        """Sealing in flight."""

    def on_event(self, chain_id: int, ev: HubEvent) -> None:
        """Seal a private input to seats the chain just named; forget it once the request ended."""
        link = self.links.get(chain_id)
        desk = link.private if link is not None else None
        if desk is None or desk.get((chain_id, getattr(ev, "id", -1))) is None:
            return
        assert link is not None
        if isinstance(ev, InferenceAssigned):
            self.seal(link, ev.id, ev.assignees)
        elif isinstance(ev, AuditOpened):
            self.seal(link, ev.id, (ev.auditor,))
        elif isinstance(ev, CommitteeOpened):
            self.seal(link, ev.id, ev.members)
        elif isinstance(ev, EscalationOpened):  # every other active miner of the model may vote
            task = asyncio.get_running_loop().create_task(
                self._guarded(self._seal_voters(link, ev.id), ev.id)
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(ev, InferenceFinalized | InferenceRefunded):
            desk.forget((chain_id, ev.id))

    def seal(self, link: ChainLink, request_id: int, seats: tuple[str, ...]) -> None:
        """Seal the request's input again to every seat so far plus `seats` (in the background)."""
        assert link.private is not None
        coro = link.private.add_seats((link.chain_id, request_id), seats, link.hub)
        task = asyncio.get_running_loop().create_task(self._guarded(coro, request_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _seal_voters(self, link: ChainLink, request_id: int) -> None:
        assert link.private is not None
        info = await link.hub.get_request(request_id)
        voters = tuple((await link.hub.active_miners(info.model_id))[: MAX_RECIPIENTS - len(info.seats) - 1])
        await link.private.add_seats((link.chain_id, request_id), voters, link.hub)

    async def _guarded(self, coro: Any, request_id: int) -> None:
        with self.loops.guard("private-seal", request_id=request_id):
            await coro

    def open(self, msg: Routed) -> Routed | None:
        """A private request's MQTT result or delta, opened (None: not ours to open, dropped)."""
        link = self.links.get(msg.chain_id)
        desk = link.private if link is not None else None
        if desk is None:
            return msg
        key = (msg.chain_id, msg.request_id)
        entry = desk.get(key)
        if entry is None and not desk.ended(key):
            return msg  # not a private request of ours
        if msg.result is not None:  # after the end too: a result that lost the race to the chain
            plain = desk.open_output(msg.result.output_bytes)
            return None if plain is None else replace(msg, result=replace(msg.result, output_bytes=plain))
        if entry is None:
            return None  # a delta after the end: nobody streams it any more
        if msg.delta is not None and msg.delta.sealed is not None:
            d = msg.delta
            try:
                body = open_delta(entry.delta_key, msg.request_id, d.miner or "", d.seq, {"sealed": d.sealed})
                return replace(msg, delta=delta_of(d.seq, d.choice, d.miner or "", body))
            except (ContentError, ValueError):
                return None
        return None  # a plaintext delta for a private request: not from an honest seat

    def accept_output(self, envelope: bytes) -> bool:
        """`POST /envelope/output`: a seat's sealed answer to one of our private requests."""
        return any(
            link.private is not None and link.private.accept_output(envelope) for link in self.links.values()
        )


__all__ = ["Sealer"]
