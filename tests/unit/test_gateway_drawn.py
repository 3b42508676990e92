"""The gateway's drawn seats (`PendingRegistry.on_drawn`, from `node.chain.draw` at the request's
block): the drawn seat's deltas and signed result are accepted and answered before
`InferenceAssigned`; anyone else's are not; the chain's assignment replaces the drawn seats, and the
verification state stays `pending` until the chain names them.

On a real anvil, a private input is sealed to its drawn seat only once the request's block has the
gateway's `chain.confirmations` (as final as the `InferenceAssigned` the gateway would trust), and
never when that block was reorged away. The gateway's `assign` is held back there, so the drawn
seat is the only one it knows; "not sealed yet" is checked after every sealing already handed out
has ended, so a gateway that sealed at once fails it whatever the timing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from node.chain.draw import seats_for
from node.chain.events import InferenceAssigned, InferenceRequested, decode_logs
from node.chain.hub import Phase, VerificationState
from node.config import load_settings
from node.devnet.processes import Anvil
from node.gateway.app import create_app
from node.gateway.envelopes import EnvelopeBook
from node.gateway.pending import ResultMessage
from node.gateway.records import Delta
from node.gateway.requesting import Requester
from node.gateway.server import GatewayServer
from node.miner.testing import deploy_dev_hub
from tests.gateway_on_anvil import hold_assign
from tests.unit.test_gateway_http import CHAT, MODEL
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


# ------------------------------------------------------------------ private inputs on a real chain


@contextlib.asynccontextmanager
async def _private_gateway(
    anvil: Anvil,
    anvil_keys: list[str],
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    confirmations: int = 2,
) -> AsyncIterator[tuple[Any, Any, asyncio.Event]]:
    """A chain gateway taking `confirmations` whose `assign` waits for the returned event (so the
    only seats it knows are the drawn ones), on a hub with one miner."""
    release = hold_assign(monkeypatch)
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], [anvil_keys[5]], model_name=MODEL, timeout_blocks=200
    )
    settings = load_settings(
        data_dir=data_dir,
        chain={"rpc_url": anvil.rpc_url, "hub_address": hub.owner.address, "private_key": anvil_keys[9],
               "poll_interval_s": 0.05, "confirmations": confirmations},
        stream={"enabled": False},
        gateway={"request_timeout_s": 0.3, "require_auth": False},
    )  # fmt: skip
    server = GatewayServer(create_app(settings))
    await server.start()
    try:
        yield server, hub, release
    finally:
        release.set()
        await server.stop()
        await hub.owner.w3.provider.disconnect()


CONFIRMATIONS = 2


async def _sealing_done(backend: Any) -> None:
    """Until no sealing (to any seat) and no wait for a drawn seat's confirmations is in flight."""
    async with asyncio.timeout(30):
        while backend.sealer.tasks or backend.requester._confirming:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def _sealing_done_unless_waiting(backend: Any) -> None:
    """Until every sealing already handed to the sealer ended (a wait for confirmations may go on)."""
    async with asyncio.timeout(30):
        while backend.sealer.tasks:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def _private_request(server: Any, hub: Any) -> tuple[int, int]:
    """(request id, its block) of a private call, answered 504: no miner runs."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        reply = await http.post("/v1/chat/completions", json={**CHAT, "private": True})
    assert reply.status_code == 504, reply.text
    rid = int(reply.headers["X-Inferd-Request-Id"])
    block = next(
        e.log.block_number
        for e in decode_logs(await hub.owner.w3.eth.get_logs({"address": hub.owner.address, "fromBlock": 0}))
        if isinstance(e, InferenceRequested) and e.id == rid
    )
    return rid, block


async def test_a_private_input_reaches_the_drawn_seat_only_with_its_confirmations(
    own_anvil: Anvil, anvil_keys: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _private_gateway(own_anvil, anvil_keys, tmp_path, monkeypatch) as (server, hub, _):
        backend = server.app.state.gateway.backend
        w3 = hub.owner.w3
        rid, block = await _private_request(server, hub)
        link = backend.links[await w3.eth.chain_id]
        entry = link.private.get((link.chain_id, rid))
        (seat,) = await seats_for(hub.owner, hub.model, 1, rid, block)
        for _ in range(CONFIRMATIONS):
            assert int(await w3.eth.block_number) < block + CONFIRMATIONS
            await _sealing_done_unless_waiting(backend)
            assert not entry.sealed_to and link.private.book.get(entry.input_cid) is None, "sealed too early"
            await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        await _sealing_done(backend)  # the drawn seat's block has its confirmations now
        assert entry.sealed_to == {seat.lower()} and link.private.book.get(entry.input_cid) is not None
        assert (await hub.owner.get_request(rid)).phase == Phase.PENDING  # before the chain named it


async def test_without_a_draw_the_assign_receipts_seat_waits_for_its_confirmations_too(
    own_anvil: Anvil, anvil_keys: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No drawn seat (the draw is off): the seat comes from the gateway's own `assign` receipt, and
    a private input is sealed to it only once the assign's block has the gateway's confirmations
    (the follower's `InferenceAssigned`), not at once from a receipt a reorg could still undo."""

    async def no_draw(*_: Any) -> bool:
        return False

    monkeypatch.setattr(Requester, "_draw", no_draw)
    async with _private_gateway(own_anvil, anvil_keys, tmp_path, monkeypatch) as (server, hub, release):
        release.set()
        backend = server.app.state.gateway.backend
        w3 = hub.owner.w3
        rid, _ = await _private_request(server, hub)
        link = backend.links[await w3.eth.chain_id]
        entry = link.private.get((link.chain_id, rid))
        assigned = [
            e
            for e in decode_logs(await w3.eth.get_logs({"address": hub.owner.address, "fromBlock": 0}))
            if isinstance(e, InferenceAssigned) and e.id == rid
        ]
        assert len(assigned) == 1 and (await hub.owner.get_request(rid)).phase == Phase.ASSIGNED
        at = assigned[0].log.block_number
        while int(await w3.eth.block_number) < at + CONFIRMATIONS:
            await _sealing_done(backend)
            assert not entry.sealed_to and link.private.book.get(entry.input_cid) is None, "sealed too early"
            await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        async with asyncio.timeout(30):
            while not entry.sealed_to:  # noqa: ASYNC110 (the follower delivers it with its confirmations)
                await asyncio.sleep(0.02)
        await _sealing_done(backend)
        assert entry.sealed_to == {assigned[0].assignees[0].lower()}
        assert link.private.book.get(entry.input_cid) is not None


async def test_a_reorged_request_block_never_seals_to_its_drawn_seat(
    own_anvil: Anvil, anvil_keys: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _private_gateway(own_anvil, anvil_keys, tmp_path, monkeypatch) as (server, hub, _):
        backend = server.app.state.gateway.backend
        w3 = hub.owner.w3
        snapshot = (await w3.provider.make_request("evm_snapshot", []))["result"]  # type: ignore[arg-type]
        rid, block = await _private_request(server, hub)
        link = backend.links[await w3.eth.chain_id]
        entry = link.private.get((link.chain_id, rid))
        await w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
        await w3.provider.make_request("anvil_mine", [hex(CONFIRMATIONS + 2)])  # type: ignore[arg-type]
        assert int(await w3.eth.block_number) >= block + CONFIRMATIONS  # another block `block`
        await _sealing_done(backend)
        assert not entry.sealed_to and link.private.book.get(entry.input_cid) is None


async def test_a_seat_asking_for_the_envelope_before_the_request_is_mined_waits_for_it(
    own_anvil: Anvil, anvil_keys: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drawn seat acts on the request's block and may ask for its envelope before the gateway
    has read its own receipt: the gateway expects the input from before it sends the request, so
    the seat's GET waits for the sealing instead of a 404 that costs it a retry with backoff."""
    monkeypatch.setattr("node.gateway.envelopes.ENVELOPE_WAIT_S", 60.0)  # the GET's wait is not tested
    sending, send = asyncio.Event(), asyncio.Event()
    send_request = Requester._send_request

    async def held(self: Requester, *args: Any) -> Any:
        sending.set()
        await send.wait()
        return await send_request(self, *args)

    monkeypatch.setattr(Requester, "_send_request", held)
    asked = asyncio.Event()
    book_wait = EnvelopeBook.wait

    async def wait(self: EnvelopeBook, input_cid: str, timeout_s: float) -> bytes | None:
        asked.set()
        return await book_wait(self, input_cid, timeout_s)

    monkeypatch.setattr(EnvelopeBook, "wait", wait)
    async with _private_gateway(own_anvil, anvil_keys, tmp_path, monkeypatch, confirmations=0) as (
        server,
        hub,
        _,
    ):
        backend = server.app.state.gateway.backend
        call = asyncio.create_task(_private_request(server, hub))
        try:
            async with asyncio.timeout(30):
                await sending.wait()
            (link,) = backend.links.values()
            (input_cid,) = link.private.book._expected  # the call's input, expected before it is sent
            async with httpx.AsyncClient(base_url=server.url, timeout=90) as http:
                early = asyncio.create_task(http.get(f"/envelope/{input_cid}"))
                async with asyncio.timeout(30):
                    await asked.wait()  # the seat's GET is at the gateway before the request is sent
                send.set()
                rid, _ = await call
                reply = await early
        finally:
            send.set()  # a failed step must not leave the call (and the server's shutdown) waiting
        assert reply.status_code == 200, reply.text
        entry = link.private.get((link.chain_id, rid))
        assert entry is not None and entry.input_cid == input_cid and entry.sealed_to
