"""Keeping a devnet's parts up: notice a dead miner, gateway or broker, restart it after a backoff.

The backoff doubles per recent crash, capped; a part that crashes more than `max_restarts` times
within `window_s` is given up, said so, and the rest of the devnet keeps running. `RestartTracker`
is the pure bookkeeping (the caller passes the clock); `Watchdog` applies it to the real processes,
one check per tick of the supervisor's watch loop. anvil is not watched here: a restarted anvil would
resume from state saved seconds earlier, behind every part (see `node.devnet.up`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.devnet.processes import Mosquitto, StartupTimeout
from node.devnet.service import Service


def describe_exit(code: int | None) -> str:
    """`code 1`, `signal SIGKILL` (Popen gives -N for a death by signal N), or `running`."""
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass(frozen=True)
class RestartPolicy:
    """When the devnet restarts a part that died: after `backoff_s`, doubling per recent crash up to
    `max_backoff_s`; a part that crashed more than `max_restarts` times within `window_s` is given up."""

    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    window_s: float = 60.0
    max_restarts: int = 5


RUNNING, RESTARTING, GAVE_UP = "running", "restarting", "gave-up"


@dataclass
class RestartTracker:
    """The restart history of one part; pure bookkeeping (the caller passes the clock)."""

    name: str
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    restarts: int = 0
    last_exit: int | None = None
    state: str = RUNNING
    restart_at: float | None = None
    crashes: list[float] = field(default_factory=list)

    def crashed(self, code: int | None, now: float) -> float | None:
        """Record a death; the delay before the restart, or None when the part is given up."""
        self.last_exit = code
        self.crashes = [t for t in self.crashes if now - t < self.policy.window_s] + [now]
        if len(self.crashes) > self.policy.max_restarts:
            self.state, self.restart_at = GAVE_UP, None
            return None
        delay = min(self.policy.backoff_s * 2.0 ** (len(self.crashes) - 1), self.policy.max_backoff_s)
        self.state, self.restart_at = RESTARTING, now + delay
        return delay

    def due(self, now: float) -> bool:
        return self.state == RESTARTING and self.restart_at is not None and now >= self.restart_at

    def restarted(self) -> None:
        self.restarts += 1
        self.state, self.restart_at = RUNNING, None

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": None if self.last_exit is None else describe_exit(self.last_exit),
        }


class Watchdog:
    """Restarts the devnet's dead parts; `restarts` holds each part's history (for run.json)."""

    def __init__(self, say: Callable[[str], None], policy: RestartPolicy | None = None) -> None:
        self.say = say
        self.policy = policy or RestartPolicy()
        self.restarts: dict[str, RestartTracker] = {}

    def tracker(self, name: str) -> RestartTracker:
        if name not in self.restarts:
            self.restarts[name] = RestartTracker(name, self.policy)
        return self.restarts[name]

    def check_service(self, svc: Service) -> bool:
        """Notice a dead miner or gateway, restart it when its backoff is over; True if anything changed."""
        tracker = self.tracker(svc.name)
        if tracker.state == GAVE_UP:
            return False
        if tracker.state != RESTARTING:
            code = svc.exited()
            if code is None:
                return False
            self._crashed(svc.name, code, svc.log_path, svc.log_tail())
            return True
        if not tracker.due(time.monotonic()):
            return False
        svc.stop(5.0)  # sweep what the dead process left in its group (vLLM workers)
        svc.launch()
        tracker.restarted()
        self.say(f"restarted  {svc.name} (pid {svc.pid}, restart {tracker.restarts})")
        return True

    def check_broker(self, broker: Mosquitto) -> bool:
        """mosquitto keeps nothing (no persistence): restart it like a service; clients reconnect."""
        tracker = self.tracker(broker.name)
        if tracker.state == GAVE_UP:
            return False
        if tracker.state != RESTARTING:
            if broker.running:
                return False
            code = broker.proc.returncode if broker.proc is not None else None
            self._crashed(broker.name, code, broker.log_path, "")
            return True
        if not tracker.due(time.monotonic()):
            return False
        try:
            broker.start(timeout_s=30.0)
        except StartupTimeout as exc:
            self.say(f"mosquitto did not come back: {exc}")
            tracker.restarted()
            self._crashed(broker.name, broker.proc.returncode if broker.proc else None, broker.log_path, "")
            return True
        tracker.restarted()
        self.say(f"restarted  {broker.name} (pid {broker.proc.pid if broker.proc else '?'})")
        return True

    def _crashed(self, name: str, code: int | None, log_path: Path, tail: str) -> None:
        tracker = self.tracker(name)
        delay = tracker.crashed(code, time.monotonic())
        what = f"{name} exited ({describe_exit(code)})"
        if delay is None:
            self.say(
                f"{what}; giving up on it: more than {self.policy.max_restarts} restarts in "
                f"{self.policy.window_s:.0f} s. The rest of the devnet keeps running; see {log_path}"
            )
        else:
            self.say(f"{what}; restarting it in {delay:.0f} s (restart {tracker.restarts + 1})")
        if tail:
            self.say(f"last lines of {log_path}:\n{tail}")


__all__ = [
    "GAVE_UP",
    "RESTARTING",
    "RUNNING",
    "RestartPolicy",
    "RestartTracker",
    "Watchdog",
    "describe_exit",
]
