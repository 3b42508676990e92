"""InferenceHub (protocol v2) on a real anvil through `node.chain`: every path a miner or requester
takes, with the money checked to the wei.

- r = 1: exact price, assignment in a later block, commit then reveal (a later block), final, paid,
  withdrawn; the verification state at each step;
- an audit drawn (auditBps 10000): openAudit, the auditor commits, both reveal, final and audited;
  a disagreement goes to a committee of three, whose majority wins provisionally, the escalation
  window passes and `timeout` finalizes it, the losing assignee slashed its minStake;
- r = 3: all commit, reveal opens, a 2-of-3 majority resolves provisionally (the dissenter may
  escalate), `timeout` after the window finalizes, the minority is slashed;
- UNAVAILABLE: earns the base fee, the rest goes back to the requester;
- equivocation: a miner's real EIP-712 signature (node.chain.signing, domain version 2) over a digest
  it did not commit slashes it, the prover gets the bounty;
- a silent assignee: `timeout` slashes it and reassigns (InferenceAssigned again); the new seat
  finishes the request.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address

from node.chain.errors import HubError
from node.chain.events import (
    AuditOpened,
    Burned,
    CommitteeOpened,
    Credited,
    CreditReason,
    EquivocationProven,
    InferenceAssigned,
    InferenceFinalized,
    InferenceRequested,
    InferenceResolved,
    ModelRegistered,
    ResultCommitted,
    ResultRevealed,
    RevealOpened,
    Slashed,
    SlashReason,
    Withdrawn,
    decode_logs,
    event_topic,
)
from node.chain.hub import (
    UNAVAILABLE,
    HubClient,
    Phase,
    RequestFlag,
    VerificationState,
    commitment,
)
from node.chain.signing import sign_result
from node.devnet.processes import Anvil

EC = b"\x5e" * 32  # the model's engine class
MIN_STAKE = 10**18
BASE_FEE = 10**13
PER_TOKEN = 10**8
SLASH = MIN_STAKE // 10
TIMEOUT = 10
GOOD, BAD = b"\x0a" * 32, b"\x0b" * 32

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

    async def request(self, digest: bytes = b"\x11" * 32, max_tokens: int = 100) -> int:
        """Pay for a request and materialise its seats in the next block (as the gateway does)."""
        req = await self.requester.request_inference(self.model, digest, max_tokens)
        assigned = await self.stranger.assign(4)
        assert any(isinstance(e, InferenceAssigned) and e.id == req.id for e in assigned.events)
        return req.id


async def _balance(hub: HubClient, address: str | None) -> int:
    assert address is not None
    return int(await hub.w3.eth.get_balance(to_checksum_address(address)))


async def _deploy(anvil: Anvil, keys: list[str], miners: int, redundancy: int = 1, audit_bps: int = 1) -> Net:
    owner = await HubClient.deploy(anvil.rpc_url, keys[0])
    w3 = owner.w3
    model, tx = await owner.register_model(
        f"model-{next(_names)}", EC, MIN_STAKE, BASE_FEE, PER_TOKEN, TIMEOUT, redundancy, audit_bps
    )
    (reg,) = tx.of(ModelRegistered)
    assert (reg.engine_class, reg.audit_bps, reg.redundancy) == (EC, audit_bps, redundancy)
    clients = [HubClient(w3, owner.address, keys[1 + i]) for i in range(miners)]
    for c in clients:
        await c.register_miner(model, EC, MIN_STAKE)
    await owner.mine(1)  # miners are eligible for requests from the next block on
    return Net(
        owner=owner,
        miners=clients,
        requester=HubClient(w3, owner.address, keys[8]),
        stranger=HubClient(w3, owner.address, keys[9]),
        model=model,
    )


async def test_r1_commit_reveal_final_paid(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=1)
    hub = net.requester
    info = await hub.get_model(net.model)
    assert (info.engine_class, info.min_stake, info.base_fee, info.per_token_fee) == (
        EC,
        MIN_STAKE,
        BASE_FEE,
        PER_TOKEN,
    )
    assert (info.timeout_blocks, info.redundancy, info.audit_bps, info.active_miner_count) == (
        TIMEOUT,
        1,
        1,
        1,
    )
    fee = BASE_FEE + PER_TOKEN * 100
    assert await hub.price(net.model, 100) == fee == info.price(100)

    with pytest.raises(HubError) as err:
        await hub.request_inference(net.model, b"\x01" * 32, 100, fee=fee - 1)
    assert err.value.name == "WrongFee" and err.value.args_by_name == {"required": fee, "provided": fee - 1}
    with pytest.raises(HubError) as err:
        await net.stranger.register_model("x", EC, 1, 1, 1, 1, 1, 1)
    assert err.value.name == "NotOwner"
    with pytest.raises(HubError) as err:
        await net.stranger.register_miner(net.model, b"\x01" * 32, MIN_STAKE)
    assert err.value.name == "EngineClassMismatch" and "0x" + EC.hex() in str(err.value)

    before = await _balance(hub, hub.sender)
    req = await hub.request_inference(net.model, b"\x22" * 32, 100)
    assert (req.fee, req.max_tokens) == (fee, 100)
    (ev,) = req.tx.of(InferenceRequested)
    assert (ev.requester, ev.model_id, ev.input_digest, ev.fee, ev.max_tokens) == (
        hub.sender,
        net.model,
        b"\x22" * 32,
        fee,
        100,
    )
    assert await _balance(hub, hub.sender) == before - fee - req.tx.fee_paid
    view = await hub.get_request(req.id)
    assert (
        view.phase == Phase.PENDING
        and view.seats == ()
        and view.verification_state is VerificationState.PENDING
    )

    assigned = await net.stranger.assign(4)
    (a,) = assigned.of(InferenceAssigned)
    miner = net.miners[0]
    assert a.id == req.id and a.assignees == (miner.sender,) and a.deadline == assigned.block_number + TIMEOUT
    view = await hub.get_request(req.id)
    assert view.phase == Phase.ASSIGNED and view.assignees == (miner.sender,) and view.mark == a.deadline
    assert view.verification_state is VerificationState.ASSIGNED

    c = await miner.commit(req.id, GOOD)
    (rc,) = c.of(ResultCommitted)
    assert rc.commitment == commitment(GOOD, str(miner.sender), req.id) == miner.commitment_for(req.id, GOOD)
    view = await hub.get_request(req.id)
    assert (
        view.phase == Phase.REVEAL and view.mark == c.block_number and view.has_committed(str(miner.sender))
    )
    assert view.verification_state is VerificationState.SUBMITTED
    if await miner.audit_drawn(req.id):  # 1 in 10 000: with one miner nobody can audit, go on unaudited
        await miner.open_audit(req.id)
    with pytest.raises(HubError) as err:
        await miner.reveal(req.id, BAD)
    assert err.value.name == "CommitmentMismatch"
    r = await miner.reveal(req.id, GOOD)
    assert [type(e) for e in r.events][:2] == [ResultRevealed, InferenceFinalized]
    view = await hub.get_request(req.id)
    assert view.phase == Phase.FINAL and view.output_digest == GOOD
    assert view.verification_state is VerificationState.FINAL and view.has_revealed(str(miner.sender))
    audit_part = fee * 1 // 10_000
    assert await hub.credits_of(str(miner.sender)) == fee - audit_part
    assert (await hub.get_model(net.model)).audit_pool == audit_part
    (credit,) = r.of(Credited)
    assert (credit.account, credit.reason, credit.amount) == (
        miner.sender,
        CreditReason.FEE,
        fee - audit_part,
    )

    wd = await miner.withdraw()
    assert wd.of(Withdrawn)[0].amount == fee - audit_part
    with pytest.raises(HubError) as err:
        await miner.withdraw()
    assert err.value.name == "NothingToWithdraw"
    logs = await hub.w3.eth.get_logs(
        {
            "address": hub.address,
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [event_topic("InferenceFinalized")],
        }
    )
    (fin,) = decode_logs(logs)
    assert isinstance(fin, InferenceFinalized) and fin.id == req.id and fin.output_digest == GOOD


async def test_batch_requests_commit_many_reveal_many(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=1)
    miner = net.miners[0]
    reqs = await net.requester.request_inferences(
        net.model, [(bytes([i + 1]) * 32, 10 + i) for i in range(4)]
    )
    assert [r.max_tokens for r in reqs] == [10, 11, 12, 13]
    ids = [r.id for r in reqs]
    await net.stranger.assign(8)
    c = await miner.commit_many([(i, GOOD) for i in ids])
    assert sorted(e.id for e in c.of(ResultCommitted)) == ids
    for i in ids:
        if await miner.audit_drawn(i):
            await miner.open_audit(i)
    r = await miner.reveal_many([(i, GOOD) for i in ids])
    assert sorted(e.id for e in r.of(InferenceFinalized)) == ids


async def test_audit_drawn_agreement_then_dispute_to_committee(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=5, audit_bps=10_000)
    hub = net.requester
    # Agreement: the auditor re-executes and agrees.
    rid = await net.request(b"\x31" * 32)
    assignee = net.client_of((await hub.get_request(rid)).seats[0])
    await assignee.commit(rid, GOOD)
    assert await assignee.audit_drawn(rid)
    with pytest.raises(HubError) as err:
        await assignee.reveal(rid, GOOD)
    assert err.value.name == "AuditDrawn"
    opened = await assignee.open_audit(rid)
    (ao,) = opened.of(AuditOpened)
    assert ao.auditor != assignee.sender and ao.input_digest == b"\x31" * 32
    view = await hub.get_request(rid)
    assert view.phase == Phase.AUDIT and view.auditor == ao.auditor
    assert view.verification_state is VerificationState.AUDIT_PENDING
    auditor = net.client_of(ao.auditor)
    ac = await auditor.commit(rid, GOOD)
    assert ac.of(RevealOpened)[0].id == rid
    await assignee.reveal(rid, GOOD)
    done = await auditor.reveal(rid, GOOD)
    assert done.of(InferenceFinalized)[0].output_digest == GOOD
    view = await hub.get_request(rid)
    assert view.phase == Phase.FINAL and RequestFlag.AUDITED in view.flags
    assert view.verification_state is VerificationState.AUDITED

    # Dispute: the assignee lies, the auditor does not; a committee of three decides.
    rid = await net.request(b"\x32" * 32)
    assignee = net.client_of((await hub.get_request(rid)).seats[0])
    await assignee.commit(rid, BAD)
    auditor = net.client_of((await assignee.open_audit(rid)).of(AuditOpened)[0].auditor)
    await auditor.commit(rid, GOOD)
    await assignee.reveal(rid, BAD)
    opened_c = await auditor.reveal(rid, GOOD)
    (co,) = opened_c.of(CommitteeOpened)
    assert len(co.members) == 3 and not {assignee.sender, auditor.sender} & set(co.members)
    view = await hub.get_request(rid)
    assert view.phase == Phase.COMMITTEE and view.committee == co.members
    assert view.verification_state is VerificationState.DISPUTED
    members = [net.client_of(m) for m in co.members]
    for m in members:
        await m.commit(rid, GOOD)
    for m in members[:-1]:
        await m.reveal(rid, GOOD)
    resolved = await members[-1].reveal(rid, GOOD)
    (res,) = resolved.of(InferenceResolved)
    assert res.output_digest == GOOD and res.escalation_end == resolved.block_number + TIMEOUT
    with pytest.raises(HubError) as err:
        await net.stranger.timeout(rid)
    assert err.value.name == "NotYet"
    await hub.mine(TIMEOUT + 1)
    fin = await net.stranger.timeout(rid)
    assert fin.of(InferenceFinalized)[0].output_digest == GOOD
    slashed = fin.of(Slashed)
    assert [(s.miner, s.amount, s.reason) for s in slashed] == [
        (assignee.sender, MIN_STAKE, SlashReason.FRAUD)
    ]
    # auditBps 10000 sends the whole fee to the audit pool: the committee's work share is 0; the
    # requester gets fee / p = its fee back from the forfeited stake, and the rest is burned.
    assert not [c for c in fin.of(Credited) if c.reason == CreditReason.COMMITTEE]
    comp = [c for c in fin.of(Credited) if c.reason == CreditReason.COMPENSATION]
    assert [(c.account, c.amount) for c in comp] == [(hub.sender, view.fee)]
    assert sum(b.amount for b in fin.of(Burned)) == MIN_STAKE - view.fee
    assert (await hub.get_miner(str(assignee.sender))).stake == 0


async def test_r3_quorum_resolved_then_final(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=4, redundancy=3, audit_bps=0)
    hub = net.requester
    rid = await net.request(b"\x07" * 32)
    view = await hub.get_request(rid)
    assert len(set(view.assignees)) == 3
    a, b, c = (net.client_of(x) for x in view.assignees)
    await a.commit(rid, BAD)
    await b.commit(rid, GOOD)
    assert (await hub.get_request(rid)).verification_state is VerificationState.SUBMITTED
    with pytest.raises(HubError) as err:
        await a.reveal(rid, BAD)  # the reveal window opens only when every seat committed
    assert err.value.name == "WrongPhase"
    opened = await c.commit(rid, GOOD)
    assert opened.of(RevealOpened)[0].deadline == opened.block_number + TIMEOUT
    await a.reveal(rid, BAD)
    await b.reveal(rid, GOOD)
    done = await c.reveal(rid, GOOD)
    (res,) = done.of(InferenceResolved)  # a revealed dissenter: provisional, escalation possible
    assert res.output_digest == GOOD
    assert (await hub.get_request(rid)).phase == Phase.RESOLVED
    await hub.mine(TIMEOUT + 1)
    fin = await net.stranger.timeout_many([rid])
    assert fin.of(InferenceFinalized)[0].output_digest == GOOD
    fee = BASE_FEE + PER_TOKEN * 100
    assert await hub.credits_of(str(b.sender)) + await hub.credits_of(str(c.sender)) == fee
    assert (await hub.get_miner(str(a.sender))).stake == MIN_STAKE - SLASH
    assert [s.reason for s in fin.of(Slashed)] == [SlashReason.MINORITY]


async def test_unavailable_earns_the_base_fee(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=1)
    miner = net.miners[0]
    rid = await net.request(b"\x44" * 32, max_tokens=1000)
    fee = BASE_FEE + PER_TOKEN * 1000
    await miner.commit(rid, UNAVAILABLE)
    done = await miner.reveal(rid, UNAVAILABLE)  # never audited: no draw for UNAVAILABLE
    assert done.of(InferenceFinalized)[0].output_digest == UNAVAILABLE
    assert await net.requester.credits_of(str(miner.sender)) == BASE_FEE
    assert await net.requester.credits_of(str(net.requester.sender)) == fee - BASE_FEE
    assert (await net.requester.get_miner(str(miner.sender))).stake == MIN_STAKE


async def test_equivocation_with_a_real_signature(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=1)
    miner = net.miners[0]
    inp = b"\x55" * 32
    rid = await net.request(inp)
    await miner.commit(rid, GOOD)
    chain_id = int(await miner.w3.eth.chain_id)
    key = anvil_keys[1]
    honest = sign_result(
        key, chain_id=chain_id, hub=miner.address, request_id=rid, input_digest=inp, output_digest=GOOD
    )
    with pytest.raises(HubError) as err:
        await net.stranger.prove_equivocation(rid, str(miner.sender), GOOD, honest)
    assert err.value.name == "NoEquivocation"
    lie = sign_result(
        key, chain_id=chain_id, hub=miner.address, request_id=rid, input_digest=inp, output_digest=BAD
    )
    with pytest.raises(HubError) as err:
        await net.stranger.prove_equivocation(rid, str(net.stranger.sender), BAD, lie)
    assert err.value.name == "BadSignature"
    proof = await net.stranger.prove_equivocation(rid, str(miner.sender), BAD, lie)
    (ep,) = proof.of(EquivocationProven)
    assert (ep.miner, ep.signed_digest, ep.prover) == (miner.sender, BAD, net.stranger.sender)
    (sl,) = proof.of(Slashed)
    assert (sl.amount, sl.reason) == (MIN_STAKE, SlashReason.EQUIVOCATION)
    bounty = MIN_STAKE // 10
    assert await net.stranger.credits_of(str(net.stranger.sender)) == bounty
    assert await net.stranger.burned() == MIN_STAKE - bounty
    with pytest.raises(HubError) as err:
        await net.stranger.prove_equivocation(rid, str(miner.sender), BAD, lie)
    assert err.value.name == "NoEquivocation"  # once per seat


async def test_silent_assignee_is_slashed_and_the_request_reassigned(
    anvil: Anvil, anvil_keys: list[str]
) -> None:
    net = await _deploy(anvil, anvil_keys, miners=2)
    hub = net.requester
    rid = await net.request(b"\x66" * 32)
    first = (await hub.get_request(rid)).seats[0]
    second = next(m for m in net.miners if m.sender != first)
    with pytest.raises(HubError) as err:
        await net.stranger.timeout(rid)
    assert err.value.name == "NotYet"
    await hub.mine(TIMEOUT + 1)
    t = await net.stranger.timeout(rid)
    assert [(s.miner, s.amount, s.reason) for s in t.of(Slashed)] == [(first, SLASH, SlashReason.SILENT)]
    (again,) = t.of(InferenceAssigned)
    assert again.assignees == (second.sender,) and again.deadline == t.block_number + TIMEOUT
    view = await hub.get_request(rid)
    assert view.phase == Phase.ASSIGNED and view.reassigned and view.seats == (second.sender,)
    with pytest.raises(HubError) as err:
        await net.client_of(first).commit(rid, GOOD)
    assert err.value.name == "NotSeated"
    await second.commit(rid, GOOD)
    if await second.audit_drawn(rid):
        await second.open_audit(rid)
    await second.reveal(rid, GOOD)
    assert (await hub.get_request(rid)).phase == Phase.FINAL


def test_client_never_shows_its_key(anvil_keys: list[str]) -> None:
    client = HubClient.connect("http://127.0.0.1:9", "0x" + "00" * 20, anvil_keys[3])
    assert anvil_keys[3][2:] not in repr(client)
    assert client.sender == Account.from_key(anvil_keys[3]).address
