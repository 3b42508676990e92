"""`inferd hub request`: a raw on-chain request from the configured key, as any requester can send it.

The gateway only ever puts valid, canonical documents on chain; a requester talking to the hub
directly can put anything there. This command is that requester: FILE's bytes go to the content
store exactly as they are (never parsed or re-encoded, so hostile bytes reach the miners unchanged),
their sha-256 goes on chain with `requestInference`, and `--wait` follows the request until it is
final and prints the output document the miners agreed on. A CID instead of FILE requests an input
already stored (or never stored: an unavailable input).

The key and chain come from the usual settings (`[chain]` private_key or keystore, rpc_url,
hub_address); the store from `[content]`. With `--json` the only thing on stdout is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from node.cli.common import fail, settings_from
from node.config import Settings

app = typer.Typer(help="Talk to the InferenceHub directly, as a requester.", no_args_is_help=True)


@dataclass
class Sent:
    """A request on chain: what `requestInference` recorded."""

    request_id: int
    input_cid: str
    input_digest: str
    tx_hash: str
    block: int
    fee: int
    deadline: int
    assignees: list[str]


@dataclass
class Outcome:
    """Where a request ended: `finalized` with the agreed output, `refunded`, or still `open`."""

    status: str
    output_cid: str | None = None
    output: dict[str, Any] | None = None
    output_bytes: bytes | None = field(default=None, repr=False)
    output_invalid: str | None = None


def read_source(source: str) -> tuple[bytes | None, str]:
    """(bytes, CID) of FILE or `-` (stdin), or (None, CID) for a CID; ValueError for neither."""
    from node.content.cid import cid_for_bytes, normalize_cid
    from node.content.errors import MAX_DOCUMENT_BYTES, ContentError

    path = Path(source)
    if source == "-" or path.is_file():
        data = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1) if source == "-" else path.read_bytes()
        return data, cid_for_bytes(data)
    try:
        return None, normalize_cid(source)
    except ContentError as exc:
        raise ValueError(f"{source!r} is neither a readable file nor a CID ({exc})") from None


async def send_request(
    hub: Any, store: Any, data: bytes | None, input_cid: str, model_name: str, fee: int | None = None
) -> Sent:
    """Store `data` as is (when given) and request `model_name` on its digest; `fee` default: minFee."""
    from node.chain.hub import model_id
    from node.content.cid import cid_to_digest
    from node.content.errors import IntegrityError

    if data is not None:
        stored = await store.put(data)
        if stored != input_cid:
            raise IntegrityError(input_cid, stored, "the content store")
    mid = model_id(model_name)
    if fee is None:
        fee = (await hub.get_model(mid)).min_fee
    digest = cid_to_digest(input_cid)
    res = await hub.request_inference(mid, digest, fee)
    return Sent(
        request_id=res.id,
        input_cid=input_cid,
        input_digest="0x" + digest.hex(),
        tx_hash=res.tx.tx_hash,
        block=res.tx.block_number,
        fee=fee,
        deadline=res.deadline,
        assignees=[str(a) for a in res.assignees],
    )


async def wait_outcome(
    hub: Any, store: Any, request_id: int, *, timeout_s: float, poll_s: float = 1.0
) -> Outcome:
    """Poll the request until it is finalized or refunded (or `timeout_s` passes: status `open`).

    The output document is fetched by the CID of the on-chain digest (verified against it), then
    parsed through the bounded gate: a miner's bytes are untrusted too.
    """
    from node.chain.hub import RequestStatus
    from node.content.cid import digest_to_cid
    from node.content.documents import parse_output_document
    from node.content.errors import ContentError

    give_up = time.monotonic() + timeout_s
    while True:
        info = await hub.get_request(request_id)
        if info.status == RequestStatus.REFUNDED:
            return Outcome(status="refunded")
        if info.status == RequestStatus.FINALIZED and info.output_digest is not None:
            cid = digest_to_cid(info.output_digest)
            data = await store.get(cid)
            try:
                doc = parse_output_document(data)
            except ContentError as exc:
                return Outcome("finalized", cid, None, data, str(exc))
            return Outcome("finalized", cid, doc.model_dump(mode="json"), data)
        if time.monotonic() > give_up:
            return Outcome(status="open")
        await asyncio.sleep(poll_s)


def _hub_and_store(settings: Settings) -> tuple[Any, Any]:
    from node.chain.hub import HubClient
    from node.content.factory import open_store
    from node.miner.keys import MinerKeyError, load_account

    if not settings.chain.hub_address:
        raise fail("chain.hub_address is not set (INFERD_CHAIN__HUB_ADDRESS or [chain] hub_address)", 2)
    try:
        account = load_account(settings.chain)
        store = open_store(settings.content, settings.content_path())
    except (MinerKeyError, ValueError) as exc:
        raise fail(str(exc), 2) from exc
    w3 = HubClient.web3(settings.chain.rpc_url, timeout=settings.chain.rpc_timeout_s)
    key = "0x" + bytes(account.key).hex()
    return HubClient(w3, settings.chain.hub_address, key, gas_margin=settings.chain.gas_margin), store


def _print_human(sent: Sent, outcome: Outcome | None) -> None:
    say = typer.echo
    say(f"request {sent.request_id}: input {sent.input_cid}, fee {sent.fee} wei, tx {sent.tx_hash}")
    say(f"assigned to {', '.join(sent.assignees)} (deadline block {sent.deadline})")
    if outcome is None:
        return
    if outcome.status != "finalized":
        say(f"status: {outcome.status}")
        return
    say(f"output {outcome.output_cid}")
    if outcome.output_bytes is not None:
        say(outcome.output_bytes.decode("utf-8", errors="replace"))
    if outcome.output_invalid is not None:
        say(f"the output document is invalid: {outcome.output_invalid}")


def _as_json(sent: Sent, outcome: Outcome | None) -> str:
    out: dict[str, Any] = asdict(sent)
    if outcome is not None:
        out.update(
            status=outcome.status,
            output_cid=outcome.output_cid,
            output=outcome.output,
            output_invalid=outcome.output_invalid,
        )
    return json.dumps(out, sort_keys=True)


@app.command("request")
def request(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(metavar="FILE|CID", help="Input bytes to send as is, '-', or a CID.")
    ],
    model: Annotated[str, typer.Option("--model", help="The model's name on the hub.")],
    fee: Annotated[
        int | None, typer.Option("--fee", help="Fee in wei (default: the model's minimum).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until final; print the output document.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, nothing else.")] = False,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")] = 600.0,
) -> None:
    """Request an inference on FILE's bytes (stored unchanged) or on a CID, from the configured key."""
    from node.chain.errors import ChainError
    from node.content.errors import ContentError

    settings = settings_from(ctx)
    try:
        data, cid = read_source(source)
    except (OSError, ValueError) as exc:
        raise fail(str(exc), 2) from exc
    hub, store = _hub_and_store(settings)

    async def go() -> tuple[Sent, Outcome | None]:
        async with store:
            sent = await send_request(hub, store, data, cid, model, fee)
            if not wait:
                return sent, None
            poll = settings.chain.poll_interval_s
            return sent, await wait_outcome(hub, store, sent.request_id, timeout_s=timeout_s, poll_s=poll)

    try:
        sent, outcome = asyncio.run(go())
    except (ChainError, ContentError, OSError) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(_as_json(sent, outcome))
    else:
        _print_human(sent, outcome)
    if outcome is not None and outcome.status != "finalized":
        raise typer.Exit(1)


__all__ = ["Outcome", "Sent", "app", "read_source", "send_request", "wait_outcome"]
