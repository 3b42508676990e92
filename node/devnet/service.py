"""An inferd part (miner, gateway) run as a child process with its own settings file and log.

Unlike `processes.ManagedProcess.start`, launching does not block: the devnet starts every part
first and then waits for all of them, so the miners load their engines in parallel.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from node.devnet.groups import stop_group


def inferd_command() -> list[str]:
    """How to run `inferd` for the parts: `$INFERD_DEVNET_INFERD` (a command line, e.g. a wrapper
    under development), else the console script beside this interpreter, else `python -m`."""
    override = os.environ.get("INFERD_DEVNET_INFERD")
    if override:
        return shlex.split(override)
    script = Path(sys.executable).parent / "inferd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "node.cli.main"]


def child_env(drop: set[str]) -> dict[str, str]:
    """This process's environment minus the INFERD_* variables that would override the settings
    file the devnet wrote (env beats file in `load_settings`); other INFERD_* pass through."""
    dropped = {name.upper() for name in drop} | {"INFERD_CONFIG"}
    return {k: v for k, v in os.environ.items() if k.upper() not in dropped}


def env_names(settings: dict[str, object], prefix: str = "INFERD_") -> set[str]:
    """The env variable names (`INFERD_CHAIN__RPC_URL`, ...) of every leaf in a settings dict."""
    names: set[str] = set()
    for key, value in settings.items():
        name = f"{prefix}{key.upper()}"
        if isinstance(value, dict):
            names |= env_names(value, name + "__")
        else:
            names.add(name)
    return names


@dataclass
class Service:
    """One child process: argv, env, a log file, and an HTTP health URL (200 = healthy)."""

    name: str
    argv: list[str]
    log_path: Path
    health_url: str | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # own process group: Ctrl-C reaches only the supervisor
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> int | None:
        """The exit code if the process has ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        if self.health_url is None:
            return True
        try:
            return httpx.get(self.health_url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout_s: float = 30.0) -> bool:
        if self.proc is None:
            return True
        return stop_group(self.proc.pid, self.proc.pid, timeout_s, proc=self.proc)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
