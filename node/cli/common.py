"""What every `inferd` sub-command group shares: the root `State`, settings loading, errors,
ETH amounts and the confirmation asked before funds move.

`node.cli.main`'s root callback puts a `State` (from `--config` / `INFERD_CONFIG`) on typer's
context; the groups read their settings through `settings_from`, which also works when a group's
app runs on its own (tests, `python -m node.cli.devnet`).

Amounts of ETH are typed by people and become wei on chain, so they are parsed exactly
(`parse_eth`: decimal text, never a float) and anything ambiguous is refused rather than guessed.
A command that moves funds asks first (`confirm_funds`); without a terminal to ask on it refuses
unless `--yes` was given, so a script can never move money by accident.
"""

from __future__ import annotations

import os
import re
import sys
from decimal import Decimal, localcontext
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


WEI_PER_ETH = 10**18
ETH_DECIMALS = 18
_ETH_TEXT = re.compile(r"(?P<whole>[0-9]+)(?:\.(?P<frac>[0-9]+))?")
_EXPONENT = re.compile(r"\+?[0-9]*\.?[0-9]*[eE][+-]?[0-9]+")


class AmountError(ValueError):
    """Text that is not an amount of ETH this CLI accepts; the message says what to type instead."""


def parse_eth(text: str) -> int:
    """Wei in `text`, a decimal amount of ETH: `1`, `1.5`, `0.000000000000000001`.

    Exact (Decimal, no float). Refused: a sign (negatives; `+` too), NaN and infinities, exponent
    forms (`1e18`: ETH or wei?), underscores, thousands separators, more than 18 decimals (below
    one wei) and a bare `.5` or `5.` (write `0.5`, `5`). An `AmountError` is a `ValueError`, so
    `typer.Argument(parser=parse_eth)` turns it into a usage error (exit 2) with this message.
    """
    raw = text.strip()
    if not raw:
        raise AmountError("an amount of ETH is required, e.g. 1.5")
    if raw.startswith("-"):
        raise AmountError(f"{text!r}: an amount cannot be negative")
    if raw.lower().lstrip("+") in ("nan", "snan", "inf", "infinity"):
        raise AmountError(f"{text!r} is not a finite amount of ETH")
    if _EXPONENT.fullmatch(raw):
        raise AmountError(
            f"{text!r}: exponent forms are ambiguous (ETH or wei?); write the amount in ETH as a "
            "plain decimal, e.g. 0.000000000000000001"
        )
    match = _ETH_TEXT.fullmatch(raw)
    if match is None:
        raise AmountError(f"{text!r} is not an amount of ETH; write a plain decimal such as 1.5 or 0.25")
    frac = match["frac"] or ""
    if len(frac) > ETH_DECIMALS:
        raise AmountError(
            f"{text!r} has {len(frac)} decimals; ETH has {ETH_DECIMALS} (1 wei = 0.000000000000000001)"
        )
    with localcontext() as ctx:
        ctx.prec = len(match["whole"]) + ETH_DECIMALS + 2  # exact: never rounds
        wei = Decimal(raw) * WEI_PER_ETH
    if wei != wei.to_integral_value():  # unreachable with <= 18 decimals; kept as the invariant
        raise AmountError(f"{text!r} is not a whole number of wei")
    return int(wei)


def format_eth(wei: int) -> str:
    """`wei` as exact decimal ETH text without trailing zeros: 1500000000000000000 -> `1.5`."""
    sign = "-" if wei < 0 else ""
    whole, frac = divmod(abs(wei), WEI_PER_ETH)
    text = f"{whole}.{frac:018d}".rstrip("0").rstrip(".")
    return sign + text


def stdin_interactive() -> bool:
    """Whether a person can answer a prompt (stdin is a terminal)."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def confirm_funds(summary: str, *, yes: bool) -> None:
    """Ask before `summary` happens (a transaction that moves funds); return only on yes.

    `--yes` skips the question. Without it, a stdin that is not a terminal (a script, a pipe, CI)
    is refused (exit 2) rather than read; answering no aborts with exit 1 and nothing sent.
    """
    if yes:
        return
    if not stdin_interactive():
        raise fail(
            f"refusing to {summary} without confirmation: stdin is not a terminal. "
            "Pass --yes to confirm from a script.",
            2,
        )
    if not typer.confirm(f"{summary[0].upper()}{summary[1:]}?", default=False, err=True):
        err_console.print("aborted: nothing was sent")
        raise typer.Exit(1)


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


__all__ = [
    "ETH_DECIMALS",
    "WEI_PER_ETH",
    "AmountError",
    "State",
    "confirm_funds",
    "err_console",
    "fail",
    "format_eth",
    "machine_stdout",
    "parse_eth",
    "root_state",
    "settings_from",
    "stdin_interactive",
]
