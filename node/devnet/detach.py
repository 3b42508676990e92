"""`inferd devnet up --detach`: the same supervisor, started in the background.

The foreground command is re-run as its own session (output in logs/devnet.log), so it outlives the
shell; this process waits until run.json says that supervisor is ready, prints the banner and
returns, or shows the supervisor's last log lines if it failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from node.devnet.banner import banner
from node.devnet.control import down, lock_pid
from node.devnet.layout import PHASE_READY, Layout, read_json
from node.devnet.options import UpOptions
from node.devnet.progress import Progress


def supervisor_argv(opts: UpOptions, config_file: Path | None) -> list[str]:
    """The foreground `inferd devnet up` command a detached devnet runs in the background."""
    # `python -m node.cli.devnet`: the same interpreter, whether or not `inferd` is on PATH.
    del config_file  # the devnet writes every part's settings itself
    argv = [
        sys.executable,
        "-m",
        "node.cli.devnet",
        "up",
        "--data-dir",
        str(opts.data_dir.resolve()),
        "--miners",
        str(opts.miners),
        "--redundancy",
        str(opts.effective_redundancy),
        "--chain-id",
        str(opts.chain_id),
        "--rpc-port",
        str(opts.rpc_port),
        "--broker-port",
        str(opts.broker_port),
        "--gateway-port",
        str(opts.gateway_port),
        "--model",
        opts.model,
        "--timeout",
        str(opts.ready_timeout_s),
    ]
    if opts.block_time is not None:
        argv += ["--block-time", str(opts.block_time)]
    if opts.chain_only:
        argv.append("--chain-only")
    if opts.fake_engine:
        argv.append("--fake-engine")
    return argv


def up_detached(opts: UpOptions, config_file: Path | None, say: Callable[[str], None] = print) -> int:
    """Start a background supervisor; return 0 once it reports ready, 1 if it fails."""
    opts.validate()
    layout = Layout(opts.data_dir.resolve())
    other = lock_pid(layout)
    if other is not None:
        say(f"a devnet is already running from {layout.root} (pid {other})")
        return 1
    if layout.run_json.exists():  # a supervisor that was killed: sweep what it left
        down(layout, 15.0, say)
    if opts.fresh and layout.root.exists():
        shutil.rmtree(layout.root)
    layout.logs.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.root, 0o700)
    with layout.supervisor_log.open("ab") as log:
        proc = subprocess.Popen(
            supervisor_argv(opts, config_file),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives this shell; `inferd devnet down` stops it
        )
    say(
        f"devnet supervisor started (pid {proc.pid}); waiting until every part is healthy "
        f"(progress in {layout.supervisor_log})"
    )
    started = time.monotonic()
    deadline = started + opts.ready_timeout_s + 60
    progress = Progress()
    while time.monotonic() < deadline:
        run = read_json(layout.run_json) or {}
        if run.get("pid") == proc.pid and run.get("phase") == PHASE_READY:
            info = read_json(layout.devnet_json) or {}
            if info.get("pid") == proc.pid:
                progress.clear()
                say(banner(info))
                say(
                    f"detached: `inferd devnet status --data-dir {layout.root}` shows its health, "
                    f"`inferd devnet down --data-dir {layout.root}` stops it"
                )
                return 0
        if proc.poll() is not None:
            progress.clear()
            say(
                f"the devnet failed to start (exit {proc.returncode}); last lines of {layout.supervisor_log}:"
            )
            say("\n".join(layout.supervisor_log.read_text(errors="replace").splitlines()[-30:]))
            return 1
        progress.update(
            f"waiting    for the devnet supervisor ({run.get('phase') or 'starting'})  "
            f"{time.monotonic() - started:.0f} s"
        )
        time.sleep(0.5)
    progress.clear()
    say("the devnet did not become healthy in time; stopping it")
    down(layout)
    return 1


__all__ = ["supervisor_argv", "up_detached"]
