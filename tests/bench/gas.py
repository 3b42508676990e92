"""Gas of the hub's hot paths (protocol v2), from real receipts on a fresh anvil.

Run: `.venv/bin/python tests/bench/gas.py`. Prints one line per measurement, then (last line) one
JSON object with every key below.

Keys kept from v1, with their v2 meaning: `request_r1` (the request transaction alone: seats are
drawn later), `request_r3`, `submit` (= the r = 1 `commit`), `submit_batch32_per_result` (= one
`commitBatch` + one `revealBatch` of 32 r = 1 results, per result: one commitment root per batch;
`commit_batch32_per_result` and `reveal_batch32_per_result` are its two halves), `expire`
(= `timeout` of a silent r = 1 seat: slash + reassign) and `expire_refund`.
New: `commit`, `reveal` (r = 1, unaudited: finalizes and pays), `commit_reveal` (their sum, one
assignee), `commit_r3`, `reveal_r3` (a seat that does not complete the set), `reveal_r3_last` (the
reveal that finalizes and pays all seats), `request_with_assignment` (request + the `assign` a lone
request needs: everything before a miner can start, r = 1), `assign_one`, `audit_submit` (the
auditor's commit + reveal, the reveal resolving the agreement), `open_audit`,
`equivocation_proof`, `batch_equivocation_proof` (`proveBatchEquivocation` against a root of 32),
`commit_many32_per_result` / `reveal_many32_per_result` / `submit_many32_per_result` (the per-seat
path, `commitMany` + `revealMany` of 32 r = 1 results: what `submit_batch32_per_result` measured
before batch roots), `request_batch16_per_request` (`requestInferences` of 16, per request) and
`assign_batch16_per_request`.
Ratios (issue 14; floats, the only non-integer keys): `request_batch16_ratio` (a request in a batch of
16 against a lone one: request_batch16_per_request / request_r1) and
`request_batch16_with_assignment_ratio` (the same with each side's `assign` added:
(request_batch16_per_request + assign_batch16_per_request) / request_with_assignment).
Targets (issue 12): request_with_assignment <= 150,000; submit <= 60,000; commit_reveal <= 110,000;
submit_batch32_per_result <= 35,000. Issue 14: request_batch16_ratio <= 0.5 (a batch's members write
one fresh slot each where a lone request writes three; see `Request` in HubStorage.sol).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eth_utils.crypto import keccak

from node.chain.events import BatchRevealed
from node.chain.hub import HubClient
from node.chain.signing import sign_result
from node.devnet.processes import anvil_private_keys, anvil_process

TARGETS = {
    "request_with_assignment": 150_000,
    "submit": 60_000,
    "commit_reveal": 110_000,
    "submit_batch32_per_result": 35_000,
}
RATIO_TARGETS = {"request_batch16_ratio": 0.5}
CLASS = keccak(text="inferd-gas-bench")
STAKE = 10**18
BASE = 10**12  # tiny prices so that a 1 bps audit rate passes the registration bound
TOKENS = 256


def digest(i: int) -> bytes:
    return keccak(text=f"digest {i}")


async def measure(rpc_url: str, keys: list[str]) -> dict[str, int]:
    owner = await HubClient.deploy(rpc_url, keys[0])
    w3 = owner.w3
    chain_id = int(await w3.eth.chain_id)
    # m1: r = 1, audit rate 1 bps (so reveals are almost never audited); ma: every result audited
    m1, _ = await owner.register_model("gas-r1", CLASS, STAKE, BASE, 0, 50, 1, 1)
    ma, _ = await owner.register_model("gas-audit", CLASS, STAKE, BASE, 0, 50, 1, 10_000)
    m3, _ = await owner.register_model("gas-r3", CLASS, STAKE, BASE, 0, 50, 3, 0)
    mx, _ = await owner.register_model("gas-expire", CLASS, STAKE, BASE, 0, 5, 1, 1)
    requester = HubClient(w3, owner.address, keys[9])
    prover = HubClient(w3, owner.address, keys[10])
    solo = HubClient(w3, owner.address, keys[1])  # the only m1 miner: every m1 request is its
    await solo.register_miner(m1, CLASS, STAKE)
    pair = [HubClient(w3, owner.address, k) for k in keys[2:4]]  # assignee + auditor
    for m in pair:
        await m.register_miner(ma, CLASS, STAKE)
    trio = [HubClient(w3, owner.address, k) for k in keys[4:7]]
    for m in trio:
        await m.register_miner(m3, CLASS, STAKE)
    two = [HubClient(w3, owner.address, k) for k in keys[7:9]]
    for m in two:
        await m.register_miner(mx, CLASS, STAKE)
    await owner.mine(1)
    by_addr = {str(c.sender): c for c in [solo, *pair, *trio, *two]}

    gas: dict[str, int] = {}
    # warm the model's slots (first request, first credit) so that the figures are steady-state
    first = await requester.request_inference(m1, digest(0), TOKENS)
    await requester.assign(1)
    await solo.commit(first.id, digest(100))
    await solo.reveal(first.id, digest(100))

    r1 = await requester.request_inference(m1, digest(1), TOKENS)
    gas["request_r1"] = r1.tx.gas_used
    a1 = await requester.transact(requester.contract.functions.assign(1))
    gas["assign_one"] = a1.gas_used
    gas["request_with_assignment"] = r1.tx.gas_used + a1.gas_used
    c = await solo.commit(r1.id, digest(101))
    gas["commit"] = gas["submit"] = c.gas_used
    if await solo.audit_drawn(r1.id):
        raise RuntimeError("a 1 bps audit was drawn: run again")
    rv = await solo.reveal(r1.id, digest(101))
    gas["reveal"] = rv.gas_used
    gas["commit_reveal"] = c.gas_used + rv.gas_used

    # a batch of 32: commitBatch + revealBatch (one root), per result
    ids = [
        r.id for r in await requester.request_inferences(m1, [(digest(200 + i), TOKENS) for i in range(32)])
    ]
    await requester.transact(requester.contract.functions.assign(32))
    batch32 = [(i, digest(300 + i)) for i in ids]
    cb = await solo.commit_batch(batch32)
    if any([await solo.audit_drawn(i) for i in ids]):
        raise RuntimeError("a 1 bps audit was drawn in the batch: run again")
    rb = await solo.reveal_batch(batch32)
    gas["submit_batch32_per_result"] = -(-(cb.gas_used + rb.gas_used) // 32)
    gas["commit_batch32_per_result"] = -(-cb.gas_used // 32)
    gas["reveal_batch32_per_result"] = -(-rb.gas_used // 32)

    # the same with a commitment per seat: commitMany + revealMany, per result
    ids = [
        r.id for r in await requester.request_inferences(m1, [(digest(500 + i), TOKENS) for i in range(32)])
    ]
    await requester.transact(requester.contract.functions.assign(32))
    cm = await solo.commit_many([(i, digest(600 + i)) for i in ids])
    if any([await solo.audit_drawn(i) for i in ids]):
        raise RuntimeError("a 1 bps audit was drawn in the batch: run again")
    rm = await solo.reveal_many([(i, digest(600 + i)) for i in ids])
    gas["submit_many32_per_result"] = -(-(cm.gas_used + rm.gas_used) // 32)
    gas["commit_many32_per_result"] = -(-cm.gas_used // 32)
    gas["reveal_many32_per_result"] = -(-rm.gas_used // 32)

    # requestInferences of 16, and the assign that materialises them
    batch = await requester.request_inferences(m1, [(digest(400 + i), TOKENS) for i in range(16)])
    gas["request_batch16_per_request"] = -(-batch[0].tx.gas_used // 16)
    a16 = await requester.transact(requester.contract.functions.assign(16))
    gas["assign_batch16_per_request"] = -(-a16.gas_used // 16)

    # r = 3: three commits, two reveals, the last reveal finalizes
    r3 = await requester.request_inference(m3, digest(3), TOKENS)
    gas["request_r3"] = r3.tx.gas_used
    await requester.assign(1)
    seats = [by_addr[a] for a in (await owner.get_request(r3.id)).seats]
    commits = [(await s.commit(r3.id, digest(103))).gas_used for s in seats]
    gas["commit_r3"] = max(commits[:2])
    gas["commit_r3_last"] = commits[2]  # opens the reveal window
    reveals = [(await s.reveal(r3.id, digest(103))).gas_used for s in seats]
    gas["reveal_r3"] = max(reveals[:2])
    gas["reveal_r3_last"] = reveals[2]

    # audit: the assignee commits, opens the audit; the auditor commits and reveals (agreement)
    ra = await requester.request_inference(ma, digest(4), TOKENS)
    await requester.assign(1)
    info = await owner.get_request(ra.id)
    assignee = by_addr[info.seats[0]]
    auditor = next(p for p in pair if p is not assignee)
    await assignee.commit(ra.id, digest(104))
    gas["open_audit"] = (await assignee.open_audit(ra.id)).gas_used
    ac = await auditor.commit(ra.id, digest(104))
    await assignee.reveal(ra.id, digest(104))
    ar = await auditor.reveal(ra.id, digest(104))
    gas["audit_submit"] = ac.gas_used + ar.gas_used

    # equivocation: solo signs another digest for a request it committed
    re_ = await requester.request_inference(m1, digest(5), TOKENS)
    await requester.assign(1)
    await solo.commit(re_.id, digest(105))
    sig = sign_result(
        keys[1], chain_id=chain_id, hub=owner.address, request_id=re_.id, input_digest=digest(5),
        output_digest=digest(999),
    )  # fmt: skip
    gas["equivocation_proof"] = (
        await prover.prove_equivocation(re_.id, str(solo.sender), digest(999), sig)
    ).gas_used

    # batch equivocation: solo signed another digest for one result of the root of 32 (solo restakes:
    # the proof above took its stake)
    await solo.add_stake(STAKE)
    (br,) = rb.of(BatchRevealed)
    target = br.ids[7]
    bsig = sign_result(
        keys[1], chain_id=chain_id, hub=owner.address, request_id=target, input_digest=digest(200 + 7),
        output_digest=digest(998),
    )  # fmt: skip
    gas["batch_equivocation_proof"] = (
        await prover.prove_batch_equivocation(target, str(solo.sender), digest(998), bsig, br.ids, br.leaves)
    ).gas_used

    # a silent seat: timeout slashes and reassigns, then (silent again) refunds
    late = await requester.request_inference(mx, digest(6), TOKENS)
    await requester.assign(1)
    await requester.mine(6)
    gas["expire"] = (await requester.timeout(late.id)).gas_used
    await requester.mine(6)
    gas["expire_refund"] = (await requester.timeout(late.id)).gas_used
    return gas


def ratios(gas: dict[str, int]) -> dict[str, float]:
    """Issue 14: what a request in a batch of 16 costs against a lone one."""
    batched = gas["request_batch16_per_request"]
    return {
        "request_batch16_ratio": round(batched / gas["request_r1"], 3),
        "request_batch16_with_assignment_ratio": round(
            (batched + gas["assign_batch16_per_request"]) / gas["request_with_assignment"], 3
        ),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="inferd-gas-") as tmp:
        node = anvil_process(Path(tmp), accounts=12)
        node.start()
        try:
            gas = asyncio.run(measure(node.rpc_url, anvil_private_keys(12)))
        finally:
            node.stop()
    for key, value in gas.items():
        target = TARGETS.get(key)
        note = (
            f"  (target <= {target:,}: {'ok' if value <= target else f'OVER by {value - target:,}'})"
            if target
            else ""
        )
        print(f"{key:30s} {value:>10,}{note}")
    rates = ratios(gas)
    for key, rate in rates.items():
        bound = RATIO_TARGETS.get(key)
        note = f"  (target <= {bound:.0%}: {'ok' if rate <= bound else 'OVER'})" if bound else ""
        print(f"{key:38s} {rate:>6.1%}{note}")
    print(json.dumps({**gas, **rates}))
    ok = all(gas[k] <= t for k, t in TARGETS.items()) and all(rates[k] <= t for k, t in RATIO_TARGETS.items())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
