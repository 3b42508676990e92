"""`node.engine.cores`: a process tree shaped like a CPU miner's (a host process, an engine core, a
worker bound by vLLM to cores of its own), real processes and real affinities; the host's threads
move off the worker's cores, the worker stays where vLLM put it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.engine.cores import WORKER_TITLE, engine_cpus, keep_off, keep_tree_off_engine, process_tree

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity (Linux) and at least 2 usable cores",
)

# A host that starts an engine-core-like child, which starts a worker titled as vLLM titles its
# workers and bound to the first usable core; the host also runs a second thread. Each prints its
# pid once ready, then all sleep until killed.
TREE = r"""
import os, subprocess, sys, threading, time
level = sys.argv[1]
if level == "host":
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    core = subprocess.Popen([sys.executable, "-c", sys.argv[2], "core", *sys.argv[2:]])
elif level == "core":
    worker = subprocess.Popen([sys.executable, "-c", sys.argv[2], "worker", *sys.argv[2:]])
else:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with open("/proc/self/comm", "w") as f:
        f.write(sys.argv[3])
print(level, os.getpid(), flush=True)
time.sleep(600)
"""


@pytest.fixture
def tree() -> Iterator[dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", TREE, "host", TREE, WORKER_TITLE],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pids: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        while len(pids) < 3:
            line = proc.stdout.readline()
            assert line, "the process tree did not start"
            level, pid = line.split()
            pids[level] = int(pid)
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{pids['worker']}/comm").read_text().startswith(WORKER_TITLE):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield pids
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def threads_cores(pid: int) -> list[frozenset[int]]:
    return [frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")]


def test_the_host_moves_off_the_workers_core_and_the_worker_stays(tree: dict[str, int]) -> None:
    usable = frozenset(os.sched_getaffinity(0))
    first = frozenset({min(usable)})
    assert set(process_tree(tree["host"])) >= set(tree.values())
    assert engine_cpus(tree["host"]) == first

    cpus, moved = keep_tree_off_engine(tree["host"])

    assert cpus == first
    host_threads = threads_cores(tree["host"])
    assert len(host_threads) >= 2  # the host's second thread moved too, not only its main thread
    assert moved == len(host_threads) + len(threads_cores(tree["core"]))
    for pid in (tree["host"], tree["core"]):
        assert all(cores == usable - first for cores in threads_cores(pid))
    assert frozenset(os.sched_getaffinity(tree["worker"])) == first
    # read from the worker, so the devnet finds the same cores after the miner moved itself
    assert engine_cpus(tree["host"]) == first
    assert keep_tree_off_engine(tree["host"]) == (first, 0)  # nothing left to move


def test_no_worker_no_move_and_never_onto_no_core(tree: dict[str, int]) -> None:
    usable = frozenset(os.sched_getaffinity(0))
    assert engine_cpus(tree["worker"]) == frozenset()  # below the worker: no worker
    assert keep_tree_off_engine(tree["worker"]) == (frozenset(), 0)
    # a thread whose every core is an engine core stays as it is
    assert keep_off([tree["worker"]], frozenset(os.sched_getaffinity(tree["worker"]))) == 0
    assert keep_off([tree["core"]], frozenset()) == 0
    assert all(cores == usable for cores in threads_cores(tree["core"]))
