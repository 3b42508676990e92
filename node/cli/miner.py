"""`inferd miner ...`: register (stake), add-stake, run, status, exit, withdraw.

Mounted by `node.cli.main` as the `miner` group; the root callback's `State` (from `--config`)
reaches these commands through typer's context.

The whole lifecycle is here: `register` → `run` → `status` → `add-stake` (after a slash) →
`withdraw` (fees) → `exit` → `withdraw --stake`. Every command that moves funds shows what it is
about to send (amount, key, hub) and asks first; `--yes` answers for scripts, and without a
terminal and without `--yes` it refuses (`node.cli.common.confirm_funds`). Amounts are exact
decimal ETH (`node.cli.common.parse_eth`). `status --json` prints one JSON document (wei as
decimal strings: they do not fit a JavaScript number) and exits 1 when the chain is unreachable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.table import Table

from node.cli.common import confirm_funds, fail, format_eth, parse_eth, settings_from
from node.config import Settings

app = typer.Typer(
    help="Run and manage a miner (register, add-stake, run, status, exit, withdraw).", no_args_is_help=True
)
console = Console()
Yes = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (required without a terminal).")
]


def _configure_logging(settings: Settings) -> None:
    from node.log import configure_logging

    configure_logging(settings.log_level, settings.log_format)


def _hub(settings: Settings) -> Any:
    from node.chain.hub import HubClient
    from node.miner.keys import MinerKeyError, load_account

    if not settings.chain.hub_address:
        raise fail("chain.hub_address is not set (INFERD_CHAIN__HUB_ADDRESS or [chain] hub_address)", 2)
    try:
        account = load_account(settings.chain)
    except MinerKeyError as exc:
        raise fail(str(exc), 2) from exc
    return HubClient.connect(
        settings.chain.rpc_url, settings.chain.hub_address, "0x" + bytes(account.key).hex()
    )


def rpc_host(url: str) -> str:
    """`scheme://host:port` of an RPC URL: paths and queries often carry an API key, never shown."""
    parts = urlsplit(url)
    return (
        f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        if parts.hostname
        else "?"
    )


def _on_hub(settings: Settings, action: Callable[[Any], Awaitable[None]]) -> None:
    """Run `action(hub)` to completion; a ChainError or an unreachable RPC exits 1 with a message."""
    from node.chain.errors import ChainError

    hub = _hub(settings)

    async def go() -> None:
        await action(hub)

    try:
        asyncio.run(go())
    except ChainError as exc:
        raise fail(str(exc)) from exc
    except OSError as exc:
        raise fail(f"chain unreachable at {rpc_host(settings.chain.rpc_url)}: {exc}") from exc


def _eth(wei: int) -> str:
    return f"{format_eth(wei)} ETH"


def _funds(what: str, hub: Any, settings: Settings) -> str:
    """The confirmation line: what moves, from which key, on which hub and RPC."""
    return f"{what} (key {hub.sender}, hub {hub.address} at {rpc_host(settings.chain.rpc_url)})"


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
    stake_wei: Annotated[
        int | None,
        typer.Option(
            "--stake",
            parser=parse_eth,
            metavar="ETH",
            help="Stake in ETH, e.g. 1.5 (default: the model's minimum).",
        ),
    ] = None,
    engine_class_hex: Annotated[
        str | None,
        typer.Option(
            "--engine-class",
            metavar="0xID",
            help="bytes32 engine class this miner runs (default: this machine's, as `inferd model class`).",
        ),
    ] = None,
    yes: Yes = False,
) -> None:
    """Register this key as a miner of a model, staking ETH (asks first).

    The hub refuses an engine class other than the model's (EngineClassMismatch): miners of one
    model must produce the same bytes.
    """
    settings = settings_from(ctx)
    from node.chain.hub import model_id, to_digest

    if engine_class_hex is not None:
        try:
            engine_class = to_digest(engine_class_hex)
        except ValueError as exc:
            raise fail(f"--engine-class: {exc}", 2) from exc
    else:
        from node.engine.engine import EngineError, resolve_model_path
        from node.engine.engine_args import VllmArgsError
        from node.engine.engine_class import EngineClassError
        from node.engine.engine_class import engine_class as compute_class

        try:
            engine_class = compute_class(settings.engine, resolve_model_path(settings.engine)).id
        except (EngineError, EngineClassError, VllmArgsError) as exc:
            raise fail(f"{exc} (or pass --engine-class)", 1) from exc

    async def go(hub: Any) -> None:
        mid = model_id(model or settings.engine.model)
        info = await hub.get_model(mid)
        stake = stake_wei if stake_wei is not None else info.min_stake
        if stake < info.min_stake:
            raise fail(
                f"a stake of {_eth(stake)} is below {info.name}'s minimum of {_eth(info.min_stake)}", 2
            )
        confirm_funds(_funds(f"register for {info.name}, staking {_eth(stake)}", hub, settings), yes=yes)
        tx = await hub.register_miner(mid, engine_class, stake)
        console.print(f"registered {hub.sender} for {info.name} with {_eth(stake)} (tx {tx.tx_hash})")

    _on_hub(settings, go)


@app.command("add-stake")
def add_stake(
    ctx: typer.Context,
    amount: Annotated[
        int, typer.Argument(parser=parse_eth, metavar="ETH", help="ETH to add, e.g. 0.5 (exact decimal).")
    ],
    yes: Yes = False,
) -> None:
    """Add ETH to this miner's stake (asks first); back above the minimum, a slashed miner is active again."""
    settings = settings_from(ctx)
    if amount <= 0:
        raise fail("the amount to add must be more than 0", 2)

    async def go(hub: Any) -> None:
        before = await hub.get_miner(hub.sender)
        if before.model_id is None:
            raise fail(f"{hub.sender} is not registered: `inferd miner register --stake AMOUNT` first", 2)
        confirm_funds(
            _funds(f"add {_eth(amount)} to the stake of {_eth(before.stake)}", hub, settings), yes=yes
        )
        tx = await hub.add_stake(amount)
        after = await hub.get_miner(hub.sender)
        console.print(
            f"stake {_eth(after.stake)} (+{_eth(amount)}), {'active' if after.active else 'NOT active'} "
            f"(tx {tx.tx_hash})"
        )

    _on_hub(settings, go)


@app.command("exit")
def exit_(ctx: typer.Context, yes: Yes = False) -> None:
    """Leave the active set now; the stake unlocks after the cooldown (then `withdraw --stake`)."""
    settings = settings_from(ctx)

    async def go(hub: Any) -> None:
        before = await hub.get_miner(hub.sender)
        confirm_funds(
            _funds(
                f"leave the active set (stake {_eth(before.stake)} locked until the cooldown ends)",
                hub,
                settings,
            ),
            yes=yes,
        )
        tx = await hub.request_exit()
        info = await hub.get_miner(hub.sender)
        console.print(f"exit requested (tx {tx.tx_hash}); stake unlocks at block {info.exit_unlock_block}")

    _on_hub(settings, go)


@app.command("withdraw")
def withdraw(
    ctx: typer.Context,
    stake: Annotated[
        bool, typer.Option("--stake", help="Withdraw the stake (after exit + cooldown).")
    ] = False,
    yes: Yes = False,
) -> None:
    """Withdraw earned fees (default) or, with --stake, the stake after the exit cooldown (asks first)."""
    settings = settings_from(ctx)

    async def go(hub: Any) -> None:
        info = await hub.get_miner(hub.sender)
        what = (
            f"withdraw the stake of {_eth(info.stake)}"
            if stake
            else f"withdraw {_eth(info.credits)} of credits"
        )
        confirm_funds(_funds(what, hub, settings), yes=yes)
        tx = await (hub.withdraw_stake() if stake else hub.withdraw())
        console.print(f"withdrawn (tx {tx.tx_hash})")

    _on_hub(settings, go)


def _wei(value: int) -> dict[str, str]:
    """A JSON amount: exact wei and exact ETH, both as strings (wei overflow JavaScript numbers)."""
    return {"wei": str(value), "eth": format_eth(value)}


async def chain_status(hub: Any) -> dict[str, Any]:
    """What the chain says about this miner: key balance, hub row, head (raises when unreachable)."""
    info = await hub.get_miner(hub.sender)
    return {
        "address": str(hub.sender),
        "hub": str(hub.address),
        "chain_id": int(await hub.w3.eth.chain_id),
        "head": await hub.block_number(),
        "wallet": _wei(int(await hub.w3.eth.get_balance(hub.sender))),
        "registered": info.model_id is not None,
        "model_id": "0x" + info.model_id.hex() if info.model_id is not None else None,
        "active": bool(info.active),
        "stake": _wei(int(info.stake)),
        "credits": _wei(int(info.credits)),
        "exit_unlock_block": int(getattr(info, "exit_unlock_block", 0)) or None,
    }


def journal_status(path: Path) -> dict[str, Any] | None:
    """The local journal's view (last block scanned, jobs by state), None when there is none."""
    from node.miner.journal import JobState, Journal

    if not path.is_file():
        return None
    j = Journal(path)
    try:
        counts = j.counts()
        return {
            "path": str(path),
            "last_block": j.load_cursor(),
            "jobs": {state.value: int(counts[state]) for state in JobState},
        }
    finally:
        j.close()


@app.command("status")
def status(
    ctx: typer.Context,
    journal: Annotated[Path | None, typer.Option(help="Journal file (default: the configured one).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document on stdout (exit 1 if the chain is unreachable).")
    ] = False,
) -> None:
    """Wallet, stake, earnings, chain head and jobs by state, as a table (or JSON); with
    `[[miner.models]]`, one per entry (JSON: `{"models": {name: {"chain", "journal"}}}`)."""
    settings = settings_from(ctx)
    if settings.miner.models:
        _models_status(settings, as_json)
        return
    from node.chain.errors import ChainError

    hub = _hub(settings)
    chain_error: str | None = None
    try:
        on_chain: dict[str, Any] | None = asyncio.run(chain_status(hub))
    except (ChainError, OSError, TimeoutError) as exc:
        chain_error = f"chain unreachable at {rpc_host(settings.chain.rpc_url)}: {type(exc).__name__}: {exc}"
        on_chain = None
    jobs = journal_status(journal or settings.journal_path())
    if as_json:
        if on_chain is None:
            raise fail(f"{chain_error} (nothing printed on stdout)")
        typer.echo(json.dumps({"chain": on_chain, "journal": jobs}, indent=2, sort_keys=True))
        return
    if chain_error is not None:
        console.print(f"[yellow]{chain_error}[/yellow]")
    table = Table(title="inferd miner", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    if on_chain is not None:
        table.add_row("address", on_chain["address"])
        table.add_row("wallet", f"{on_chain['wallet']['eth']} ETH")
        table.add_row("registered", "yes" if on_chain["registered"] else "no")
        table.add_row("active", "yes" if on_chain["active"] else "no")
        table.add_row("stake", f"{on_chain['stake']['eth']} ETH")
        table.add_row("earnings (withdrawable)", f"{on_chain['credits']['eth']} ETH")
        if on_chain["exit_unlock_block"]:
            table.add_row("exit unlocks at block", str(on_chain["exit_unlock_block"]))
        table.add_row("chain head", str(on_chain["head"]))
    if jobs is not None:
        table.add_row("last block seen", str(jobs["last_block"]))
        for state, n in jobs["jobs"].items():
            table.add_row(f"jobs {state}", str(n))
    else:
        table.add_row("journal", f"none at {journal or settings.journal_path()}")
    console.print(table)


def _models_status(settings: Settings, as_json: bool) -> None:
    """`status` for several models on one box: each entry's key, stake and journal."""
    from node.chain.errors import ChainError
    from node.config import ConfigFileError, per_model_settings

    try:
        entries = per_model_settings(settings)
    except ConfigFileError as exc:
        raise fail(str(exc), 2) from exc
    out: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for name, entry in entries.items():
        try:
            on_chain: dict[str, Any] | None = asyncio.run(chain_status(_hub(entry)))
        except (ChainError, OSError, TimeoutError) as exc:
            errors.append(
                f"{name}: chain unreachable at {rpc_host(entry.chain.rpc_url)}: {type(exc).__name__}"
            )
            on_chain = None
        out[name] = {"chain": on_chain, "journal": journal_status(entry.journal_path())}
    if as_json:
        if errors:
            raise fail(f"{'; '.join(errors)} (nothing printed on stdout)")
        typer.echo(json.dumps({"models": out}, indent=2, sort_keys=True))
        return
    for error in errors:
        console.print(f"[yellow]{error}[/yellow]")
    table = Table(title="inferd miner (several models)")
    for column in ("model", "address", "registered", "active", "stake", "earnings", "last block", "jobs"):
        table.add_column(column)
    for name, row in out.items():
        chain, jobs = row["chain"], row["journal"]
        done = {k: v for k, v in jobs["jobs"].items() if v} if jobs is not None else None
        table.add_row(
            name,
            chain["address"] if chain else "?",
            ("yes" if chain["registered"] else "no") if chain else "?",
            ("yes" if chain["active"] else "no") if chain else "?",
            f"{chain['stake']['eth']} ETH" if chain else "?",
            f"{chain['credits']['eth']} ETH" if chain else "?",
            str(jobs["last_block"]) if jobs else "-",
            ", ".join(f"{k} {v}" for k, v in done.items()) if done else "-",
        )
    console.print(table)


__all__ = ["app"]
