"""One commitment root per r = 1 batch (`commitBatch` / `revealBatch` / `proveBatchEquivocation`) on a
real anvil through `node.chain.hub`:

- a round trip: the root `batch_root` computes is the one committed (every `ResultCommitted` carries
  it), the reveal finalizes and pays each request, `BatchRevealed` rebuilds the root, and
  `get_request` reads a batch-final request's output digest from its `InferenceFinalized` log (the
  hub stores none);
- a withheld entry becomes a plain single commitment, revealed later with `reveal`;
- an entry drawn for audit: revealing it in the batch reverts `AuditDrawn`, `open_audit` waits for
  the leaf; withheld, the audit runs as for a single commit and ends audited;
- equivocation: the miner's true signature is no proof, a signature over another digest slashes it
  (with the root's ids and leaves from `BatchRevealed`), the single-commit proof is refused.
"""

from __future__ import annotations

import pytest
from eth_account import Account

from node.chain.errors import HubError
from node.chain.events import (
    AuditOpened,
    BatchRevealed,
    Credited,
    CreditReason,
    EquivocationProven,
    InferenceFinalized,
    ResultCommitted,
    Slashed,
    SlashReason,
)
from node.chain.hub import (
    HubClient,
    Phase,
    RequestFlag,
    VerificationState,
    batch_root,
    commitment,
)
from node.chain.signing import sign_result
from node.devnet.processes import Anvil
from tests.integration.test_hub import MIN_STAKE, Net, _deploy


def _digest(i: int) -> bytes:
    return bytes([0xA0 + i]) * 32


async def _requests(net: Net, n: int) -> list[int]:
    reqs = await net.requester.request_inferences(
        net.model, [(bytes([i + 1]) * 32, 10 + i) for i in range(n)]
    )
    await net.stranger.assign(n + 2)
    return [r.id for r in reqs]


async def test_commit_reveal_batch_round_trip_with_a_withheld_entry(
    anvil: Anvil, anvil_keys: list[str]
) -> None:
    net = await _deploy(anvil, anvil_keys, miners=1)
    miner = net.miners[0]
    me = str(miner.sender)
    ids = await _requests(net, 5)
    results = [(i, _digest(k)) for k, i in enumerate(ids)]
    root = batch_root(ids, [commitment(d, me, i) for i, d in results])

    c = await miner.commit_batch(list(reversed(results)))  # any order: the client sorts
    assert [(e.id, e.miner, e.commitment) for e in c.of(ResultCommitted)] == [(i, me, root) for i in ids]
    info = await net.requester.get_request(ids[0])
    assert (info.phase, info.committed, info.mark) == (Phase.REVEAL, 1, c.block_number)
    assert RequestFlag.BATCH in info.flags and info.verification_state == VerificationState.SUBMITTED

    held = ids[2]
    drawn = {i for i in ids if await miner.audit_drawn(i)}  # auditBps = 1: almost surely none
    before = await miner.credits_of(me)
    r = await miner.reveal_batch(results, withheld={held} | drawn)
    (br,) = r.of(BatchRevealed)
    assert (br.miner, br.root, list(br.ids)) == (me, root, ids)
    assert batch_root(br.ids, br.leaves) == root
    revealed = [i for i in ids if i != held and i not in drawn]
    assert [e.id for e in r.of(InferenceFinalized)] == revealed
    fees = {i: (await net.requester.get_request(i)).fee for i in ids}
    paid = [e for e in r.of(Credited) if e.account == me and e.reason == CreditReason.FEE]
    assert sorted(e.id for e in paid) == revealed
    assert await miner.credits_of(me) - before == sum(e.amount for e in paid)
    assert all(e.amount == fees[e.id] - fees[e.id] * 1 // 10_000 for e in paid)

    for k, i in enumerate(ids):
        info = await net.requester.get_request(i)
        if i in revealed:
            assert info.phase == Phase.FINAL and RequestFlag.BATCH in info.flags
            assert info.output_digest == _digest(k)  # from the InferenceFinalized log
            assert info.revealed_digest(str(miner.sender)) == _digest(k)  # read as any final seat's
            assert info.verification_state == VerificationState.FINAL
        else:  # withheld: now a single commitment
            assert info.phase == Phase.REVEAL and RequestFlag.BATCH not in info.flags
            assert info.digests[0] == commitment(_digest(k), me, i)

    if held not in drawn:
        await miner.reveal(held, _digest(ids.index(held)))
        info = await net.requester.get_request(held)
        assert (info.phase, info.output_digest) == (Phase.FINAL, _digest(ids.index(held)))
    with pytest.raises(HubError) as err:  # a root opens once
        await miner.reveal_batch(results)
    assert err.value.name == "WrongPhase"


async def test_drawn_entry_is_withheld_then_audited(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=2, audit_bps=10_000)
    ids = await _requests(net, 1)
    info = await net.requester.get_request(ids[0])
    miner = net.client_of(info.seats[0])
    rid = ids[0]
    d = _digest(0)
    await miner.commit_batch([(rid, d)])
    assert await miner.audit_drawn(rid)
    with pytest.raises(HubError) as err:
        await net.stranger.open_audit(rid)  # the leaf is not on chain yet
    assert err.value.name == "WrongPhase"
    with pytest.raises(HubError) as err:
        await miner.reveal_batch([(rid, d)])
    assert err.value.name == "AuditDrawn"
    r = await miner.reveal_batch([(rid, d)], withheld=[rid])
    assert not r.of(InferenceFinalized)
    opened = await net.stranger.open_audit(rid)
    (ao,) = opened.of(AuditOpened)
    auditor = net.client_of(ao.auditor)
    await auditor.commit(rid, d)
    await auditor.reveal(rid, d)
    fin = await miner.reveal(rid, d)
    assert [e.output_digest for e in fin.of(InferenceFinalized)] == [d]
    info = await net.requester.get_request(rid)
    assert info.verification_state == VerificationState.AUDITED and info.output_digest == d


async def test_batch_equivocation(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=1)
    miner = net.miners[0]
    me = str(miner.sender)
    ids = await _requests(net, 3)
    results = [(i, _digest(k)) for k, i in enumerate(ids)]
    await miner.commit_batch(results)
    drawn = {i for i in ids if await miner.audit_drawn(i)}
    (br,) = (await miner.reveal_batch(results, withheld=drawn)).of(BatchRevealed)
    rid = next(i for i in ids if i not in drawn)
    inp = (await net.requester.get_request(rid)).input_digest
    chain_id = int(await miner.w3.eth.chain_id)
    key = anvil_keys[1]
    assert Account.from_key(key).address == me

    def sig(digest: bytes) -> str:
        return sign_result(
            key, chain_id=chain_id, hub=miner.address, request_id=rid, input_digest=inp, output_digest=digest
        )

    honest = sig(_digest(ids.index(rid)))
    with pytest.raises(HubError) as err:
        await net.stranger.prove_batch_equivocation(
            rid, me, _digest(ids.index(rid)), honest, br.ids, br.leaves
        )
    assert err.value.name == "NoEquivocation"
    lie = sig(b"\x0b" * 32)
    with pytest.raises(HubError) as err:  # the single-commit proof does not apply to a batch seat
        await net.stranger.prove_equivocation(rid, me, b"\x0b" * 32, lie)
    assert err.value.name == "NoEquivocation"
    forged = list(br.leaves)
    forged[ids.index(rid)] = b"\x0c" * 32
    with pytest.raises(HubError) as err:  # leaves of no committed root
        await net.stranger.prove_batch_equivocation(rid, me, b"\x0b" * 32, lie, br.ids, forged)
    assert err.value.name == "CommitmentMismatch"
    proof = await net.stranger.prove_batch_equivocation(rid, me, b"\x0b" * 32, lie, br.ids, br.leaves)
    (ep,) = proof.of(EquivocationProven)
    assert (ep.id, ep.miner, ep.prover) == (rid, me, net.stranger.sender)
    (sl,) = proof.of(Slashed)
    assert (sl.amount, sl.reason) == (MIN_STAKE, SlashReason.EQUIVOCATION)
    assert await net.stranger.credits_of(str(net.stranger.sender)) == MIN_STAKE // 10


def test_batch_root_is_abi_encode_packed() -> None:
    assert batch_root([1, 2], [b"\x01" * 32, b"\x02" * 32]) == HubClient.web3("http://127.0.0.1:1").keccak(
        (1).to_bytes(32, "big") + (2).to_bytes(32, "big") + b"\x01" * 32 + b"\x02" * 32
    )
    with pytest.raises(ValueError):
        batch_root([1], [])
