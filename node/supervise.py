"""Supervised long-lived asyncio loops: one bad event or one crash never takes a node down.

A miner or a gateway is a handful of loops that must run for weeks (chain watcher, sweeper,
submitter, MQTT). Before, an exception escaping any of them ended it for good, and the miner then
shut itself down: one poisoned log or one broker hiccup of an unexpected type stopped an honest
node, which then missed its deadlines and was slashed. A `Supervisor` gives each loop two guards:

- `guard(loop, **context)` around the handling of one event: an exception is logged with the
  context (request id, block, ...), counted against the loop, and the loop goes on with the next
  event;
- `spawn(name, run)`: when `run()` raises (or returns while the node is not stopping) it is
  restarted after an exponential backoff, capped; a loop that ran quietly for `reset_after_s`
  starts its backoff over.

Every loop's state (`up`, `restarting` while it waits out its backoff, `down` once stopped), its
restart and event-error counts and the type of its last error are kept here, for `/healthz` (a node
is unhealthy while any loop is not up, not only when its process is gone) and for Prometheus
(`LoopCollector`). Only error *types* are kept and exported: messages can carry hostile or secret
text; the log line (redacted by `node.log`) has the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.log import get_logger

log = get_logger("inferd.supervise")
Sleep = Callable[[float], Awaitable[Any]]
_MAX_ERROR_TEXT = 300
_RESERVED = frozenset({"event", "component", "loop", "error", "note", "exc_info"})  # the guard's own fields


class LoopState(StrEnum):
    UP = "up"
    RESTARTING = "restarting"  # crashed; waiting out its backoff before the next start
    DOWN = "down"  # not running and not coming back (the node is stopping)


@dataclass
class LoopStatus:
    """What `/healthz` shows of one loop."""

    name: str
    state: LoopState = LoopState.UP
    restarts: int = 0
    event_errors: int = 0
    last_error: str | None = None  # the exception's type name, never its message
    retry_in_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "restarts": self.restarts,
            "event_errors": self.event_errors,
            "last_error": self.last_error,
            "retry_in_s": self.retry_in_s,
        }


def describe(exc: BaseException) -> str:
    """`Type: message`, cut short (a hostile peer can make messages arbitrarily long)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "…"


class LoopEnded(RuntimeError):
    """A supervised loop returned although nothing asked it to stop."""


class Supervisor:
    """Runs and restarts the long-lived loops of one component (see the module docstring)."""

    def __init__(
        self,
        component: str,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        reset_after_s: float = 60.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.component = component
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.reset_after_s = reset_after_s
        self._sleep = sleep
        self.loops: dict[str, LoopStatus] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    # ---------------------------------------------------------------- per-event guard

    @contextlib.contextmanager
    def guard(self, loop: str, **context: Any) -> Iterator[None]:
        """Handle one event: an exception is logged with `context`, counted, and swallowed."""
        try:
            yield
        except Exception as exc:
            status = self._status(loop)
            status.event_errors += 1
            status.last_error = type(exc).__name__
            fields = {(f"ctx_{k}" if k in _RESERVED else k): v for k, v in context.items()}
            log.error(
                "loop_event_failed", component=self.component, loop=loop, error=describe(exc),
                note="skipped; the loop goes on", exc_info=True, **fields,
            )  # fmt: skip

    # ---------------------------------------------------------------- supervised tasks

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` as task `name`, restarting it with backoff whenever it dies."""
        self._status(name).state = LoopState.UP
        task = asyncio.get_running_loop().create_task(self._keep(name, run), name=f"{self.component}:{name}")
        self.tasks[name] = task
        return task

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        status = self._status(name)
        failures = 0
        while not self._stopping:
            status.state, status.retry_in_s = LoopState.UP, None
            started = time.monotonic()
            try:
                await run()
                if self._stopping:
                    break
                raise LoopEnded(f"{name} returned")
            except asyncio.CancelledError:
                status.state = LoopState.DOWN
                raise
            except Exception as exc:
                if self._stopping:
                    break
                failures = 1 if time.monotonic() - started >= self.reset_after_s else failures + 1
                delay = min(self.backoff_s * 2.0 ** (failures - 1), self.max_backoff_s)
                status.state, status.retry_in_s = LoopState.RESTARTING, delay
                status.last_error = type(exc).__name__
                log.error(
                    "loop_crashed", component=self.component, loop=name, error=describe(exc),
                    restart_in_s=delay, restarts=status.restarts, exc_info=True,
                )  # fmt: skip
                await self._sleep(delay)
                if self._stopping:
                    break
                status.restarts += 1
                log.info("loop_restarted", component=self.component, loop=name, restarts=status.restarts)
        status.state, status.retry_in_s = LoopState.DOWN, None

    def stop_restarts(self) -> None:
        """The node is stopping: loops that end now stay down."""
        self._stopping = True

    async def close(self) -> None:
        """Cancel every loop and wait for them."""
        self.stop_restarts()
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for status in self.loops.values():
            status.state = LoopState.DOWN

    # ---------------------------------------------------------------- state

    def _status(self, name: str) -> LoopStatus:
        status = self.loops.get(name)
        if status is None:
            status = self.loops[name] = LoopStatus(name)
        return status

    def healthy(self) -> bool:
        """True while every spawned loop is up."""
        return all(self.loops[n].state == LoopState.UP for n in self.tasks)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: status.as_dict() for name, status in self.loops.items()}


async def wait_task(task: asyncio.Task[Any]) -> None:
    """Wait for a task someone else owns, without cancelling it when the waiter is cancelled;
    re-raise its exception (so a supervisor around the waiter sees the crash)."""
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


class LoopCollector(Collector):
    """Prometheus view of a supervisor: `<prefix>_loop_restarts_total`,
    `<prefix>_loop_event_errors_total` and `<prefix>_loop_up` (1 up, 0 not), by loop."""

    def __init__(self, supervisor: Supervisor, prefix: str) -> None:
        self.supervisor = supervisor
        self.prefix = prefix

    def collect(self) -> Iterable[Metric]:
        p = self.prefix
        restarts = CounterMetricFamily(f"{p}_loop_restarts", "Restarts of a crashed loop", labels=["loop"])
        errors = CounterMetricFamily(
            f"{p}_loop_event_errors", "Events whose handling raised (skipped)", labels=["loop"]
        )
        up = GaugeMetricFamily(f"{p}_loop_up", "1 while the loop runs, 0 otherwise", labels=["loop"])
        for name, status in self.supervisor.loops.items():
            restarts.add_metric([name], status.restarts)
            errors.add_metric([name], status.event_errors)
            up.add_metric([name], 1.0 if status.state == LoopState.UP else 0.0)
        return [restarts, errors, up]


__all__ = ["LoopCollector", "LoopEnded", "LoopState", "LoopStatus", "Supervisor", "describe", "wait_task"]
