"""The submitter's batching policy (`node.miner.batching`): a lone result goes at once; company is
waited for only while other jobs are in flight, bounded by `batch_wait_s` and `batch_max`.

A fake clock drives the wait bound, so no test depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio

from node.miner.batching import BatchCollector, keep_waiting


class FakeClock:
    """Advances `step` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def queue_of(*ids: int) -> asyncio.Queue[int]:
    q: asyncio.Queue[int] = asyncio.Queue()
    for i in ids:
        q.put_nowait(i)
    return q


def test_policy_table() -> None:
    assert not keep_waiting(size=1, batch_max=32, busy=0, waited_s=0.0, wait_s=0.5)  # idle: send
    assert keep_waiting(size=1, batch_max=32, busy=3, waited_s=0.1, wait_s=0.5)  # others finishing
    assert not keep_waiting(size=1, batch_max=32, busy=3, waited_s=0.5, wait_s=0.5)  # waited enough
    assert not keep_waiting(size=32, batch_max=32, busy=3, waited_s=0.0, wait_s=0.5)  # full
    assert not keep_waiting(size=1, batch_max=32, busy=3, waited_s=0.0, wait_s=0.0)  # waiting off


async def test_lone_result_goes_at_once() -> None:
    clock = FakeClock(step=0.0)  # time stands still: only the policy can end the wait
    collector = BatchCollector(queue_of(7), batch_max=32, wait_s=10.0, busy=lambda: 0, clock=clock)
    assert await collector.next_batch() == [7]


async def test_ready_ones_are_taken_even_when_idle() -> None:
    collector = BatchCollector(queue_of(1, 2, 3), batch_max=32, wait_s=10.0, busy=lambda: 0)
    assert await collector.next_batch() == [1, 2, 3]


async def test_waits_for_results_about_to_finish() -> None:
    q = queue_of(1)
    running = {2, 3}
    clock = FakeClock(step=0.0)  # the bound never ends it: the finishing jobs do

    async def finish(rid: int) -> None:
        await asyncio.sleep(0)
        running.discard(rid)
        q.put_nowait(rid)

    collector = BatchCollector(q, batch_max=32, wait_s=10.0, busy=lambda: len(running), clock=clock,
                               tick_s=0.001)  # fmt: skip
    tasks = [asyncio.create_task(finish(2)), asyncio.create_task(finish(3))]
    batch = await collector.next_batch()
    await asyncio.gather(*tasks)
    assert sorted(batch) == [1, 2, 3]
    assert not running


async def test_stops_when_the_busy_job_ends_without_a_result() -> None:
    running = {5}
    clock = FakeClock(step=0.0)

    async def crash() -> None:
        await asyncio.sleep(0.005)
        running.clear()  # dropped / crashed: nothing reaches the queue

    collector = BatchCollector(queue_of(1), batch_max=32, wait_s=10.0, busy=lambda: len(running),
                               clock=clock, tick_s=0.001)  # fmt: skip
    task = asyncio.create_task(crash())
    assert await collector.next_batch() == [1]
    await task


async def test_wait_is_bounded_while_others_stay_busy() -> None:
    clock = FakeClock(step=0.1)  # each look at the clock is 100 ms later
    collector = BatchCollector(queue_of(1), batch_max=32, wait_s=0.5, busy=lambda: 4, clock=clock,
                               tick_s=0.0001)  # fmt: skip
    assert await collector.next_batch() == [1]
    assert clock.now >= 0.5  # it gave up because of the bound, not before


async def test_batch_max_caps_a_batch() -> None:
    q = queue_of(*range(10))
    collector = BatchCollector(q, batch_max=4, wait_s=10.0, busy=lambda: 9)
    assert await collector.next_batch() == [0, 1, 2, 3]
    assert await collector.next_batch() == [4, 5, 6, 7]
    assert q.qsize() == 2


async def test_without_busy_it_keeps_the_old_fixed_wait() -> None:
    clock = FakeClock(step=0.1)
    collector = BatchCollector(queue_of(1), batch_max=32, wait_s=0.3, clock=clock, tick_s=0.0001)
    assert await collector.next_batch() == [1]
    assert clock.now >= 0.3


async def test_a_batch_waiting_for_a_slot_takes_what_became_ready() -> None:
    q = queue_of(1)
    collector = BatchCollector(q, batch_max=3, wait_s=10.0, busy=lambda: 0)
    batch = await collector.next_batch()  # sent at once: nothing else was running
    for rid in (2, 3, 4):  # ... but every transaction slot was busy meanwhile
        q.put_nowait(rid)
    collector.take_ready(batch)
    assert batch == [1, 2, 3] and q.qsize() == 1
