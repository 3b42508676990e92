"""The gateway's drawn seats (`PendingRegistry.on_drawn`, from `node.chain.draw` at the request's
block): the drawn seat's deltas and signed result are accepted and answered before
`InferenceAssigned`; anyone else's are not; the chain's assignment replaces the drawn seats, and the
verification state stays `pending` until the chain names them."""

from __future__ import annotations

from dataclasses import replace

from eth_account import Account

from node.chain.hub import VerificationState
from node.gateway.pending import ResultMessage
from node.gateway.records import Delta
from tests.unit.test_gateway_parts import MINER, output, registry, sign, submission


async def test_the_drawn_seat_is_answered_before_the_assignment() -> None:
    reg, _ = registry()
    sub = replace(submission(), assignees=())
    pending = reg.register(sub)
    pending.accept_signed()
    stranger = Account.create()
    reg.on_delta(31337, 7, Delta(seq=0, choice=0, text="held", miner=MINER.address))
    reg.on_drawn(31337, 7, (MINER.address,))
    assert pending.drawn and pending.assigned and not pending.chain_assigned
    assert pending.verification == VerificationState.PENDING  # the chain has not named it yet
    assert pending.deltas.get_nowait().text == "held"  # held messages are checked on the draw
    reg.on_delta(31337, 7, Delta(seq=1, choice=0, text="evil", miner=stranger.address))
    assert pending.deltas.empty() and reg.drops["not_assignee"] == 1
    data = output(sub)
    forged = ResultMessage(data, sign(sub, data, key=stranger.key), stranger.address)
    reg.on_result_message(31337, 7, forged)
    assert not pending.done()  # a signature by someone the draw did not seat is never answered
    reg.on_result_message(31337, 7, ResultMessage(data, sign(sub, data), MINER.address))
    result = await pending.wait(1)
    assert result.output_bytes == data
    reg.on_assigned(31337, 7, (MINER.address,))
    assert pending.chain_assigned and pending.submission.assignees == (MINER.address,)


async def test_the_chains_assignment_replaces_the_drawn_seats() -> None:
    reg, _ = registry()
    pending = reg.register(replace(submission(), assignees=()))
    other = Account.create()
    reg.on_drawn(31337, 7, (other.address,))
    reg.on_assigned(31337, 7, (MINER.address,))
    assert pending.submission.assignees == (MINER.address,) and not pending.drawn
    reg.on_drawn(31337, 7, (other.address,))  # too late: the chain has spoken
    assert pending.submission.assignees == (MINER.address,)
    assert not pending.is_assignee(other.address)
    reg.on_assigned(31337, 7, (other.address,))  # a reassignment adds its seats
    assert pending.is_assignee(other.address) and pending.is_assignee(MINER.address)
