"""The miner's off-chain audit draw (`hubview.audit_draw`) against the hub's `auditDrawn` on anvil.

After its own r = 1 commit receipt the submitter decides the reveal (withhold or not, `openAudit`
or `reveal`) from the receipt's block hash instead of an eth_call per result; this pins the port to
the contract: at auditBps = 5000 a root of 24 requests has drawn and undrawn entries, and every one
agrees with the chain's answer on the next block.
"""

from __future__ import annotations

from node.devnet.processes import Anvil
from node.miner.hubview import audit_draw
from tests.integration.test_hub import _deploy


async def test_off_chain_audit_draw_matches_the_hub(anvil: Anvil, anvil_keys: list[str]) -> None:
    net = await _deploy(anvil, anvil_keys, miners=1, audit_bps=5_000)
    miner = net.miners[0]
    n = 24
    reqs = await net.requester.request_inferences(net.model, [(bytes([i + 1]) * 32, 10) for i in range(n)])
    await net.stranger.assign(n + 2)
    ids = [r.id for r in reqs]
    results = [(i, bytes([0xA0 + k]) * 32) for k, i in enumerate(ids)]
    c = await miner.commit_batch(results)
    assert c.receipt is not None
    block_hash = bytes(c.receipt["blockHash"])
    local = {i: audit_draw(block_hash, i, 5_000) for i in ids}
    chain = {i: await miner.audit_drawn(i) for i in ids}
    assert local == chain
    assert any(local.values()) and not all(local.values())  # both outcomes were compared
