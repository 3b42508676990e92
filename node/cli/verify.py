"""`inferd verify` and `inferd replay`: check a gateway answer against the chain, without trusting
the gateway.

`verify RESPONSE.json` rebuilds the output document from the saved response (encoded as its
`document_version` requires), hashes it, and checks it against the hub's finalized digest, the
CIDs, the assignees and the miner's EIP-712 signature (domain version "2", checked against the
hub's `domainSeparator()`), and says which verification state the request reached (submitted,
audit pending, audited, disputed, final; `node.gateway.verify.explain`);
`verify --request-id N` checks a request by id (its output fetched by CID from the content store or
`--gateway`). `replay --request-id N` re-runs the input on the local engine and compares digests.
Exit 0 means valid / reproduced, 1 invalid / different, 2 a usage or connection problem.

The lead registers these with `app.command("verify")(verify)` and `app.command("replay")(replay)`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from node.cli.common import fail, machine_stdout, settings_from
from node.config import Settings


def _settings(ctx: typer.Context, rpc_url: str | None, hub: str | None) -> Settings:
    chain: dict[str, Any] = {}
    if rpc_url is not None:
        chain["rpc_url"] = rpc_url
    if hub is not None:
        chain["hub_address"] = hub
    overrides: dict[str, Any] = {"chain": chain} if chain else {}
    return settings_from(ctx, **overrides)


def _hub(settings: Settings, hub_override: str | None = None) -> Any:
    from node.chain.hub import HubClient

    address = hub_override or settings.chain.hub_address
    if not address:
        raise fail("no hub address: pass --hub or set chain.hub_address (INFERD_CHAIN__HUB_ADDRESS)", 2)
    return HubClient(HubClient.web3(settings.chain.rpc_url, settings.chain.rpc_timeout_s), address)


def _store(settings: Settings, gateway_url: str | None) -> Any:
    from node.content.factory import open_store
    from node.content.gateway import GatewayStore

    if gateway_url:
        return GatewayStore([gateway_url])
    try:
        return open_store(settings.content, settings.content_path())
    except ValueError:
        return None


def _print_verdict(verdict: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(verdict.as_json(), indent=2))
        return
    out = Console()
    for check in verdict.checks:
        mark = {True: "[green]✓[/green]", False: "[red]✗[/red]", None: "[yellow]–[/yellow]"}[check.ok]
        out.print(f" {mark} {check.name}: {check.detail}", highlight=False)
    rid = f"request {verdict.request_id}" if verdict.request_id is not None else "response"
    if verdict.valid:
        out.print(f"[bold green]VALID[/bold green]: {rid} on chain {verdict.chain_id} checks out")
    else:
        out.print(f"[bold red]INVALID[/bold red]: {rid} does not match the chain")


def _load_response(path: Path) -> dict[str, Any]:
    try:
        raw = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}", 2) from exc
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise fail(f"{path} is not JSON: {exc}", 2) from exc
    if not isinstance(body, dict):
        raise fail(f"{path} is not a JSON object", 2)
    if "response" in body and isinstance(body["response"], dict) and "onchain_data" not in body:
        body = body["response"]  # a saved GET /v1/inferences/{id} record
    return body


def verify(
    ctx: typer.Context,
    response: Annotated[
        Path | None, typer.Argument(help="A saved gateway response (JSON), or - for stdin.")
    ] = None,
    request_id: Annotated[
        int | None, typer.Option("--request-id", min=0, help="Verify a request by id.")
    ] = None,
    rpc_url: Annotated[str | None, typer.Option(help="Chain JSON-RPC URL (chain.rpc_url).")] = None,
    hub: Annotated[
        str | None, typer.Option(help="Hub address (default: the response's, or chain.hub_address).")
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(help="Fetch documents from this trustless gateway (e.g. http://127.0.0.1:8000)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Check a gateway answer: signature, CIDs against the on-chain digests, verification state."""
    from node.gateway.verify import verify_request_id, verify_response

    if (response is None) == (request_id is None):
        raise fail("give either RESPONSE.json or --request-id N", 2)
    settings = _settings(ctx, rpc_url, None)
    body = _load_response(response) if response is not None else None
    hub_address = hub
    if hub_address is None and body is not None:
        od = body.get("onchain_data")
        hub_address = od.get("hub") if isinstance(od, dict) else None
    client = _hub(settings, hub_address)

    async def _run() -> Any:
        if body is not None:
            return await verify_response(body, client)
        assert request_id is not None
        store = _store(settings, gateway)
        try:
            return await verify_request_id(request_id, client, store)
        finally:
            if store is not None:
                await store.close()

    try:
        verdict = asyncio.run(_run())
    except OSError as exc:
        raise fail(f"cannot reach the chain at {settings.chain.rpc_url}: {exc}", 2) from exc
    _print_verdict(verdict, as_json)
    raise typer.Exit(0 if verdict.valid else 1)


def replay(
    ctx: typer.Context,
    request_id: Annotated[int, typer.Option("--request-id", min=0, help="The request to re-execute.")],
    rpc_url: Annotated[str | None, typer.Option(help="Chain JSON-RPC URL (chain.rpc_url).")] = None,
    hub: Annotated[str | None, typer.Option(help="Hub address (chain.hub_address).")] = None,
    gateway: Annotated[
        str | None,
        typer.Option(help="Fetch the input from this trustless gateway (e.g. http://127.0.0.1:8000)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Re-run a request's input on the local engine; report whether the output digest matches the chain."""
    from node.chain.errors import ChainError
    from node.content.errors import ContentError
    from node.engine.engine import Engine, EngineError
    from node.gateway.replay import ReplayError, replay_request

    settings = _settings(ctx, rpc_url, hub)
    client = _hub(settings)

    async def _run() -> dict[str, Any]:
        store = _store(settings, gateway)
        if store is None:
            raise fail("no content store: pass --gateway URL or configure content.*", 2)
        try:
            engine = await Engine.start(settings.engine)
        except EngineError as exc:
            raise fail(str(exc), 2) from exc
        try:
            result, _ = await replay_request(client, store, engine, request_id)
        except (ReplayError, ChainError, ContentError) as exc:
            raise fail(str(exc), 1) from exc
        finally:
            engine.shutdown()
            await store.close()
        return result.as_json()

    stdout = machine_stdout() if as_json else None  # vLLM logs to stdout: keep it for the JSON
    result = asyncio.run(_run())
    if stdout is not None:
        stdout.write(json.dumps(result, indent=2) + "\n")
        stdout.flush()
    else:
        out = Console()
        out.print(f"request {request_id} ({result['status']}), input {result['input_cid']}", highlight=False)
        out.print(f" replayed output: {result['replayed_output_cid']}", highlight=False)
        out.print(f" on-chain output: {result['onchain_output_cid']}", highlight=False)
        if result["match"]:
            out.print("[bold green]MATCH[/bold green]: local re-execution reproduces the on-chain digest")
        elif result["onchain_output_cid"] is None:
            out.print("[bold yellow]NOT FINAL[/bold yellow]: the request has no finalized output on chain")
        else:
            out.print(
                "[bold red]MISMATCH[/bold red]: local re-execution differs from the on-chain digest "
                "(different engine build / fingerprint, or a dishonest result)"
            )
    raise typer.Exit(0 if result["match"] else 1)


__all__ = ["replay", "verify"]
