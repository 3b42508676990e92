"""One inference call: an OpenAI request turned into an on-chain request, paid for and answered.

`serve_inference` runs a `/v1/chat/completions` or `/v1/completions` call once `authenticate`
(`node.gateway.caller`) let it in. Before it costs anything, it passes, in order: the key's
in-flight limit (429, the slot held until a stream's last byte), a body read capped while
streaming in (413/408) and parsed by the one JSON gate (400), validation (400), and the key's and
the wallet's daily spend budgets (429 `insufficient_quota` / 503): the call's price and a gas
estimate are reserved, then settled with what its transactions paid (after the background
`assign`, when the drawn seat answers while it is mined).

A call is answered once its result is final on chain, or, with `gateway.answer_on = "signature"`
or the body's `"finality": "signature"` (`"onchain"` asks for the chain either way), as soon as the
assignee's signed result verifies (`PendingInference.accept_signed`; `settlement: pending`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from node.content.documents import ChatInputDocument, CompletionInputDocument
from node.gate import HTTP_BODY_LIMITS
from node.gateway.budget import Budget, Reservation
from node.gateway.caller import Principal
from node.gateway.errors import (
    REQUEST_ID_HEADER,
    ConcurrencyLimited,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    ServiceUnavailable,
)
from node.gateway.pending import PendingInference
from node.gateway.records import ModelInfo, VerifiedResult
from node.gateway.responses import build_response, output_error
from node.gateway.schemas import (
    ParsedRequest,
    parse_chat_request,
    parse_completion_request,
    parse_json_body,
    read_body,
)
from node.gateway.state import GatewayState, gateway_state
from node.gateway.stores import Lease
from node.gateway.streaming import stream_events
from node.gateway.work import declared_max_tokens
from node.log import bound, get_logger

log = get_logger("gateway")


def _choice_count(parsed: ParsedRequest) -> int:
    doc = parsed.document
    n = doc.params.n or 1
    if isinstance(doc, CompletionInputDocument) and isinstance(doc.prompt, list):
        first = doc.prompt[0]
        if isinstance(first, str | list):
            return n * len(doc.prompt)
    return n


def _relay_live(parsed: ParsedRequest) -> bool:
    """Live deltas only when the final text is exactly their concatenation (see streaming.py; with
    tools the engine previews only content its document starts with, and tool calls are buffered)."""
    doc = parsed.document
    if isinstance(doc, ChatInputDocument):
        return not doc.params.logprobs
    cp = doc.params
    return cp.logprobs is None and not cp.echo and (cp.best_of or 1) <= (cp.n or 1)


async def _settle(st: GatewayState, reservation: Reservation, pending: PendingInference) -> None:
    """Replace the call's reservation by what it paid: the fee and its share of the gas of its
    `requestInference` and of the `assign` that materialised it."""
    sub = pending.submission
    chain_id = sub.chain_id
    await st.ledger.asettle(reservation, sub.fee + sub.gas_cost)
    st.metrics.spent.inc(sub.fee + sub.gas_cost)
    st.metrics.gas_spent.labels(chain_id=str(chain_id)).inc(sub.gas_cost)
    if sub.gas_cost > 0:
        st.ledger.observe_gas(chain_id, sub.gas_cost)


async def _settle_after(
    st: GatewayState, assigning: asyncio.Task[None], reservation: Reservation, pending: PendingInference
) -> None:
    """Settle once the background `assign` ended (mined, given up or failed); the
    reservation counts against the budgets meanwhile. Cancelled (shutdown): the reservation stands
    as spent, since the `assign` may be out."""
    try:
        await asyncio.wait({assigning})
    except asyncio.CancelledError:
        await st.ledger.asettle(reservation, None)
        raise
    await _settle(st, reservation, pending)


class _Inference:
    """One OpenAI call turned into an on-chain request and answered."""

    def __init__(self, st: GatewayState, kind: str, parsed: ParsedRequest, who: Principal) -> None:
        self.st = st
        self.kind = kind
        self.parsed = parsed
        self.who = who

    def _chain_id(self) -> int:
        backend = self.st.backend
        wanted = self.parsed.chain_id
        if wanted is None:
            return backend.default_chain_id
        if wanted not in backend.chain_ids():
            known = ", ".join(str(c) for c in backend.chain_ids())
            raise InvalidRequest(
                f"chain_id: this gateway serves chain(s) {known}, not {wanted}", param="chain_id"
            )
        return wanted

    async def run(self) -> Response:
        st = self.st
        chain_id = self._chain_id()
        doc = self.parsed.document
        model = await st.backend.get_model(chain_id, doc.model)
        if model is None:
            raise ModelNotFound(doc.model, chain_id)
        if model.active_miners == 0:
            raise ServiceUnavailable(
                f"No active miner serves `{doc.model}` on chain {chain_id} right now; try again later.",
                param="model",
                code="no_miners",
            )
        pending = await self._submit(chain_id, model)
        on_signature = self._on_signature()
        if on_signature:
            pending.accept_signed()
        st.metrics.pending.inc()
        headers = {REQUEST_ID_HEADER: str(pending.request_id)}
        timeout = st.settings.gateway.request_timeout_s
        with bound(request_id=pending.request_id, chain_id=chain_id):
            log.info(
                "inference_submitted",
                model=doc.model,
                stream=self.parsed.stream,
                infer_tx=pending.submission.infer_tx,
                answer_on="signature" if on_signature else "chain",
            )
        if self.parsed.stream:
            stream = stream_events(
                self.kind,
                pending,
                model=doc.model,
                n=_choice_count(self.parsed),
                include_usage=self.parsed.include_usage,
                relay_live=_relay_live(self.parsed),
                timeout_s=timeout,
                on_finish=self._finished,
            )
            return StreamingResponse(
                stream,
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        result: VerifiedResult | None = None
        error: GatewayError | None = None
        try:
            result = await pending.wait(timeout)
            error = output_error(result)
        except GatewayError as exc:
            error = exc
            raise
        finally:
            pending.release()
            self._finished(result, error)
        if error is not None:
            raise error
        return JSONResponse(build_response(self.kind, result), headers=headers)

    def _on_signature(self) -> bool:
        """Answer on the verified signed result: the request's `finality`, else the gateway's default."""
        finality = self.parsed.finality
        if finality is None:
            return self.st.settings.gateway.answer_on == "signature"
        return finality == "signature"

    async def _submit(self, chain_id: int, model: ModelInfo) -> PendingInference:
        """Reserve the call's cost against both budgets, send it, and settle with what it cost."""
        st, gw = self.st, self.st.settings.gateway
        fee = model.price(declared_max_tokens(self.parsed.document))  # protocol v2: exactly the price
        budget = Budget(key_wei=self.who.daily_budget_wei, total_wei=gw.daily_budget_wei_total)
        try:
            wei = fee + st.ledger.gas_hint(chain_id)
            reservation = await st.ledger.areserve(self.who.key_id, wei, budget)
        except GatewayError as exc:
            st.metrics.limited.labels(reason=str(exc.code)).inc()
            raise
        try:
            pending = await st.backend.submit(
                chain_id,
                self.parsed.document,
                self.parsed.document_bytes,
                model,
                private=self.parsed.private,
                live=self.parsed.stream and _relay_live(self.parsed),
            )
        except GatewayError as exc:
            await st.ledger.asettle(reservation, exc.spent_wei)
            if exc.spent_wei:  # a reverted transaction still paid its gas
                st.metrics.gas_spent.labels(chain_id=str(chain_id)).inc(exc.spent_wei)
            raise
        except BaseException:
            await st.ledger.asettle(reservation, None)  # a transaction may be out: count it as spent
            raise
        await st.ledger.arecord_owner(chain_id, pending.request_id, self.who.key_id)
        assigning = pending.assigning
        if assigning is None or assigning.done():
            await _settle(st, reservation, pending)
        else:  # the drawn seat answers while `assign` is mined: its gas is this call's spend too
            task = asyncio.create_task(_settle_after(st, assigning, reservation, pending))
            st.settling.add(task)
            task.add_done_callback(st.settling.discard)
        return pending

    def _finished(self, result: VerifiedResult | None, error: GatewayError | None) -> None:
        metrics = self.st.metrics
        metrics.pending.dec()
        if error is None:
            outcome = "ok"
        elif error.status == 504:
            outcome = "timeout"
        elif error.code == "output_verification_failed":
            outcome = "rejected"
        else:
            outcome = "error"
        metrics.inferences.labels(outcome=outcome).inc()


async def _release_at_end(body: AsyncIterable[Any], slot: Lease) -> AsyncIterator[Any]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        await slot.release()


async def serve_inference(request: Request, who: Principal, kind: str) -> Response:
    """One inference call under its key's in-flight limit (held until a stream's last byte)."""
    st = gateway_state(request)
    slot = await st.concurrency.acquire(who.key_id, who.max_concurrent)
    if slot is None:
        st.metrics.limited.labels(reason="concurrency").inc()
        raise ConcurrencyLimited(who.max_concurrent)
    try:
        raw = await read_body(request, HTTP_BODY_LIMITS.max_bytes, st.settings.gateway.body_timeout_s)
        body = parse_json_body(raw)
        parsed = parse_chat_request(body) if kind == "chat" else parse_completion_request(body)
        response = await _Inference(st, kind, parsed, who).run()
    except BaseException:
        await slot.release()
        raise
    if isinstance(response, StreamingResponse):
        response.body_iterator = _release_at_end(response.body_iterator, slot)
        response.background = BackgroundTask(slot.release)
    else:
        await slot.release()
    return response


__all__ = ["serve_inference"]
