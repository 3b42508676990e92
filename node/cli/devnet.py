"""`inferd devnet up|down|status|bootstrap`: the whole network on one machine.

Mounted by `node.cli.main` as the `devnet` sub-command group. The work lives in `node.devnet`;
this module only parses flags and renders results.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from node.cli.common import fail, root_state, settings_from
from node.config import DEFAULT_MODEL_NAME
from node.devnet.layout import DEFAULT_DATA_DIR, Layout, read_json

app = typer.Typer(
    help="Run the whole network on this machine (anvil, mosquitto, miners, gateway).", no_args_is_help=True
)
console = Console()

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", "-d", help="Where the devnet keeps its state.", envvar="INFERD_DEVNET_DIR"),
]


def _config_file(ctx: typer.Context) -> Path | None:
    """The root `--config` file, if any."""
    state = root_state(ctx)
    return state.config_file if state is not None else None


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("up")
def up(
    ctx: typer.Context,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Delete the data dir first: new chain, keys, store.")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Run in the background; return once healthy.")
    ] = False,
    miners: Annotated[
        int | None,
        typer.Option(
            "--miners", "-n", min=1, max=16, help="How many miners (default: as last time, else 1)."
        ),
    ] = None,
    redundancy: Annotated[
        int | None, typer.Option(help="Miners per request (default min(miners, 3): quorum = r/2 + 1).")
    ] = None,
    block_time: Annotated[
        float | None,
        typer.Option("--block-time", help="Seconds per block (default: automine, a block per tx)."),
    ] = None,
    chain_id: Annotated[int, typer.Option("--chain-id", help="Chain id of the dev chain.")] = 31337,
    rpc_port: Annotated[int, typer.Option("--rpc-port", help="anvil's port (0: a free one).")] = 0,
    broker_port: Annotated[int, typer.Option("--broker-port", help="mosquitto's port (0: a free one).")] = 0,
    gateway_port: Annotated[
        int, typer.Option("--gateway-port", help="The gateway's port (0: a free one).")
    ] = 0,
    model: Annotated[
        str, typer.Option(help="Model name registered on the hub and served.")
    ] = DEFAULT_MODEL_NAME,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for every part.")] = 900.0,
    chain_only: Annotated[
        bool,
        typer.Option(
            "--chain-only",
            help="Chain, broker, stakes and configs only: run the miners and "
            "the gateway yourself (e.g. under a debugger) with the printed commands.",
        ),
    ] = False,
    fake_engine: Annotated[
        bool,
        typer.Option(
            "--fake-engine",
            help="Miners answer with a deterministic fake engine: no vLLM, no "
            "model, instant start (for work on the chain, gateway or SDK side).",
        ),
    ] = False,
) -> None:
    """Start anvil, deploy the hub, stake miners, start mosquitto, the miners and the gateway."""
    from node.devnet.detach import up_detached
    from node.devnet.options import DevnetError, UpOptions
    from node.devnet.up import run_foreground

    if miners is None:  # a restarted devnet keeps its miners (the hub's redundancy depends on them)
        previous = None if fresh else read_json(Layout(data_dir.resolve()).devnet_json)
        miners = len(previous.get("miners", [])) if previous else 1
    opts = UpOptions(
        data_dir=data_dir,
        fresh=fresh,
        miners=max(miners, 1),
        redundancy=redundancy,
        block_time=block_time,
        chain_id=chain_id,
        rpc_port=rpc_port,
        broker_port=broker_port,
        gateway_port=gateway_port,
        model=model,
        ready_timeout_s=timeout,
        chain_only=chain_only,
        fake_engine=fake_engine,
    )
    try:
        code = up_detached(opts, _config_file(ctx), _say) if detach else run_foreground(opts, _say)
    except DevnetError as exc:
        raise fail(str(exc), 1) from exc
    raise typer.Exit(code)


@app.command("down")
def down(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a clean stop.")] = 90.0,
) -> None:
    """Stop a devnet started with --detach (its state stays; `up` resumes it)."""
    from node.devnet.control import down as stop

    stop(Layout(data_dir.resolve()), timeout, _say)


@app.command("status")
def status(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Each part's health (exit 1 unless everything is healthy)."""
    from node.devnet.status import collect

    rows, info = collect(Layout(data_dir.resolve()))
    healthy = info is not None and all(r.healthy for r in rows)
    if as_json:
        typer.echo(json.dumps({"healthy": healthy, "parts": [r.as_dict() for r in rows]}, indent=2))
    else:
        table = Table(title=f"inferd devnet: {data_dir.resolve()}")
        for column in ("part", "endpoint", "pid", "health", "restarts", "detail"):
            table.add_column(column)
        for r in rows:
            trouble = r.state if r.state in ("restarting", "gave-up") else "down"
            health = "[green]ok[/green]" if r.healthy else f"[red]{trouble}[/red]"
            restarts = str(r.restarts) + (f" (last: {r.last_exit})" if r.last_exit else "")
            table.add_row(r.part, r.endpoint, str(r.pid or "-"), health, restarts, r.detail)
        console.print(table)
        if info is None:
            console.print(f"no devnet.json in {data_dir}: start one with `inferd devnet up`")
    raise typer.Exit(0 if healthy else 1)


@app.command("bootstrap")
def bootstrap_cmd(
    ctx: typer.Context,
    rpc_url: Annotated[str | None, typer.Option(help="anvil's RPC (default: chain.rpc_url).")] = None,
    model: Annotated[str | None, typer.Option(help="Model to register (default: engine.model).")] = None,
    stake_eth: Annotated[float, typer.Option(help="Stake per miner, in ETH.")] = 1.0,
    redundancy: Annotated[int, typer.Option(help="Miners per request for a newly registered model.")] = 1,
    engine_class: Annotated[
        str | None,
        typer.Option(
            envvar="INFERD_ENGINE_CLASS",
            help="The model's engine class, 0x bytes32 (`inferd model class` on a miner machine); "
            "default: computed from this machine's engine.* settings.",
        ),
    ] = None,
    fake_engine: Annotated[
        bool, typer.Option("--fake-engine", help="Register the fake engine's fixed class.")
    ] = False,
) -> None:
    """On an anvil chain: deploy the hub (if missing), register the model, stake this node's key.

    The model is registered (and the key staked) for the engine class this node's engine settings
    give (`inferd model class`), unless --engine-class or --fake-engine says otherwise.

    For docker compose's `anvil` profile: the miner key comes from the settings
    (`INFERD_CHAIN__PRIVATE_KEY`); anvil's dev account 0 deploys and owns the hub, so on a fresh
    anvil the hub lands at the address compose expects.
    """
    from node.devnet.chain import ETH, ChainPlan, bootstrap
    from node.devnet.options import DevnetError
    from node.devnet.processes import anvil_private_keys
    from node.devnet.up import miner_engine_class

    settings = settings_from(ctx)
    key = settings.chain.private_key
    try:
        if engine_class is not None:
            class_id = bytes.fromhex(engine_class.removeprefix("0x"))
            if len(class_id) != 32:
                raise ValueError("an engine class is 32 bytes")
        else:
            class_id = miner_engine_class(settings.engine.model_dump(), fake=fake_engine)
    except ValueError as exc:
        raise fail(f"--engine-class: {exc}", 2) from exc
    except DevnetError as exc:
        raise fail(
            f"{exc}. Where the model is not here (compose's bootstrap container), run `inferd model "
            "class` on the miner machine and pass its id: --engine-class or INFERD_ENGINE_CLASS",
            2,
        ) from exc
    plan = ChainPlan(
        rpc_url=rpc_url or settings.chain.rpc_url,
        model=model or settings.engine.model,
        owner_key=anvil_private_keys(1)[0],
        miner_keys=[key.get_secret_value()] if key is not None else [],
        engine_class=class_id,
        redundancy=redundancy,
        stake=int(stake_eth * ETH),
        hub_address=settings.chain.hub_address,
        check_redundancy=False,
    )
    state: Any = asyncio.run(bootstrap(plan))
    expected = settings.chain.hub_address
    if expected and state.hub.lower() != expected.lower():
        raise fail(
            f"the hub was deployed at {state.hub}, not at chain.hub_address {expected} "
            "(anvil's account 0 had sent transactions before): set INFERD_HUB_ADDRESS to the new address",
            1,
        )
    typer.echo(
        json.dumps(
            {
                "hub": state.hub,
                "chain_id": state.chain_id,
                "model": state.model,
                "miners": state.miners,
                "deployed": state.deployed,
            }
        )
    )


if __name__ == "__main__":  # `python -m node.cli.devnet`: how a detached devnet runs its supervisor
    app()
