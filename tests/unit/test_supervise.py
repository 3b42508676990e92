"""`node.supervise`: one bad event is skipped and counted, a crashed loop restarts with capped backoff,
and health says a loop is down while it waits to restart. Backoff sleeps go through an injected
`sleep` that records the delay and waits for the test's go-ahead, so nothing here depends on time."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from node.supervise import LoopCollector, LoopState, Supervisor, wait_task


class GatedSleep:
    """Records every backoff delay; each sleep returns only when the test releases it."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.asked = asyncio.Event()
        self._go = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.asked.set()
        await self._go.wait()
        self._go.clear()

    async def release(self) -> None:
        self.asked.clear()
        self._go.set()
        await asyncio.sleep(0)


async def test_an_exception_in_one_event_is_counted_and_the_loop_goes_on() -> None:
    sup = Supervisor("test")
    handled: list[int] = []
    done = asyncio.Event()

    async def loop() -> None:
        for event in range(5):
            with sup.guard("worker", event=event):
                if event == 2:
                    raise ValueError("poisoned event")
                handled.append(event)
        done.set()
        await asyncio.Event().wait()  # a long-lived loop keeps running

    sup.spawn("worker", loop)
    await done.wait()
    assert handled == [0, 1, 3, 4]
    status = sup.loops["worker"]
    assert status.event_errors == 1 and status.last_error == "ValueError" and status.restarts == 0
    assert status.state == LoopState.UP and sup.healthy()
    await sup.close()
    assert sup.loops["worker"].state == LoopState.DOWN


async def test_a_crashed_loop_restarts_with_capped_exponential_backoff() -> None:
    sleep = GatedSleep()
    sup = Supervisor("test", backoff_s=1.0, max_backoff_s=4.0, sleep=sleep)
    runs = 0
    healthy_again = asyncio.Event()

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise ConnectionError(f"crash {runs}")
        healthy_again.set()
        await asyncio.Event().wait()

    sup.spawn("flaky", loop)
    for _ in range(4):
        await sleep.asked.wait()
        # Down while it waits out its backoff: health says so, and says why.
        status = sup.loops["flaky"]
        assert status.state == LoopState.RESTARTING and not sup.healthy()
        assert status.last_error == "ConnectionError"
        assert sup.snapshot()["flaky"]["state"] == "restarting"
        await sleep.release()
    await healthy_again.wait()
    assert sleep.delays == [1.0, 2.0, 4.0, 4.0]  # doubling, capped
    assert sup.loops["flaky"].restarts == 4 and sup.loops["flaky"].state == LoopState.UP
    assert sup.healthy()
    await sup.close()


async def test_a_loop_that_returns_by_itself_is_restarted_but_not_while_stopping() -> None:
    sleep = GatedSleep()
    sup = Supervisor("test", sleep=sleep)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1

    sup.spawn("quitter", loop)
    await sleep.asked.wait()
    assert sup.loops["quitter"].last_error == "LoopEnded"
    sup.stop_restarts()
    await sleep.release()
    await sup.tasks["quitter"]
    assert runs == 1 and sup.loops["quitter"].restarts == 0  # stopping: not started again
    assert sup.loops["quitter"].state == LoopState.DOWN


async def test_metrics_export_restarts_event_errors_and_up() -> None:
    sleep = GatedSleep()
    sup = Supervisor("test", sleep=sleep)
    registry = CollectorRegistry()
    registry.register(LoopCollector(sup, "inferd_test"))

    async def crash() -> None:
        raise RuntimeError("boom")

    with sup.guard("events"):
        raise KeyError("bad")
    sup.spawn("crasher", crash)
    await sleep.asked.wait()
    text = generate_latest(registry).decode()
    assert 'inferd_test_loop_event_errors_total{loop="events"} 1.0' in text
    assert 'inferd_test_loop_up{loop="crasher"} 0.0' in text
    await sleep.release()
    await sleep.asked.wait()
    assert 'inferd_test_loop_restarts_total{loop="crasher"} 1.0' in generate_latest(registry).decode()
    await sup.close()


async def test_wait_task_reraises_and_never_cancels_the_watched_task() -> None:
    release = asyncio.Event()

    async def owned() -> None:
        await release.wait()
        raise OSError("owned task died")

    task = asyncio.create_task(owned())
    watcher = asyncio.create_task(wait_task(task))
    await asyncio.sleep(0)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    assert not task.done()  # cancelling the watcher left the owner's task alone
    release.set()
    try:
        await wait_task(task)
    except OSError as exc:
        assert "owned task died" in str(exc)
    else:
        raise AssertionError("wait_task swallowed the task's exception")
