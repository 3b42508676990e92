"""InferenceHub on a real anvil through `node.chain`: the happy path and the timeout path, to the wei."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address

from node.chain.errors import HubError
from node.chain.events import (
    InferenceExpired,
    InferenceFinalized,
    InferenceRequested,
    OtherHubEvent,
    ResultSubmitted,
    decode_logs,
    event_topic,
)
from node.chain.hub import HubClient, RequestStatus
from node.devnet.processes import Anvil

MIN_STAKE = 10**18
MIN_FEE = 10**16
SLASH = MIN_STAKE // 10
TIMEOUT = 10

_names = itertools.count()


@dataclass
class Net:
    owner: HubClient
    miners: list[HubClient]
    requester: HubClient
    stranger: HubClient
    model: bytes

    def client_of(self, address: str) -> HubClient:
        for m in self.miners:
            if m.sender == address:
                return m
        raise AssertionError(f"{address} is not one of the miners")


async def _balance(hub: HubClient, address: str | None) -> int:
    assert address is not None
    return int(await hub.w3.eth.get_balance(to_checksum_address(address)))


async def _deploy(anvil: Anvil, keys: list[str], miners: int, redundancy: int = 1) -> Net:
    owner = await HubClient.deploy(anvil.rpc_url, keys[0])
    w3 = owner.w3
    model, tx = await owner.register_model(f"model-{next(_names)}", MIN_STAKE, MIN_FEE, TIMEOUT, redundancy)
    assert any(isinstance(e, OtherHubEvent) and e.name == "ModelRegistered" for e in tx.events)
    clients = [HubClient(w3, owner.address, keys[1 + i]) for i in range(miners)]
    for c in clients:
        await c.register_miner(model, MIN_STAKE)
    return Net(
        owner=owner,
        miners=clients,
        requester=HubClient(w3, owner.address, keys[8]),
        stranger=HubClient(w3, owner.address, keys[9]),
        model=model,
    )


async def test_register_request_submit_finalize_withdraw(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=2)
    hub = net.requester
    info = await hub.get_model(net.model)
    assert (info.min_stake, info.min_fee, info.timeout_blocks, info.redundancy) == (
        MIN_STAKE,
        MIN_FEE,
        TIMEOUT,
        1,
    )
    assert info.active_miner_count == 2
    assert sorted(await hub.active_miners(net.model)) == sorted(m.sender for m in net.miners if m.sender)
    assert await hub.model_ids() == [net.model]

    fee = MIN_FEE + 12345
    requester_before = await _balance(hub, hub.sender)
    hub_before = await _balance(hub, hub.address)
    input_digest = bytes(range(32))
    req = await hub.request_inference(net.model, input_digest, fee)
    assert req.id == 1
    assert len(req.assignees) == 1
    assert req.deadline == req.tx.block_number + TIMEOUT
    assert await _balance(hub, hub.sender) == requester_before - fee - req.tx.fee_paid
    assert await _balance(hub, hub.address) == hub_before + fee
    (ev,) = [e for e in req.tx.events if isinstance(e, InferenceRequested)]
    assert (ev.requester, ev.model_id, ev.input_digest, ev.fee) == (hub.sender, net.model, input_digest, fee)
    assert ev.log.tx_hash == req.tx.tx_hash

    view = await hub.get_request(req.id)
    assert view.status is RequestStatus.OPEN
    assert view.assignees == req.assignees
    assert view.output_digest is None and view.submitted == (None,)

    miner = net.client_of(req.assignees[0])
    other = next(m for m in net.miners if m is not miner)
    with pytest.raises(HubError) as err:
        await other.submit_result(req.id, b"\x01" * 32)
    assert err.value.name == "NotAssignee"
    assert f"not assigned to request {req.id}" in str(err.value)

    out = "0x" + "ab" * 32
    sub = await miner.submit_result(req.id, out)
    kinds = [type(e) for e in sub.events]
    assert kinds == [ResultSubmitted, InferenceFinalized]
    assert sub.events[1].output_digest == bytes.fromhex("ab" * 32)  # type: ignore[union-attr]
    view = await hub.get_request(req.id)
    assert view.status is RequestStatus.FINALIZED
    assert view.output_digest == bytes.fromhex("ab" * 32)
    assert await hub.credits_of(str(miner.sender)) == fee
    assert (await hub.get_miner(str(miner.sender))).credits == fee

    miner_before = await _balance(hub, miner.sender)
    wd = await miner.withdraw()
    assert await _balance(hub, miner.sender) == miner_before + fee - wd.fee_paid
    assert await hub.credits_of(str(miner.sender)) == 0
    assert await _balance(hub, hub.address) == 2 * MIN_STAKE

    with pytest.raises(HubError) as err:
        await miner.withdraw()
    assert err.value.name == "NothingToWithdraw"

    # the raw receipt logs decode the same way a watcher's eth_getLogs would
    logs = await hub.w3.eth.get_logs(
        {
            "address": hub.address,
            "fromBlock": req.tx.block_number,
            "toBlock": "latest",
            "topics": [event_topic("InferenceFinalized")],
        }
    )
    (fin,) = decode_logs(logs)
    assert isinstance(fin, InferenceFinalized) and fin.id == req.id


async def test_timeout_expire_slash_reassign_then_refund(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=2)
    hub = net.requester
    fee = MIN_FEE
    requester_start = await _balance(hub, hub.sender)
    req = await hub.request_inference(net.model, b"\x11" * 32, fee)
    first = req.assignees[0]
    second = next(str(m.sender) for m in net.miners if m.sender != first)

    with pytest.raises(HubError) as err:
        await net.stranger.expire(req.id)
    assert err.value.name == "NotExpired"

    await hub.mine(TIMEOUT + 1)  # gas estimation runs at the latest block: be strictly past the deadline
    exp = await net.stranger.expire(req.id)
    slashed = [e for e in exp.events if isinstance(e, OtherHubEvent) and e.name == "Slashed"]
    assert [(e.args["miner"], e.args["amount"]) for e in slashed] == [(first, SLASH)]
    (expired,) = [e for e in exp.events if isinstance(e, InferenceExpired)]
    assert expired.reassigned and expired.assignees == (second,)
    assert expired.deadline == exp.block_number + TIMEOUT
    assert expired.input_digest == b"\x11" * 32
    assert (await hub.get_miner(first)).stake == MIN_STAKE - SLASH
    assert (await hub.get_miner(first)).active is False  # fell below minStake
    view = await hub.get_request(req.id)
    assert view.status is RequestStatus.OPEN and view.reassigned and view.assignees == (second,)

    # the old assignee is out; the new one stays silent too
    with pytest.raises(HubError) as err:
        await net.client_of(first).submit_result(req.id, b"\x02" * 32)
    assert err.value.name == "NotAssignee"
    await hub.mine(TIMEOUT + 1)
    exp2 = await net.stranger.expire(req.id)
    (expired2,) = [e for e in exp2.events if isinstance(e, InferenceExpired)]
    assert not expired2.reassigned and expired2.assignees == () and expired2.deadline == 0
    view = await hub.get_request(req.id)
    assert view.status is RequestStatus.REFUNDED
    assert (await hub.get_miner(second)).stake == MIN_STAKE - SLASH

    assert await hub.credits_of(str(hub.sender)) == fee + 2 * SLASH
    wd = await hub.withdraw()
    assert await _balance(hub, hub.sender) == requester_start - req.tx.fee_paid - wd.fee_paid + 2 * SLASH
    assert await _balance(hub, hub.address) == 2 * (MIN_STAKE - SLASH)

    with pytest.raises(HubError) as err:
        await net.stranger.expire(req.id)
    assert err.value.name == "RequestClosed"


async def test_batch_submit_exit_and_errors(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=1)
    hub = net.requester
    miner = net.miners[0]

    with pytest.raises(HubError) as err:
        await hub.request_inference(net.model, b"\x01" * 32, MIN_FEE - 1)
    assert err.value.name == "FeeTooLow"
    assert err.value.args_by_name == {"required": MIN_FEE, "provided": MIN_FEE - 1}
    assert "fee too low" in str(err.value)
    with pytest.raises(HubError) as err:
        await net.stranger.register_model("x", 1, 1, 1, 1)
    assert err.value.name == "NotOwner"
    with pytest.raises(HubError) as err:
        await hub.get_request(999)
    assert err.value.name == "UnknownRequest"

    ids = [(await hub.request_inference(net.model, bytes([i + 1]) * 32, MIN_FEE)).id for i in range(4)]
    batch = await miner.submit_results([(i, bytes([0xC0 + i]) * 32) for i in ids])
    assert [e.id for e in batch.events if isinstance(e, InferenceFinalized)] == ids
    assert await hub.credits_of(str(miner.sender)) == 4 * MIN_FEE

    # unsigned-tx building for an external sender (the miner's TxSender)
    tx = await miner.build_tx(miner.contract.functions.withdraw())
    assert tx["to"] == miner.address and int(tx["gas"]) > 21_000
    result = await miner.wait(await miner.send_raw(miner.sign(tx)))
    assert [e.name for e in result.events if isinstance(e, OtherHubEvent)] == ["Withdrawn"]

    await miner.request_exit()
    info = await hub.get_miner(str(miner.sender))
    assert not info.active and info.exit_unlock_block > 0
    with pytest.raises(HubError) as err:
        await miner.withdraw_stake()
    assert err.value.name == "CooldownActive"
    await hub.mine(2 * TIMEOUT)
    before = await _balance(hub, miner.sender)
    ws = await miner.withdraw_stake()
    assert await _balance(hub, miner.sender) == before + MIN_STAKE - ws.fee_paid
    assert (await hub.get_miner(str(miner.sender))).model_id is None


async def test_redundancy_three_quorum(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=4, redundancy=3)
    hub = net.requester
    fee = MIN_FEE + 1
    req = await hub.request_inference(net.model, b"\x07" * 32, fee)
    assert len(set(req.assignees)) == 3
    a, b, c = (net.client_of(x) for x in req.assignees)
    good, bad = b"\x0a" * 32, b"\x0b" * 32
    await a.submit_result(req.id, bad)
    await b.submit_result(req.id, good)
    done = await c.submit_result(req.id, good)
    assert any(isinstance(e, InferenceFinalized) and e.output_digest == good for e in done.events)
    assert await hub.credits_of(str(b.sender)) == fee // 2
    assert await hub.credits_of(str(c.sender)) == fee // 2 + 1
    assert (await hub.get_miner(str(a.sender))).stake == MIN_STAKE - SLASH
    assert await hub.credits_of(str(hub.sender)) == SLASH


def test_client_never_shows_its_key(anvil_keys: list[str]) -> None:
    client = HubClient.connect("http://127.0.0.1:9", "0x" + "00" * 20, anvil_keys[3])
    assert anvil_keys[3][2:] not in repr(client)
    assert client.sender == Account.from_key(anvil_keys[3]).address
