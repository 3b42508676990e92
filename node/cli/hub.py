"""`inferd hub request` and `inferd hub register-model`: talk to the InferenceHub directly.

`register-model` (the hub owner) registers a model with its engine class (given, or computed from
this machine's engine settings), stake and prices; amounts are decimal ETH, parsed exactly. It moves
no funds. `request` is a raw on-chain request from the configured key, as any requester can send it.

The gateway only ever puts valid, canonical documents on chain; a requester talking to the hub
directly can put anything there. This command is that requester: FILE's bytes go to the content
store exactly as they are (never parsed or re-encoded, so hostile bytes reach the miners unchanged),
their sha-256 goes on chain with `requestInference`, and `--wait` follows the request until it is
final and prints the output document the miners agreed on. A CID instead of FILE requests an input
already stored (or never stored: an unavailable input). Protocol v2: the request declares maxTokens
(computed from FILE's document, or `--max-tokens`), pays exactly the hub's price for it after
asking (`--yes` in scripts), and is assigned right after it is mined (`assign`).

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

from node.cli.common import confirm_funds, fail, format_eth, parse_eth, settings_from
from node.config import Settings

app = typer.Typer(help="Talk to the InferenceHub directly, as a requester.", no_args_is_help=True)


@dataclass
class Sent:
    """A request on chain: what `requestInference` recorded, and the seats `assign` drew."""

    request_id: int
    input_cid: str
    input_digest: str
    tx_hash: str
    block: int
    fee: int
    max_tokens: int
    deadline: int | None
    assignees: list[str]


@dataclass
class Outcome:
    """Where a request ended: `finalized` with the agreed output, `unavailable` (the miners could not
    fetch the input), `refunded`, or still `open`; `verification` is the on-chain verification state
    (`node.chain.hub.VerificationState`)."""

    status: str
    output_cid: str | None = None
    output: dict[str, Any] | None = None
    output_bytes: bytes | None = field(default=None, repr=False)
    output_invalid: str | None = None
    verification: str | None = None


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


def document_max_tokens(data: bytes | None) -> int | None:
    """The `maxTokens` an input document declares (`node.gateway.work`), None when `data` is not a
    valid input document (hostile bytes, or only a CID): then the caller must say."""
    from node.content.documents import parse_input_document
    from node.content.errors import ContentError
    from node.gateway.work import declared_max_tokens

    if data is None:
        return None
    try:
        return declared_max_tokens(parse_input_document(data))
    except (ContentError, ValueError):
        return None


async def quote(hub: Any, model_name: str, max_tokens: int) -> int:
    """The exact fee of a request for `model_name` declaring `max_tokens` (the hub's `price`)."""
    from node.chain.hub import model_id

    return int(await hub.price(model_id(model_name), max_tokens))


async def send_request(
    hub: Any, store: Any, data: bytes | None, input_cid: str, model_name: str, max_tokens: int
) -> Sent:
    """Store `data` as is (when given), pay `price(model, max_tokens)` for a request on its digest,
    and `assign` it (its seats come from its own block's hash, so from the next block on)."""
    from node.chain.events import InferenceAssigned
    from node.chain.hub import Phase, model_id
    from node.content.cid import cid_to_digest
    from node.content.errors import IntegrityError

    if data is not None:
        stored = await store.put(data)
        if stored != input_cid:
            raise IntegrityError(input_cid, stored, "the content store")
    mid = model_id(model_name)
    digest = cid_to_digest(input_cid)
    res = await hub.request_inference(mid, digest, max_tokens)
    assignees: list[str] = []
    deadline: int | None = None
    assigned = await hub.assign()  # mined after the request's block, whose hash it needs
    for ev in assigned.of(InferenceAssigned):
        if ev.id == res.id:
            assignees, deadline = [str(a) for a in ev.assignees], ev.deadline
    if not assignees:  # someone else materialised it first
        info = await hub.get_request(res.id)
        if info.phase not in (Phase.PENDING, Phase.REFUNDED):
            assignees = [str(a) for a in info.assignees]
    return Sent(
        request_id=res.id,
        input_cid=input_cid,
        input_digest="0x" + digest.hex(),
        tx_hash=res.tx.tx_hash,
        block=res.tx.block_number,
        fee=res.fee,
        max_tokens=max_tokens,
        deadline=deadline,
        assignees=assignees,
    )


async def wait_outcome(
    hub: Any, store: Any, request_id: int, *, timeout_s: float, poll_s: float = 1.0
) -> Outcome:
    """Poll the request until it is final or refunded (or `timeout_s` passes: status `open`).

    The output document is fetched by the CID of the on-chain digest (verified against it), then
    parsed through the bounded gate: a miner's bytes are untrusted too.
    """
    from node.chain.hub import UNAVAILABLE, Phase
    from node.content.cid import digest_to_cid
    from node.content.documents import parse_output_document
    from node.content.errors import ContentError

    give_up = time.monotonic() + timeout_s
    while True:
        info = await hub.get_request(request_id)
        state = str(info.verification_state)
        if info.phase == Phase.REFUNDED:
            return Outcome(status="refunded", verification=state)
        if info.phase == Phase.FINAL and info.output_digest == UNAVAILABLE:
            return Outcome(status="unavailable", verification=state)
        if info.phase == Phase.FINAL and info.output_digest is not None:
            cid = digest_to_cid(info.output_digest)
            data = await store.get(cid)
            try:
                doc = parse_output_document(data)
            except ContentError as exc:
                return Outcome("finalized", cid, None, data, str(exc), state)
            return Outcome("finalized", cid, doc.model_dump(mode="json"), data, None, state)
        if time.monotonic() > give_up:
            return Outcome(status="open", verification=state)
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
    say(
        f"request {sent.request_id}: input {sent.input_cid}, maxTokens {sent.max_tokens}, "
        f"fee {format_eth(sent.fee)} ETH, tx {sent.tx_hash}"
    )
    if sent.assignees:
        say(f"assigned to {', '.join(sent.assignees)} (commit deadline block {sent.deadline})")
    else:
        say("not assigned yet (seats are drawn from the next block on)")
    if outcome is None:
        return
    if outcome.status != "finalized":
        say(f"status: {outcome.status} ({outcome.verification})")
        return
    say(f"output {outcome.output_cid} ({outcome.verification})")
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
            verification=outcome.verification,
        )
    return json.dumps(out, sort_keys=True)


@app.command("request")
def request(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(metavar="FILE|CID", help="Input bytes to send as is, '-', or a CID.")
    ],
    model: Annotated[str, typer.Option("--model", help="The model's name on the hub.")],
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            min=1,
            max=65536,
            help="maxTokens to declare (default: computed from FILE; required for a CID or bytes "
            "that are not an input document).",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Pay without asking.")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until final; print the output document.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, nothing else.")] = False,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")] = 600.0,
) -> None:
    """Request an inference on FILE's bytes (stored unchanged) or on a CID, from the configured key.

    The request declares maxTokens (what FILE's document may generate at most: max_tokens x
    max(n, best_of) x prompts) and pays exactly the hub's price for it, after confirmation.
    """
    from node.chain.errors import ChainError
    from node.content.errors import ContentError

    settings = settings_from(ctx)
    try:
        data, cid = read_source(source)
    except (OSError, ValueError) as exc:
        raise fail(str(exc), 2) from exc
    declared = max_tokens if max_tokens is not None else document_max_tokens(data)
    if declared is None:
        what = "a CID" if data is None else f"{source} is not a valid input document, so it"
        raise fail(f"{what} declares no maxTokens: pass --max-tokens N (1..65536)", 2)
    hub, store = _hub_and_store(settings)

    async def go() -> tuple[Sent, Outcome | None]:
        async with store:
            fee = await quote(hub, model, declared)
            confirm_funds(
                f"pay {format_eth(fee)} ETH for a request of {model} declaring {declared} tokens", yes=yes
            )
            sent = await send_request(hub, store, data, cid, model, declared)
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


def _engine_class_arg(engine_class: str | None, from_engine: bool, settings: Settings) -> bytes:
    """--engine-class 0x... or --engine-class-from-engine (this machine's configured engine)."""
    if (engine_class is None) == (not from_engine):
        raise fail("give exactly one of --engine-class 0x... or --engine-class-from-engine", 2)
    if engine_class is not None:
        try:
            raw = bytes.fromhex(engine_class.removeprefix("0x"))
        except ValueError:
            raw = b""
        if len(raw) != 32 or raw == bytes(32):
            raise fail(f"--engine-class {engine_class!r}: want a non-zero 0x-prefixed bytes32", 2)
        return raw
    from node.engine.engine import EngineError, resolve_model_path
    from node.engine.engine_args import VllmArgsError
    from node.engine.engine_class import EngineClassError
    from node.engine.engine_class import engine_class as compute

    try:
        return compute(settings.engine, resolve_model_path(settings.engine)).id
    except (EngineError, EngineClassError, VllmArgsError) as exc:
        raise fail(f"cannot compute the engine class: {exc}", 1) from exc


@app.command("register-model")
def register_model(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model's name (its id is keccak256 of it).")],
    min_stake: Annotated[
        int,
        typer.Option("--min-stake", parser=parse_eth, metavar="ETH", help="Stake per miner, ETH."),
    ],
    base_fee: Annotated[
        int,
        typer.Option("--base-fee", parser=parse_eth, metavar="ETH", help="ETH every request pays."),
    ],
    per_token_fee: Annotated[
        int,
        typer.Option("--per-token-fee", parser=parse_eth, metavar="ETH", help="ETH per declared token."),
    ],
    timeout_blocks: Annotated[int, typer.Option("--timeout-blocks", min=1, max=200)],
    redundancy: Annotated[int, typer.Option("--redundancy", min=1, max=7)] = 1,
    audit_bps: Annotated[
        int, typer.Option("--audit-bps", min=0, max=10_000, help="r = 1: audit rate in basis points.")
    ] = 500,
    engine_class: Annotated[
        str | None, typer.Option("--engine-class", help="The class miners must run (0x bytes32).")
    ] = None,
    from_engine: Annotated[
        bool,
        typer.Option(
            "--engine-class-from-engine", help="Compute the class from this machine's engine settings."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, nothing else.")] = False,
) -> None:
    """Register a model on the hub (its owner only; moves no funds).

    For r = 1 the hub refuses prices an audited cheater would still profit from:
    auditBps x minStake >= 2 x (10000 - auditBps) x (baseFee + perTokenFee x 65536); this is checked
    here first, with the largest price the stake allows.
    """
    from node.chain.errors import ChainError
    from node.chain.hub import HubClient
    from node.gateway.work import MAX_DECLARED_TOKENS, audit_inequality_holds
    from node.miner.keys import MinerKeyError, load_account

    settings = settings_from(ctx)
    class_id = _engine_class_arg(engine_class, from_engine, settings)
    if base_fee <= 0:
        raise fail("--base-fee must be above 0", 2)
    if redundancy == 1 and not audit_inequality_holds(min_stake, base_fee, per_token_fee, audit_bps):
        most = audit_bps * min_stake // (2 * (10_000 - audit_bps)) if 0 < audit_bps < 10_000 else 0
        raise fail(
            f"underpriced for r = 1: a request may cost up to "
            f"{format_eth(base_fee + per_token_fee * MAX_DECLARED_TOKENS)} ETH, but with --min-stake "
            f"{format_eth(min_stake)} and --audit-bps {audit_bps} the most the hub accepts is "
            f"{format_eth(most)} ETH (raise the stake or the audit rate, or lower the fees)",
            2,
        )
    if not settings.chain.hub_address:
        raise fail("chain.hub_address is not set (INFERD_CHAIN__HUB_ADDRESS or [chain] hub_address)", 2)
    try:
        account = load_account(settings.chain)
    except (MinerKeyError, ValueError) as exc:
        raise fail(str(exc), 2) from exc
    w3 = HubClient.web3(settings.chain.rpc_url, timeout=settings.chain.rpc_timeout_s)
    hub = HubClient(w3, settings.chain.hub_address, "0x" + bytes(account.key).hex())

    async def go() -> tuple[bytes, Any]:
        return await hub.register_model(  # type: ignore[no-any-return]
            name, class_id, min_stake, base_fee, per_token_fee, timeout_blocks, redundancy, audit_bps
        )

    try:
        mid, tx = asyncio.run(go())
    except (ChainError, OSError) as exc:
        raise fail(str(exc)) from exc
    out = {
        "model": name, "model_id": "0x" + mid.hex(), "engine_class": "0x" + class_id.hex(),
        "min_stake_wei": str(min_stake), "base_fee_wei": str(base_fee),
        "per_token_fee_wei": str(per_token_fee), "timeout_blocks": timeout_blocks,
        "redundancy": redundancy, "audit_bps": audit_bps, "tx_hash": tx.tx_hash,
    }  # fmt: skip
    if as_json:
        typer.echo(json.dumps(out, sort_keys=True))
    else:
        typer.echo(
            f"registered {name} (0x{mid.hex()}) for engine class 0x{class_id.hex()}: stake "
            f"{format_eth(min_stake)} ETH, fee {format_eth(base_fee)} + {format_eth(per_token_fee)} "
            f"ETH/token, r = {redundancy}, audits {audit_bps / 100:g}%, tx {tx.tx_hash}"
        )


__all__ = [
    "Outcome",
    "Sent",
    "app",
    "document_max_tokens",
    "quote",
    "read_source",
    "send_request",
    "wait_outcome",
]
