"""`inferd content`: put, get and hash documents in the configured content store.

The store is the one `content.*` settings name (local blockstore by default), so an operator can
check by hand what a miner or gateway would see. `cid` needs no store at all.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from node.cli.common import settings_from
from node.content.cid import cid_for_bytes, cid_to_digest
from node.content.errors import MAX_DOCUMENT_BYTES, ContentError, DocumentTooLarge
from node.content.factory import open_store
from node.content.store import ContentStore

app = typer.Typer(help="Store and fetch documents by CID (raw IPFS blocks).", no_args_is_help=True)


def _store(ctx: typer.Context) -> ContentStore:
    settings = settings_from(ctx)
    try:
        return open_store(settings.content, settings.content_path())
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _read(file: Path) -> bytes:
    if str(file) == "-":
        data = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
    else:
        try:
            if file.stat().st_size > MAX_DOCUMENT_BYTES:
                raise DocumentTooLarge(file.stat().st_size)
            data = file.read_bytes()
        except OSError as exc:
            typer.echo(f"error: cannot read {file}: {exc.strerror}", err=True)
            raise typer.Exit(2) from exc
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge(len(data))
    return data


def _fail(exc: ContentError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@app.command("put")
def put(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The document to store ('-' for stdin).")],
) -> None:
    """Store FILE as one raw block and print its CID."""

    async def run() -> str:
        async with _store(ctx) as store:
            return await store.put(_read(file))

    try:
        typer.echo(asyncio.run(run()))
    except ContentError as exc:
        raise _fail(exc) from exc


@app.command("get")
def get(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="The CID to fetch (any spelling of a raw-block CID).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Fetch the block of CID, verified against it, to stdout or --output."""

    async def run() -> bytes:
        async with _store(ctx) as store:
            return await store.get(cid)

    try:
        data = asyncio.run(run())
    except ContentError as exc:
        raise _fail(exc) from exc
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)


@app.command("cid")
def cid(
    file: Annotated[Path, typer.Argument(help="The document to hash ('-' for stdin).")],
    digest: Annotated[bool, typer.Option("--digest", help="Also print the on-chain bytes32.")] = False,
) -> None:
    """Print the CID FILE would have as a raw block, without storing it."""
    try:
        data = _read(file)
    except ContentError as exc:
        raise _fail(exc) from exc
    value = cid_for_bytes(data)
    typer.echo(value)
    if digest:
        typer.echo("0x" + cid_to_digest(value).hex())


__all__ = ["app"]
