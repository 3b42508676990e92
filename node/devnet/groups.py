"""Process-group bookkeeping so a devnet never leaves a process behind.

Every part runs in its own session (its own process group), so Ctrl-C in the terminal reaches
only the supervisor, which then stops the parts in order. vLLM spawns worker processes of its
own; they share the miner's group, so stopping a part means: SIGTERM the leader (graceful
shutdown), then SIGTERM and finally SIGKILL whatever is left in its group. Liveness is read from
/proc, where a zombie counts as gone (it is only waiting to be reaped).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, pgid) of a pid from /proc/<pid>/stat, or None if there is no such process."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name is in parentheses and may hold spaces: parse after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[2])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie or a missing pid is not alive)."""
    stat = _stat(pid)
    if stat is not None:
        return stat[0] not in ("Z", "X")
    if not PROC.is_dir():  # not Linux: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return False


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid`."""
    members: list[int] = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _wait(predicate_alive: list[int], pgids: list[int], timeout_s: float) -> bool:
    """Wait until none of the pids and none of the groups has a live process; True if so."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not any(pid_alive(p) for p in predicate_alive) and not any(group_members(g) for g in pgids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(
    pid: int,
    pgid: int | None,
    term_timeout_s: float = 30.0,
    proc: subprocess.Popen[Any] | None = None,
) -> bool:
    """Stop a part: SIGTERM its leader, then its group, then SIGKILL the group. True if clean.

    `proc` (when we are the parent) is reaped so the leader does not linger as a zombie.
    """
    groups = [pgid] if pgid else []
    clean = True
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        if proc is not None:
            try:
                proc.wait(term_timeout_s)
            except subprocess.TimeoutExpired:
                clean = False
        elif not _wait([pid], [], term_timeout_s):
            clean = False
    # The leader is gone (or would not go): take down what it left in its group.
    for g in groups:
        if group_members(g):
            _killpg(g, signal.SIGTERM)
    if not _wait([pid], groups, 5.0):
        clean = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        for g in groups:
            _killpg(g, signal.SIGKILL)
        _wait([pid], groups, 5.0)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
    return clean
