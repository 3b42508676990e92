"""Miner daemons on a real anvil (fake engine) start a seat at its request's block (miner.speculate).

Requests are paid and NOT assigned: the daemon holding the drawn seat (node.chain.draw) runs the
input and journals an uploaded result while the hub still says Pending, nothing of it on chain; the
other daemons hold no job. Then `assign()` names that same daemon, which commits and reveals once
(one ResultCommitted per request), and the request finalizes with its digest.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node.chain.draw import seats_for
from node.chain.events import ResultCommitted, decode_logs
from node.chain.hub import HubClient, Phase
from node.content.local import LocalStore
from node.devnet.processes import Anvil
from node.miner.journal import JobState
from node.miner.testing import FakeEngine, deploy_dev_hub, dev_request
from tests.unit.test_miner_seats import Miners, _daemon, chat_doc

pytestmark = pytest.mark.timeout(240)


async def test_the_drawn_seat_starts_before_the_assignment(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path
) -> None:
    store = LocalStore(data_dir / "blocks")
    keys = anvil_keys[1:5]
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], keys, timeout_blocks=30)
    requester = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[8])
    miners = Miners([_daemon(anvil, hub.owner.address, k, store, data_dir, FakeEngine()) for k in keys])
    try:
        for d in miners.daemons:
            await asyncio.wait_for(d.ready.wait(), 60)
        ids: list[int] = []
        for i in range(4):
            data = chat_doc(500 + i)
            await store.put(data)
            ids.append(await dev_request(requester, hub.model, data, assign=False))
        # each request's own block is its seed block; the next request's tx materialises up to two
        # due ones, so only the last one or two stay Pending: check those
        pending = [rid for rid in ids if (await hub.owner.get_request(rid)).phase == Phase.PENDING]
        assert pending, "the last request must still be unassigned"
        for rid in pending:
            req_block = next(
                e.log.block_number
                for e in decode_logs(
                    await hub.owner.w3.eth.get_logs({"address": hub.owner.address, "fromBlock": 0})  # type: ignore[arg-type]
                )
                if getattr(e, "id", None) == rid and type(e).__name__ == "InferenceRequested"
            )
            (seat,) = await seats_for(hub.owner, hub.model, 1, rid, req_block)
            holder = next(d for d in miners.daemons if d.address == seat)
            async with asyncio.timeout(60):
                while (job := holder.journal.get(rid)) is None or job.state != JobState.UPLOADED:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            assert job.output_digest is not None
            assert all(d.journal.get(rid) is None for d in miners.daemons if d is not holder)
            info = await hub.owner.get_request(rid)
            assert info.phase == Phase.PENDING and info.committed == 0, "nothing on chain before assign"
            assert holder.metrics.speculative_seats._value.get() >= 1
        await requester.assign(8)
        await miners.until_final(hub.owner, ids)
    finally:
        await miners.close()
    logs = await hub.owner.w3.eth.get_logs({"address": hub.owner.address, "fromBlock": 0})  # type: ignore[arg-type]
    commits = [e.id for e in decode_logs(logs) if isinstance(e, ResultCommitted)]
    for rid in ids:
        assert commits.count(rid) == 1, f"request {rid}: {commits.count(rid)} commits"
        info = await hub.owner.get_request(rid)
        (seat,) = info.assignees
        holder = next(d for d in miners.daemons if d.address == seat)
        job = holder.journal.get(rid)
        assert job is not None and job.state == JobState.FINALIZED and job.output_digest == info.output_digest
