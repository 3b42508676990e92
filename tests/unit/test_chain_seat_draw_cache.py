"""`SeatDraw` reads a block's pool once for all the draws of that block, even when they all start
together (a batch of requests in one block, drawn by the miner and by the gateway), and reads a
block again when its hash changed (a reorg). The draw itself is tested against the hub in
tests/integration/test_seat_draw.py."""

from __future__ import annotations

import asyncio

from node.chain.draw import SeatDraw

MINERS = ["0x" + f"{i:040x}" for i in range(1, 4)]


class CountingHub:
    """The view `pool_at` reads, counting calls; each read yields to the loop first."""

    def __init__(self) -> None:
        self.reads = 0

    async def active_pool(self, model: bytes, block: int | None = None) -> list[tuple[str, int]]:
        self.reads += 1
        await asyncio.sleep(0)
        return [(m, 1) for m in MINERS]


async def test_the_draws_of_one_block_share_one_pool_read() -> None:
    hub = CountingHub()
    draw = SeatDraw(hub)  # type: ignore[arg-type]
    block_hash = "0x" + "ab" * 32
    seats = await asyncio.gather(*(draw.seats(b"m" * 32, 1, rid, 10, block_hash) for rid in range(64)))
    assert hub.reads == 1
    assert all(len(s) == 1 and s[0] in MINERS for s in seats)
    await draw.seats(b"m" * 32, 1, 0, 10, "0x" + "cd" * 32)  # block 10 reorged: another hash
    assert hub.reads == 2
