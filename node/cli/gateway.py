"""`inferd gateway ...`: serve the OpenAI API over the chain, and manage its API keys.

Mounted by `node.cli.main` as the `gateway` group. `serve` (alias `run`) takes the chain, content
and broker settings from `--config` / `INFERD_*` env like every component, e.g.

    INFERD_CHAIN__RPC_URL=... INFERD_CHAIN__HUB_ADDRESS=0x... INFERD_CHAIN__PRIVATE_KEY=0x... \
    inferd gateway serve --port 8000

`keys add` prints the new key once; only its sha256 is stored (`gateway.keys_path`, by default
`{data_dir}/gateway/api_keys.json`, or in Redis when `gateway.redis_url` is set).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from node.cli.common import fail, settings_from

# Tracebacks never show local variables: a frame of the gateway can hold a key, a prompt or a wallet.
app = typer.Typer(
    help="Serve the OpenAI-compatible API over the chain; manage API keys.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
keys_app = typer.Typer(
    help="Create, list and revoke the gateway's API keys.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def _keys(ctx: typer.Context) -> Any:
    from node.gateway.auth import KeyFileError
    from node.gateway.stores import open_keys

    settings = settings_from(ctx)
    store = open_keys(settings)  # the keys file, or Redis when gateway.redis_url is set
    try:
        store.list()
    except KeyFileError as exc:
        raise fail(str(exc), 2) from exc
    return store


def _serve(
    ctx: typer.Context,
    host: str | None,
    port: int | None,
    rpc_url: str | None,
    hub: str | None,
    broker_url: str | None,
    no_broker: bool,
    no_auth: bool,
) -> None:
    import uvicorn

    from node.gateway.app import create_app
    from node.log import configure_logging

    overrides: dict[str, Any] = {}
    gw: dict[str, Any] = {}
    if host is not None:
        gw["host"] = host
    if port is not None:
        gw["port"] = port
    if no_auth:
        gw["require_auth"] = False
    chain: dict[str, Any] = {}
    if rpc_url is not None:
        chain["rpc_url"] = rpc_url
    if hub is not None:
        chain["hub_address"] = hub
    stream: dict[str, Any] = {}
    if broker_url is not None:
        stream["broker_url"] = broker_url
    if no_broker:
        stream["enabled"] = False
    for key, value in (("gateway", gw), ("chain", chain), ("stream", stream)):
        if value:
            overrides[key] = value
    settings = settings_from(ctx, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    app_ = create_app(settings)
    uvicorn.run(
        app_,
        host=settings.gateway.host,
        port=settings.gateway.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        limit_concurrency=settings.gateway.max_connections,
        timeout_keep_alive=5,
    )


HostOpt = Annotated[str | None, typer.Option(help="Listen address (gateway.host).")]
PortOpt = Annotated[int | None, typer.Option(help="Listen port (gateway.port).")]
RpcOpt = Annotated[str | None, typer.Option(help="Chain JSON-RPC URL (chain.rpc_url).")]
HubOpt = Annotated[str | None, typer.Option(help="InferenceHub address (chain.hub_address).")]
BrokerOpt = Annotated[str | None, typer.Option(help="MQTT broker URL (stream.broker_url).")]
NoBrokerOpt = Annotated[bool, typer.Option("--no-broker", help="Do not subscribe to MQTT (no live deltas).")]
NoAuthOpt = Annotated[bool, typer.Option("--no-auth", help="Accept requests without an API key.")]


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: HostOpt = None,
    port: PortOpt = None,
    rpc_url: RpcOpt = None,
    hub: HubOpt = None,
    broker_url: BrokerOpt = None,
    no_broker: NoBrokerOpt = False,
    no_auth: NoAuthOpt = False,
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/models, /v1/inferences, /ipfs, /healthz, /metrics."""
    _serve(ctx, host, port, rpc_url, hub, broker_url, no_broker, no_auth)


run = app.command("run", hidden=True, help="Alias of `serve`.")(serve)


@keys_app.command("add")
def keys_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
    rate_limit: Annotated[
        int | None, typer.Option(min=1, help="Requests per minute for this key (default: gateway setting).")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="Requests in flight at once (default: gateway setting).")
    ] = None,
    daily_budget_wei: Annotated[
        int | None,
        typer.Option(min=0, help="Wei of fees plus gas per UTC day (default: gateway setting)."),
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May read every request's record.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print id and key as JSON.")] = False,
) -> None:
    """Create an API key and print it ONCE (only its hash is stored)."""
    key, record = _keys(ctx).add(
        name, rate_limit, max_concurrent=max_concurrent, daily_budget_wei=daily_budget_wei, admin=admin
    )
    if as_json:
        typer.echo(json.dumps({"id": record.id, "name": record.name, "key": key}))
        return
    console.print(f"created API key [bold]{record.id}[/bold] {name!r}; it is shown only now:")
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List keys (id, name, prefix, limits, status); never the keys themselves."""
    records = _keys(ctx).list()
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json", exclude={"hash"}) for r in records], indent=2))
        return
    table = Table("id", "name", "prefix", "created", "rate/min", "in flight", "wei/day", "admin", "status")
    for r in records:
        created = datetime.fromtimestamp(r.created, UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            r.id,
            r.name,
            r.prefix + "…",
            created,
            str(r.rate_limit_per_minute or "default"),
            str(r.max_concurrent or "default"),
            str(r.daily_budget_wei if r.daily_budget_wei is not None else "default"),
            "yes" if r.admin else "",
            "revoked" if r.revoked else "active",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")]
) -> None:
    """Revoke a key; a running gateway refuses it from its next request on."""
    from node.gateway.auth import UnknownKey

    try:
        record = _keys(ctx).revoke(key_id)
    except UnknownKey as exc:
        raise fail(str(exc), 1) from exc
    console.print(f"revoked {record.id} {record.name!r}")


__all__ = ["app", "keys_app"]
