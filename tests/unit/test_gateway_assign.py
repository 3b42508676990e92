"""The gateway's background `assign` after a drawn seat (`Requester._ensure_assigned`), without a
chain: what it knows from receipts decides whether it pays for an `assign` and whether it reads the
request view.

* The request transaction already on its way materialises the first due requests (`AUTO_ASSIGN`):
  when its receipt names this request, no `assign` is sent at all.
* An `assign` that materialised fewer requests than its count left nothing due at its block, this
  request included: one `assign`, no request view read (the follower brings the seats).
* An `assign` whose count went to requests before this one is sent again: the request is never
  left `Pending` for want of a chain read.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from node.chain.events import InferenceAssigned, LogRef
from node.gateway import requesting
from node.gateway.requesting import Requester
from tests.unit.test_gateway_parts import MINER, registry, submission

REF = LogRef(3, "0x03", "0xaa", 0, "0x5FbDB2315678afecb367f032d93F642f64180aa3")


def assigned(rid: int) -> InferenceAssigned:
    return InferenceAssigned(rid, b"\x01" * 32, b"\x02" * 32, 99, (MINER.address,), REF)


def receipt(tx: int, *events: InferenceAssigned) -> dict[str, Any]:
    return {"transactionHash": tx.to_bytes(32, "big"), "logs": list(events), "gasUsed": 0}


class Chain:
    """A link whose `assign`s return the receipts queued in `assigns` (counted) and whose request
    view may not be read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *assigns: tuple[dict[str, Any], int]) -> None:
        self.assigns = list(assigns)
        self.sent = 0
        monkeypatch.setattr(requesting, "receipt_events", lambda r: list(r["logs"]))  # events already

        async def get_request(rid: int) -> Any:
            raise AssertionError(f"request {rid} was read from the chain")

        settings = SimpleNamespace(poll_interval_s=0.05, confirmations=0)
        self.link: Any = SimpleNamespace(
            chain_id=31337, settings=settings, assigner=None, hub=SimpleNamespace(get_request=get_request)
        )

    async def send_assign(self, link: Any, count: int = 4) -> tuple[dict[str, Any], int]:
        self.sent += 1
        return self.assigns.pop(0)


def requester(chain: Chain) -> tuple[Requester, Any]:
    reg, _ = registry()

    def on_event(chain_id: int, ev: Any) -> None:
        if isinstance(ev, InferenceAssigned):
            req.on_materialised(chain_id, ev.id)
            reg.on_assigned(chain_id, ev.id, ev.assignees)

    req = Requester(
        None,  # type: ignore[arg-type]
        reg,
        on_event=on_event,
        private_event=lambda *_: None,
        seal=lambda *_: None,
        remember=lambda *_: None,
    )
    req._send_assign = chain.send_assign  # type: ignore[method-assign]
    return req, reg


async def test_the_next_request_transaction_materialises_it(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain(monkeypatch)
    req, reg = requester(chain)
    pending = reg.register(replace(submission(), assignees=()))
    reg.on_drawn(31337, 7, (MINER.address,))
    later: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(req._ensure_assigned(chain.link, pending, later=later))
    await asyncio.sleep(0)
    later.set_result(receipt(1, assigned(6), assigned(7)))  # requestInference's AUTO_ASSIGN
    await task
    assert chain.sent == 0 and pending.chain_assigned


async def test_an_assign_with_count_to_spare_left_nothing_due(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain(monkeypatch, (receipt(2), 4))  # someone else's transaction had materialised it
    req, reg = requester(chain)
    pending = reg.register(replace(submission(), assignees=()))
    reg.on_drawn(31337, 7, (MINER.address,))
    await req._ensure_assigned(chain.link, pending)
    assert chain.sent == 1 and pending.drawn  # the follower will bring its InferenceAssigned


async def test_an_assign_spent_on_earlier_requests_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    earlier = receipt(3, *(assigned(i) for i in range(1, 5)))
    chain = Chain(monkeypatch, (earlier, 4), (receipt(4, assigned(5), assigned(6), assigned(7)), 4))
    req, reg = requester(chain)
    pending = reg.register(replace(submission(), assignees=()))
    reg.on_drawn(31337, 7, (MINER.address,))
    await req._ensure_assigned(chain.link, pending)
    assert chain.sent == 2 and pending.chain_assigned
