"""The hub's seat draw, computed off chain: who will serve a request, known once its block is mined.

Why: a request mined in block N is only *materialised* (seats written, `InferenceAssigned` emitted)
by an `assign()` or a pool change in a later block. On a 2 s chain that is a whole extra block
before a miner starts. But the seats are already fixed when block N is mined: the hub draws them
with the seed `keccak256(abi.encode(blockhash(N), id))` over the model's active pool as it stands at
the END of block N (every pool change first materialises the requests already due, so no change
made after N can move them), and only miners active since before N are eligible. So a miner can
start its seat's work, and a gateway can accept a seat's signed result, as soon as block N is final.

This module is a bit-exact port of `HubStorage._pick` (the r = 1 fast path, the partial
Fisher-Yates over virtual positions with its sparse swap table and 64-swap cap) and of the seed,
plus `pool_at`, which reads the pool (order and `since` of each entry) as of a block. The on-chain
`InferenceAssigned` stays the authority: callers use this draw to start early, never to act on
chain (a commit before the assignment reverts), and drop work the event contradicts (a refund,
when no blockhash is available any more or too few miners are eligible).

tests/integration/test_seat_draw.py compares it against every `InferenceAssigned` of a real hub.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from node.chain.abicall import checksum

if TYPE_CHECKING:
    from node.chain.hub import HubClient

MAX_SWAPS = 64  # `_pick`'s swap-table size cap: at most this many candidates are looked at


@dataclass(frozen=True)
class PoolEntry:
    """One slot of a model's active pool: the miner and the block it was (last) activated in."""

    miner: str
    since: int


def seat_seed(block_hash: bytes, request_id: int) -> int:
    """`uint256(keccak256(abi.encode(blockhash(requestBlock), id)))`."""
    if len(block_hash) != 32:
        raise ValueError(f"a block hash is 32 bytes, got {len(block_hash)}")
    return int.from_bytes(keccak(encode(["bytes32", "uint256"], [block_hash, request_id])), "big")


def _step(seed: int, j: int) -> int:
    return int.from_bytes(keccak(encode(["uint256", "uint256"], [seed, j])), "big")


def _swap(swap_pos: list[int], swap_val: list[int], swaps: int, j: int, k: int) -> tuple[int, int]:
    """`HubStorage._swap`: the value at virtual position k, swapping positions j and k."""
    vk, vj, slot_k = k, j, swaps
    for s in range(swaps):
        p = swap_pos[s]
        if p == k:
            vk = swap_val[s]
            slot_k = s
        if p == j:
            vj = swap_val[s]
    if k != j:
        swap_pos[slot_k] = k
        swap_val[slot_k] = vj
        if slot_k == swaps:
            swaps += 1
    return vk, swaps


def pick(pool: Sequence[PoolEntry], r: int, seed: int, cutoff: int, exclude: Sequence[str] = ()) -> list[str]:
    """`HubStorage._pick`: up to `r` distinct miners of `pool` with `since < cutoff`, not in `exclude`.

    Returns the chosen miners in seat order; fewer than `r` means the hub would refund the request.
    """
    n = len(pool)
    if n == 0:
        return []
    excluded = {checksum(a) for a in exclude}
    if r == 1 and not exclude:
        e = pool[seed % n]
        if e.since < cutoff:
            return [checksum(e.miner)]
    cap = min(n, MAX_SWAPS)
    swap_pos = [0] * cap
    swap_val = [0] * cap
    swaps = 0
    chosen: list[str] = []
    j = 0
    while j < n and len(chosen) < r and swaps < cap:
        k = j + _step(seed, j) % (n - j)
        vk, swaps = _swap(swap_pos, swap_val, swaps, j, k)
        e = pool[vk]
        miner = checksum(e.miner)
        if e.since < cutoff and miner not in excluded:
            chosen.append(miner)
        j += 1
    return chosen


def draw_seats(
    pool: Sequence[PoolEntry], r: int, block_hash: bytes, request_id: int, request_block: int
) -> list[str]:
    """The seats `assign()` will give request `request_id` mined in `request_block` (hash `block_hash`).

    `pool` must be the model's pool at the end of `request_block` (see `pool_at`). An answer shorter
    than `r` means a refund.
    """
    return pick(pool, r, seat_seed(block_hash, request_id), request_block)


async def pool_at(hub: HubClient, model: bytes, block: int) -> list[PoolEntry]:
    """The model's active pool, in the hub's order, as of the end of `block`."""
    return [PoolEntry(miner=m, since=since) for m, since in await hub.active_pool(model, block=block)]


async def seats_for(hub: HubClient, model: bytes, r: int, request_id: int, request_block: int) -> list[str]:
    """Read block `request_block`'s hash and pool and draw request `request_id`'s seats."""
    block = await hub.w3.eth.get_block(request_block)
    block_hash = block.get("hash")
    if block_hash is None:
        raise ValueError(f"block {request_block} has no hash yet")
    pool = await pool_at(hub, model, request_block)
    return draw_seats(pool, r, bytes(block_hash), request_id, request_block)


_POOL_CACHE = 8  # recent (model, block) pools: requests of one block share one read


class SeatDraw:
    """Who holds request `id`'s seats, from its block's hash and pool (reads cached per block)."""

    def __init__(self, hub: HubClient) -> None:  # used by the miner (speculative seats) and the gateway
        self.hub = hub
        self._pools: OrderedDict[tuple[bytes, int, str], asyncio.Future[list[PoolEntry]]] = OrderedDict()
        """One read per (model, block, block hash), shared by the draws that wait for it: a batch of
        64 requests in one block is drawn at once, by the miner and the gateway each (a reorged block
        has another hash, so it is read afresh)."""

    async def _pool(self, model: bytes, block: int, block_hash: str) -> list[PoolEntry]:
        key = (model, block, block_hash.lower())
        read = self._pools.get(key)
        if read is None or (read.done() and (read.cancelled() or read.exception() is not None)):
            read = self._pools[key] = asyncio.ensure_future(pool_at(self.hub, model, block))
            while len(self._pools) > _POOL_CACHE:
                self._pools.popitem(last=False)
        return await asyncio.shield(read)  # one waiter cancelled does not cancel the others' read

    async def seats(
        self, model: bytes, redundancy: int, request_id: int, block: int, block_hash: str
    ) -> list[str]:
        """The seats `assign()` will write for the request; fewer than `redundancy` means a refund.

        `block_hash` is the request block's hash from the event's log (the pool is read at that
        block number: a reorg of it replaces the event, and the daemon's reorg handling re-checks).
        """
        pool = await self._pool(model, block, block_hash)
        return draw_seats(pool, redundancy, bytes.fromhex(block_hash.removeprefix("0x")), request_id, block)


__all__ = ["MAX_SWAPS", "PoolEntry", "SeatDraw", "draw_seats", "pick", "pool_at", "seat_seed", "seats_for"]
