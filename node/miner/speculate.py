"""Start a seat's work at the request's block, before `InferenceAssigned` materialises it.

Why: the hub fixes a request's seats when its block N is mined (seed `blockhash(N)`, the pool at
the end of N: `node.chain.draw`), but writes them only in a later block (`assign()`). On a 2 s chain
waiting for that costs a block before the engine starts. So, on `InferenceRequested` (delivered
once block N is final under the miner's confirmations), the daemon draws the seats itself and, when
it holds one, journals the job (a normal `assignee` job keyed by request id, with the request block
as its block and `N + 1 + timeoutBlocks` as a provisional deadline: the real one is never earlier)
and runs it: fetch, engine, signed result and stream deltas over MQTT.

Nothing goes on chain from the draw alone: the submitter's chain check waits while the request is
`Pending` (a commit would revert), and the real `InferenceAssigned` re-journals the job with its
real block and deadline (keeping the output) and queues the commit. An assignment naming others or
a refund closes the job as for any reassignment. The journal's guarantees are those of any job: one
row per request id, each commit broadcast once.
"""

from __future__ import annotations

from collections import OrderedDict

from node.chain.draw import PoolEntry, draw_seats, pool_at
from node.chain.hub import HubClient

_POOL_CACHE = 8  # recent (model, block) pools: requests of one block share one read


class SeatDraw:
    """Who holds request `id`'s seats, from its block's hash and pool (reads cached per block)."""

    def __init__(self, hub: HubClient) -> None:
        self.hub = hub
        self._pools: OrderedDict[tuple[bytes, int], list[PoolEntry]] = OrderedDict()

    async def _pool(self, model: bytes, block: int) -> list[PoolEntry]:
        key = (model, block)
        pool = self._pools.get(key)
        if pool is None:
            pool = await pool_at(self.hub, model, block)
            self._pools[key] = pool
            while len(self._pools) > _POOL_CACHE:
                self._pools.popitem(last=False)
        return pool

    async def seats(
        self, model: bytes, redundancy: int, request_id: int, block: int, block_hash: str
    ) -> list[str]:
        """The seats `assign()` will write for the request; fewer than `redundancy` means a refund.

        `block_hash` is the request block's hash from the event's log (the pool is read at that
        block number: a reorg of it replaces the event, and the daemon's reorg handling re-checks).
        """
        pool = await self._pool(model, block)
        return draw_seats(pool, redundancy, bytes.fromhex(block_hash.removeprefix("0x")), request_id, block)


__all__ = ["SeatDraw"]
