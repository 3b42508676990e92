"""When the submitter sends: wait for company only while other results are about to be ready.

A commit (or reveal) transaction costs a base amount plus a little per id, so batching saves gas
under load, but every moment a ready result waits is latency the user sees. The old rule waited a
fixed `batch_wait_s` after the first ready job, even when nothing else was running: a lone request
always paid that wait. The rule here asks the daemon how many jobs are still in the engine or
uploading (`busy()`: they reach the queue within moments of each other under load) and:

- sends at once when nothing else is in flight (a lone request is never held back);
- otherwise waits for more ready jobs, at most `wait_s` after the first one, and stops waiting as
  soon as nothing is in flight any more or the batch holds `batch_max` jobs.

`busy()` is read again every `tick_s` (a job may end without reaching the queue: crashed, dropped),
and on every arrival. A batch that then waits for a free transaction slot takes what became ready
meanwhile (`take_ready`), so sending at once never means sending one at a time under load. The
clock is injectable so the policy is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

TICK_S = 0.02
"""How often a waiting collector re-reads `busy()` when nothing arrives."""


def keep_waiting(*, size: int, batch_max: int, busy: int, waited_s: float, wait_s: float) -> bool:
    """The policy: whether a batch of `size` ready jobs should wait for more before it is sent."""
    return size < batch_max and busy > 0 and waited_s < wait_s


class BatchCollector:
    """Takes batches of request ids off `queue` under the policy of `keep_waiting`."""

    def __init__(
        self,
        queue: asyncio.Queue[int],
        *,
        batch_max: int,
        wait_s: float,
        busy: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = TICK_S,
    ) -> None:
        self.queue = queue
        self.batch_max = max(1, batch_max)
        self.wait_s = wait_s
        self.busy = busy if busy is not None else (lambda: 1)  # unknown: always wait (the old rule)
        self.clock = clock
        self.tick_s = tick_s

    def take_ready(self, batch: list[int]) -> None:
        """Add the ids already queued to `batch` (up to `batch_max`), without waiting."""
        while len(batch) < self.batch_max and not self.queue.empty():
            batch.append(self.queue.get_nowait())

    async def next_batch(self) -> list[int]:
        """Wait for the first ready id, then collect more while the policy says so."""
        batch = [await self.queue.get()]
        started = self.clock()
        while True:
            self.take_ready(batch)
            waited = self.clock() - started
            if not keep_waiting(
                size=len(batch), batch_max=self.batch_max, busy=self.busy(), waited_s=waited,
                wait_s=self.wait_s,
            ):  # fmt: skip
                return batch
            timeout = max(min(self.wait_s - waited, self.tick_s), 0.0001)
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), timeout))
            except TimeoutError:
                continue


__all__ = ["TICK_S", "BatchCollector", "keep_waiting"]
