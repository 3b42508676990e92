"""What every `inferd` sub-command group shares: the root `State`, settings loading, errors.

`node.cli.main`'s root callback puts a `State` (from `--config` / `INFERD_CONFIG`) on typer's
context; the groups read their settings through `settings_from`, which also works when a group's
app runs on its own (tests, `python -m node.cli.devnet`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

import typer
from rich.console import Console

from node.config import ConfigFileError, Settings, load_settings

err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr; return the `typer.Exit(code)` for the caller to raise."""
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def machine_stdout() -> TextIO:
    """Reserve stdout for one machine-readable document (`--json`); everything else goes to stderr.

    vLLM logs to `sys.stdout` and its engine-core subprocess inherits file descriptor 1, so swapping
    `sys.stdout` is not enough: fd 1 itself is pointed at stderr for the rest of the process (child
    processes and atexit-time logging included), and the returned stream writes to the real stdout.
    """
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(real, "w", encoding="utf-8")


class State:
    """What the root callback parsed, shared with sub-commands through typer's context."""

    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file

    def settings(self, **overrides: Any) -> Settings:
        try:
            return load_settings(self.config_file, **overrides)
        except ConfigFileError as exc:
            raise fail(str(exc), 2) from exc


def root_state(ctx: typer.Context) -> State | None:
    """The root callback's State, or None when a group's app runs on its own."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, State) else None


def settings_from(ctx: typer.Context, **overrides: Any) -> Settings:
    """Settings for a command: the root State's, else `INFERD_CONFIG`'s file, else the defaults.

    `overrides` (nested dicts, e.g. `chain={"rpc_url": ...}`) win over env and the file. A missing
    config file exits 2.
    """
    state = root_state(ctx)
    if state is None:
        env = os.environ.get("INFERD_CONFIG")
        state = State(Path(env) if env else None)
    return state.settings(**overrides)


__all__ = ["State", "err_console", "fail", "machine_stdout", "root_state", "settings_from"]
