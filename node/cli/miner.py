"""`inferd miner ...`: register (stake), run, status, exit, withdraw.

Mounted by `node.cli.main` as the `miner` group; the root callback's `State` (from `--config`)
reaches these commands through typer's context.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from node.cli.common import fail, settings_from
from node.config import Settings

app = typer.Typer(help="Run and manage a miner (stake, run, status, exit, withdraw).", no_args_is_help=True)
console = Console()


def _configure_logging(settings: Settings) -> None:
    from node.log import configure_logging

    configure_logging(settings.log_level, settings.log_format)


def _hub(settings: Settings) -> Any:
    from node.chain.hub import HubClient
    from node.miner.keys import load_account

    if not settings.chain.hub_address:
        raise fail("chain.hub_address is not set (INFERD_CHAIN__HUB_ADDRESS or [chain] hub_address)", 2)
    account = load_account(settings.chain)
    return HubClient.connect(
        settings.chain.rpc_url, settings.chain.hub_address, "0x" + bytes(account.key).hex()
    )


def _on_hub(settings: Settings, action: Callable[[Any], Awaitable[None]]) -> None:
    """Run `action(hub)` to completion; a ChainError exits 1 with its message."""
    from node.chain.errors import ChainError

    async def go() -> None:
        await action(_hub(settings))

    try:
        asyncio.run(go())
    except ChainError as exc:
        raise fail(str(exc)) from exc


def _eth(wei: int) -> str:
    return f"{wei / 10**18:.6f} ETH"


@app.command("run")
def run(
    ctx: typer.Context,
    fake_engine: Annotated[
        bool, typer.Option("--fake-engine", help="Deterministic fake engine instead of vLLM (dev/tests).")
    ] = False,
    metrics_port: Annotated[int | None, typer.Option(help="Override miner.metrics_port.")] = None,
) -> None:
    """Run the miner daemon until SIGTERM/SIGINT (in-flight work is finished or journaled)."""
    overrides: dict[str, Any] = {}
    if metrics_port is not None:
        overrides["miner"] = {"metrics_port": metrics_port}
    settings = settings_from(ctx, **overrides)
    _configure_logging(settings)
    from node.miner.keys import MinerKeyError
    from node.miner.run import MinerConfigError, run_miner

    try:
        asyncio.run(run_miner(settings, fake_engine=fake_engine))
    except (MinerKeyError, MinerConfigError) as exc:
        raise fail(str(exc), 2) from exc


@app.command("register")
def register(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Model name on the hub (default: engine.model).")] = None,
    stake_eth: Annotated[
        float | None, typer.Option("--stake", help="Stake in ETH (default: the model's minimum).")
    ] = None,
) -> None:
    """Register this key as a miner of a model, staking ETH."""
    settings = settings_from(ctx)
    from node.chain.hub import model_id

    async def go(hub: Any) -> None:
        mid = model_id(model or settings.engine.model)
        info = await hub.get_model(mid)
        stake = int(stake_eth * 10**18) if stake_eth is not None else info.min_stake
        tx = await hub.register_miner(mid, stake)
        console.print(f"registered {hub.sender} for {info.name} with {_eth(stake)} (tx {tx.tx_hash})")

    _on_hub(settings, go)


@app.command("exit")
def exit_(ctx: typer.Context) -> None:
    """Leave the active set now; the stake unlocks after the cooldown (then `withdraw --stake`)."""

    async def go(hub: Any) -> None:
        tx = await hub.request_exit()
        info = await hub.get_miner(hub.sender)
        console.print(f"exit requested (tx {tx.tx_hash}); stake unlocks at block {info.exit_unlock_block}")

    _on_hub(settings_from(ctx), go)


@app.command("withdraw")
def withdraw(
    ctx: typer.Context,
    stake: Annotated[
        bool, typer.Option("--stake", help="Withdraw the stake (after exit + cooldown).")
    ] = False,
) -> None:
    """Withdraw earned fees (default) or, with --stake, the stake after the exit cooldown."""

    async def go(hub: Any) -> None:
        tx = await (hub.withdraw_stake() if stake else hub.withdraw())
        console.print(f"withdrawn (tx {tx.tx_hash})")

    _on_hub(settings_from(ctx), go)


@app.command("status")
def status(
    ctx: typer.Context,
    journal: Annotated[Path | None, typer.Option(help="Journal file (default: the configured one).")] = None,
) -> None:
    """Stake, jobs by state, earnings and the last block seen, as a table."""
    settings = settings_from(ctx)
    from node.chain.errors import ChainError
    from node.miner.journal import JobState, Journal

    async def chain_info() -> dict[str, Any]:
        hub = _hub(settings)
        info = await hub.get_miner(hub.sender)
        return {"address": hub.sender, "info": info, "head": await hub.block_number()}

    try:
        on_chain: dict[str, Any] | None = asyncio.run(chain_info())
    except (ChainError, OSError) as exc:
        console.print(f"[yellow]chain unavailable:[/yellow] {exc}")
        on_chain = None
    path = journal or settings.journal_path()
    table = Table(title="inferd miner", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    if on_chain is not None:
        info = on_chain["info"]
        table.add_row("address", str(on_chain["address"]))
        table.add_row("registered", "yes" if info.model_id else "no")
        table.add_row("active", "yes" if info.active else "no")
        table.add_row("stake", _eth(info.stake))
        table.add_row("earnings (withdrawable)", _eth(info.credits))
        if info.exit_unlock_block:
            table.add_row("exit unlocks at block", str(info.exit_unlock_block))
        table.add_row("chain head", str(on_chain["head"]))
    if path.is_file():
        j = Journal(path)
        counts = j.counts()
        table.add_row("last block seen", str(j.load_cursor()))
        for state in JobState:
            table.add_row(f"jobs {state.value}", str(counts[state]))
        j.close()
    else:
        table.add_row("journal", f"none at {path}")
    console.print(table)


__all__ = ["app"]
