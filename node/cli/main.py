"""The `inferd` command: one typer app with a sub-command group per component."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from node import __version__
from node.cli.common import State, root_state
from node.cli.content import app as content_app
from node.cli.devnet import app as devnet_app
from node.cli.gateway import app as gateway_app
from node.cli.hub import app as hub_app
from node.cli.miner import app as miner_app
from node.cli.model import app as model_app
from node.cli.verify import replay, verify
from node.config import masked_dump

app = typer.Typer(
    name="inferd",
    help="inferd: decentralized LLM inference (miner, gateway, hub contract, devnet).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(miner_app, name="miner")
app.add_typer(gateway_app, name="gateway")
app.add_typer(devnet_app, name="devnet")
app.add_typer(model_app, name="model")
app.add_typer(content_app, name="content", help="Put, get and hash documents by CID.")
app.add_typer(hub_app, name="hub")
app.command("verify")(verify)
app.command("replay")(replay)

console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"inferd {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML settings file.", envvar="INFERD_CONFIG")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """inferd: decentralized LLM inference."""
    from node.log import configure_logging

    configure_logging("info")  # stderr for every command (stdout is its output); daemons set their own level
    ctx.obj = State(config)


def state(ctx: typer.Context) -> State:
    """The root State, whichever sub-command runs."""
    return root_state(ctx) or State(None)


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    rpc_url: Annotated[str | None, typer.Option(help="Override chain.rpc_url.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Override data_dir.")] = None,
) -> None:
    """Print the effective settings as JSON, with every secret masked."""
    overrides: dict[str, Any] = {}
    if rpc_url is not None:
        overrides["chain"] = {"rpc_url": rpc_url}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    settings = state(ctx).settings(**overrides)
    typer.echo(json.dumps(masked_dump(settings), indent=2, sort_keys=True))


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["State", "app", "main", "state"]


if __name__ == "__main__":
    main()
