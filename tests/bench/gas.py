"""Gas of the hub's hot paths, from real receipts on a fresh anvil.

Run: `.venv/bin/python tests/bench/gas.py`. Prints one line per measurement, then (last line) one
JSON object: request_r1, request_r3, submit, submit_batch32_per_result, expire.
Targets: request_r1 <= 120,000; submit <= 60,000; submit_batch32_per_result <= 35,000.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from node.chain.hub import HubClient
from node.devnet.processes import anvil_private_keys, anvil_process

TARGETS = {"request_r1": 120_000, "submit": 60_000, "submit_batch32_per_result": 35_000}
STAKE = 10**18
FEE = 10**16


async def measure(rpc_url: str, keys: list[str]) -> dict[str, int]:
    owner = await HubClient.deploy(rpc_url, keys[0])
    w3 = owner.w3
    m1, _ = await owner.register_model("bench-r1", STAKE, FEE, 1_000, 1)
    m3, _ = await owner.register_model("bench-r3", STAKE, FEE, 1_000, 3)
    mx, _ = await owner.register_model("bench-expire", STAKE, FEE, 5, 1)
    requester = HubClient(w3, owner.address, keys[9])

    # one miner serves m1, so every m1 request (and the batch) goes to it
    solo = HubClient(w3, owner.address, keys[1])
    await solo.register_miner(m1, STAKE)
    trio = [HubClient(w3, owner.address, k) for k in keys[2:5]]
    for m in trio:
        await m.register_miner(m3, STAKE)
    pair = [HubClient(w3, owner.address, k) for k in keys[5:7]]
    for m in pair:
        await m.register_miner(mx, STAKE)

    gas: dict[str, int] = {}
    first = await requester.request_inference(m1, b"\x01" * 32, FEE)
    gas["request_r1_first"] = first.tx.gas_used
    r1 = await requester.request_inference(m1, b"\x02" * 32, FEE)
    gas["request_r1"] = max(first.tx.gas_used, r1.tx.gas_used)
    r3 = await requester.request_inference(m3, b"\x03" * 32, FEE)
    gas["request_r3"] = r3.tx.gas_used

    sub = await solo.submit_result(first.id, b"\xaa" * 32)  # the miner's first ever credit
    gas["submit_first"] = sub.gas_used
    sub2 = await solo.submit_result(r1.id, b"\xab" * 32)
    gas["submit"] = max(sub.gas_used, sub2.gas_used)

    ids = [(await requester.request_inference(m1, bytes([i + 1]) * 32, FEE)).id for i in range(32)]
    batch = await solo.submit_results([(i, b"\xcc" * 32) for i in ids])
    gas["submit_batch32_total"] = batch.gas_used
    gas["submit_batch32_per_result"] = -(-batch.gas_used // 32)

    by_addr = {str(m.sender): m for m in trio}
    a, b, _ = (by_addr[x] for x in r3.assignees)
    gas["submit_r3_first"] = (await a.submit_result(r3.id, b"\xdd" * 32)).gas_used
    gas["submit_r3_quorum"] = (await b.submit_result(r3.id, b"\xdd" * 32)).gas_used

    late = await requester.request_inference(mx, b"\x04" * 32, FEE)
    await requester.mine(6)
    gas["expire"] = (await requester.expire(late.id)).gas_used  # slash + reassign
    await requester.mine(6)
    gas["expire_refund"] = (await requester.expire(late.id)).gas_used
    return gas


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="inferd-gas-") as tmp:
        node = anvil_process(Path(tmp))
        node.start()
        try:
            gas = asyncio.run(measure(node.rpc_url, anvil_private_keys(10)))
        finally:
            node.stop()
    for key, value in gas.items():
        target = TARGETS.get(key)
        note = f"  (target <= {target:,}: {'ok' if value <= target else 'OVER'})" if target else ""
        print(f"{key:28s} {value:>10,}{note}")
    keys = ("request_r1", "request_r3", "submit", "submit_batch32_per_result", "expire")
    print(json.dumps({k: gas[k] for k in keys}))
    return 0 if all(gas[k] <= t for k, t in TARGETS.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
