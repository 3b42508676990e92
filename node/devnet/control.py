"""Stopping a devnet from another shell, and finding a live one: cheap imports only.

`inferd devnet down` must be quick to start, so nothing here imports web3 or eth-account.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from node.devnet.groups import group_members, pid_alive, stop_group
from node.devnet.layout import Layout, read_json


def lock_pid(layout: Layout) -> int | None:
    """The pid of a live supervisor of this data dir, if any."""
    run = read_json(layout.run_json) or {}
    pid = run.get("pid")
    return pid if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid) else None


def down(layout: Layout, timeout_s: float = 90.0, say: Callable[[str], None] = print) -> bool:
    """Stop a detached devnet: SIGTERM its supervisor, then sweep any part it left. True if clean."""
    run = read_json(layout.run_json)
    if run is None:
        say(f"no devnet is running from {layout.root}")
        return True
    pid = run.get("pid")
    clean = True
    if isinstance(pid, int) and pid_alive(pid):
        say(f"stopping the devnet supervisor (pid {pid})")
        clean = stop_group(pid, None, timeout_s)
    parts = run.get("parts") if isinstance(run.get("parts"), dict) else {}
    for name, part in (parts or {}).items():
        ppid, pgid = part.get("pid"), part.get("pgid")
        if isinstance(ppid, int) and (pid_alive(ppid) or (isinstance(pgid, int) and _group_alive(pgid))):
            say(f"stopping leftover {name} (pid {ppid})")
            clean = stop_group(ppid, pgid if isinstance(pgid, int) else None, 10.0) and clean
    with contextlib.suppress(FileNotFoundError):
        layout.run_json.unlink()
    say("devnet stopped" if clean else "devnet stopped (some parts needed SIGKILL)")
    return clean


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))
