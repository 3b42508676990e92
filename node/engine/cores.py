"""Keep the host's own work off the cores that vLLM's CPU workers compute on.

vLLM on CPUs binds each worker's OpenMP threads to cores of their own (`VLLM_CPU_OMP_THREADS_BIND`,
`auto` by default) and keeps the rest (at least one core) for its engine-core process, the
scheduler that spins between steps (yielding the core to anyone who wants it). It binds nothing
else: the miner's own event loop (chain follower, signing, journal, uploads, MQTT), and on a devnet
the gateway, anvil and the broker, run wherever the kernel puts them, so about half of that work
lands on the worker's core and preempts the thread that every forward pass waits on. On a 2-core
machine (one worker core) that cost the gateway 9-12 % of the engine's throughput at concurrency 16;
moved to the left-over core it shares that core with the scheduler's spin instead (measured:
`tests/bench/gateway.py`, and the A/B in the closing note of issue 14).

So once a CPU engine is up, the miner moves its own threads and its engine-core process off the
workers' cores (`keep_tree_off_engine`), and the devnet does the same for the services it runs
(`keep_off`). Nothing moves when vLLM bound no worker (a GPU engine, `VLLM_CPU_OMP_THREADS_BIND=
nobind`), when no core is left over, or where the platform has no CPU affinity (not Linux). A core
set by the operator (`taskset`, a cgroup's cpuset) is respected: only cores the process may already
use are kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")


def _affinity(pid: int) -> frozenset[int] | None:
    try:
        return frozenset(os.sched_getaffinity(pid))
    except (OSError, AttributeError):  # gone, not ours to read, or no affinity on this platform
        return None


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process visible in /proc."""
    kids: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and ")"
        if len(fields) > 1 and fields[1].isdigit():
            kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (pids; those that exit meanwhile are simply absent)."""
    if not PROC.is_dir():
        return [root]
    kids = _children()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, ()))
    return tree


WORKER_TITLE = "VLLM::Worker"
"""How vLLM titles its worker processes (`VLLM::Worker`, `VLLM::Worker_TP0`, ...)."""


def is_worker(pid: int) -> bool:
    """Whether `pid` is one of vLLM's worker processes (by the title vLLM gives them)."""
    try:
        return (PROC / str(pid) / "comm").read_text().startswith(WORKER_TITLE)
    except OSError:
        return False


def engine_cpus(root: int | None = None) -> frozenset[int]:
    """The cores vLLM's workers below process `root` (default: this one) may run on; empty: none.

    Read from the workers themselves, so it holds before and after the rest of the tree moved.
    """
    root = os.getpid() if root is None else root
    bound: set[int] = set()
    for pid in process_tree(root)[1:]:
        cores = _affinity(pid) if is_worker(pid) else None
        if cores is not None:
            bound |= cores
    return frozenset(bound)


def keep_off(pids: Iterable[int], cpus: frozenset[int]) -> int:
    """Move every thread of `pids` off `cpus` (a thread left with no core stays as it is).

    Returns how many threads moved. Threads a process starts later inherit their creator's cores.
    """
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return 0
    moved = 0
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(PROC / str(pid) / "task")]
        except OSError:
            continue
        for tid in tids:
            cores = _affinity(tid)
            if cores is None or not cores & cpus or not cores - cpus:
                continue
            try:
                os.sched_setaffinity(tid, cores - cpus)
            except OSError:  # exited meanwhile, or not ours
                continue
            moved += 1
    return moved


def keep_tree_off_engine(root: int | None = None) -> tuple[frozenset[int], int]:
    """Move `root` (default: this process) and its descendants other than vLLM's CPU workers off
    the workers' cores; (those cores, threads moved). Call it once the engine has started."""
    root = os.getpid() if root is None else root
    cpus = engine_cpus(root)
    if not cpus:
        return cpus, 0
    rest = [pid for pid in process_tree(root) if not is_worker(pid)]
    return cpus, keep_off(rest, cpus)


__all__ = ["WORKER_TITLE", "engine_cpus", "is_worker", "keep_off", "keep_tree_off_engine", "process_tree"]
