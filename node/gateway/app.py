"""The gateway's FastAPI app: the OpenAI API over the chain.

`create_app(settings)` wires the chain-backed network (`ChainBackend`), the content store (also
served at `/ipfs/{cid}` so miners read inputs without a Kubo), API keys and rate limits. Tests pass
their own `backend` to exercise the HTTP layer without a chain. Run it with `inferd gateway serve`
or `uvicorn --factory node.gateway.app:app_from_env`.

Rate limits, in-flight slots, spend and API keys live where `node.gateway.stores` puts them: in
this process (memory, SQLite, the keys file), or in Redis when `gateway.redis_url` is set so that
several gateways behind one load balancer share them.

It is a public endpoint, so every inference call passes, in order and before it costs anything:
the key check and its rate limit (401/429), the key's in-flight limit (429), a body read capped
while streaming in (413/408) and parsed by the one JSON gate (400), validation (400), and the
key's and the wallet's daily spend budgets (429 `insufficient_quota` / 503). Only the key that
made a request (or an admin key) can read it back; `/healthz` tells the public nothing but states.

A call is answered once its result is final on chain, or, with `gateway.answer_on = "signature"`
or the body's `"finality": "signature"` (`"onchain"` asks for the chain either way), as soon as the
assignee's signed result verifies (`PendingInference.accept_signed`; `settlement: pending`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.config import ChainSettings, GatewaySettings, Settings, load_settings
from node.content.documents import ChatInputDocument, CompletionInputDocument
from node.content.store import ContentStore
from node.gate import HTTP_BODY_LIMITS
from node.gateway.auth import ApiKeyRecord, extract_key
from node.gateway.backend import InferenceBackend
from node.gateway.budget import Budget, Reservation
from node.gateway.errors import (
    REQUEST_ID_HEADER,
    AuthenticationError,
    ConcurrencyLimited,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    handle_gateway_error,
    handle_http_error,
    handle_unexpected,
    handle_validation_error,
)
from node.gateway.metrics import GatewayMetrics, watch_wallets
from node.gateway.mqtt import DropsCollector
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
from node.gateway.stores import ApiKeys, InFlightLimits, Lease, RateLimits, SpendLedgers, open_stores
from node.gateway.streaming import stream_events
from node.gateway.work import declared_max_tokens
from node.log import bound, get_logger
from node.supervise import LoopCollector, Supervisor

log = get_logger("gateway")


MAX_REQUEST_ID = 2**256 - 1


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key id (never the key) and the limits that apply to it."""

    key_id: str
    per_minute: int
    max_concurrent: int
    daily_budget_wei: int | None
    admin: bool = False


@dataclass
class GatewayState:
    settings: Settings
    backend: InferenceBackend
    keys: ApiKeys
    limiter: RateLimits
    metrics: GatewayMetrics
    ledger: SpendLedgers
    concurrency: InFlightLimits
    settling: set[asyncio.Task[None]] = field(default_factory=set)
    """Spend settling after a background `assign` (`PendingInference.assigning`) is mined."""


def _state(request: Request) -> GatewayState:
    st: GatewayState = request.app.state.gateway
    return st


def _principal(gw: GatewaySettings, key_id: str, record: ApiKeyRecord | None = None) -> Principal:
    """A caller's limits: the key record's own where it sets them, else the gateway's defaults."""
    if record is None:
        return Principal(
            key_id, gw.rate_limit_per_minute, gw.max_concurrent_per_key, gw.daily_budget_wei_per_key
        )
    budget = record.daily_budget_wei if record.daily_budget_wei is not None else gw.daily_budget_wei_per_key
    return Principal(
        key_id=record.id,
        per_minute=record.rate_limit_per_minute or gw.rate_limit_per_minute,
        max_concurrent=record.max_concurrent or gw.max_concurrent_per_key,
        daily_budget_wei=budget,
        admin=record.admin,
    )


def _anonymous(request: Request, gw: GatewaySettings, missing: bool) -> Principal:
    if gw.require_auth:
        if missing:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or "
                "`X-API-Key: <key>`; create one with `inferd gateway keys add`.",
                code="missing_api_key",
            )
        raise AuthenticationError(
            "Incorrect API key provided (unknown or revoked). `inferd gateway keys list` "
            "shows the keys this gateway accepts."
        )
    client = request.client.host if request.client else "unknown"
    return _principal(gw, f"anon:{client}")


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency: 401 without a valid key, 429 when its bucket is empty."""
    st = _state(request)
    gw = st.settings.gateway
    key = extract_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    record = await st.keys.alookup(key) if key is not None else None
    who = _principal(gw, record.id, record) if record is not None else _anonymous(request, gw, key is None)
    wait = await st.limiter.hit(who.key_id, who.per_minute)
    if wait > 0:
        st.metrics.limited.labels(reason="rate").inc()
        raise RateLimited(wait, who.per_minute)
    return who


Authenticated = Annotated[Principal, Depends(authenticate)]


def _model_json(m: ModelInfo) -> dict[str, Any]:
    return {
        "id": m.name,
        "object": "model",
        "created": m.created,
        "owned_by": "inferd",
        "chain_id": m.chain_id,
        "model_id": m.model_id,
        "active_miners": m.active_miners,
        "min_fee_wei": str(m.min_fee),
        "per_token_fee_wei": str(m.per_token_fee),
        "engine_class": m.engine_class,
        "audit_bps": m.audit_bps,
        "min_stake_wei": str(m.min_stake),
        "redundancy": m.redundancy,
        "timeout_blocks": m.timeout_blocks,
    }


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
                chain_id, self.parsed.document, self.parsed.document_bytes, model, private=self.parsed.private
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


async def _serve_inference(request: Request, who: Principal, kind: str) -> Response:
    """One inference call under its key's in-flight limit (held until a stream's last byte)."""
    st = _state(request)
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


def _public_health(detail: dict[str, Any]) -> dict[str, Any]:
    """Only states: no URLs, addresses, hostnames or error texts (those go to the logs)."""
    chains: list[dict[str, Any]] = []
    for chain in detail.get("chains") or []:
        if isinstance(chain, dict):
            chains.append({"chain_id": chain.get("chain_id"), "ok": bool(chain.get("ok"))})
        else:
            chains.append({"chain_id": chain, "ok": True})
    mqtt = detail.get("mqtt")
    loops = detail.get("loops")
    public: dict[str, Any] = {
        "chains": chains,
        "mqtt": {"connected": bool(mqtt.get("connected"))} if isinstance(mqtt, dict) else None,
    }
    if isinstance(loops, dict):
        public["loops"] = {str(name): str(v.get("state")) for name, v in loops.items() if isinstance(v, dict)}
    return public


def _endpoint_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class _Observe:
    """Counts every HTTP response by endpoint and status and times it until its headers are sent.

    A plain ASGI middleware: Starlette's `BaseHTTPMiddleware` (`@app.middleware("http")`) runs each
    request through extra tasks and memory streams, a few percent of a loaded gateway's CPU for
    three HTTP requests per inference (the call, the seat's envelope, its sealed answer).
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._series: dict[tuple[str, int], tuple[Any, Any]] = {}
        """(endpoint, status) → its counter and latency children (`labels()` locks and hashes on
        every call); the routes and statuses are few."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start" and status is None:
                status = int(message["status"])
                self._record(scope, status, start)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            if status is None:  # nothing was sent (the app raised): Starlette answers 500
                self._record(scope, 500, start)

    def _record(self, scope: Scope, status: int, start: float) -> None:
        endpoint = _endpoint_label(scope)
        series = self._series.get((endpoint, status))
        if series is None:
            series = self._series[(endpoint, status)] = (
                self.metrics.requests.labels(endpoint=endpoint, status=str(status)),
                self.metrics.latency.labels(endpoint=endpoint),
            )
        series[0].inc()
        series[1].observe(time.perf_counter() - start)


def create_app(
    settings: Settings,
    *,
    backend: InferenceBackend | None = None,
    store: ContentStore | None = None,
    keys: ApiKeys | None = None,
    limiter: RateLimits | None = None,
    chains: list[ChainSettings] | None = None,
    ledger: SpendLedgers | None = None,
) -> FastAPI:
    """The gateway app. Without `backend`, the chain backend is built from `settings` (and started
    in the app's lifespan) for `settings.chain`, or for each of `chains` (a body's `chain_id`
    picks one; the first is the default); without `store`, the configured content store is opened."""
    own_store = store is None
    if store is None:
        from node.content.factory import open_store

        store = open_store(settings.content, settings.content_path())
    if backend is None:
        from node.gateway.chain_backend import ChainBackend

        backend = ChainBackend.from_settings(settings, store, chains=chains)
    metrics = GatewayMetrics()
    stores = open_stores(settings, keys=keys, limiter=limiter, ledger=ledger)
    state = GatewayState(
        settings=settings,
        backend=backend,
        keys=stores.keys,
        limiter=stores.limiter,
        metrics=metrics,
        ledger=stores.ledger,
        concurrency=stores.in_flight,
    )
    backend.add_rejection_listener(lambda _reason: metrics.rejected.inc())
    loops = getattr(backend, "loops", None)  # the chain backend's supervised watchers and MQTT loop
    if isinstance(loops, Supervisor):
        metrics.registry.register(LoopCollector(loops, "inferd_gateway"))
    drops = getattr(backend, "mqtt_drops", None)  # only the chain backend relays MQTT
    if callable(drops):
        metrics.registry.register(DropsCollector([drops]))
    state.keys.list()  # fail at startup, not on the first request, if the keys file or Redis is bad
    content_store = store

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.backend.start()
        watch_wallets(state.backend, metrics)  # inferd_gateway_wallet_wei, per chain
        try:
            yield
        finally:
            for task in list(state.settling):  # each settles its reservation as it stops
                task.cancel()
            await asyncio.gather(*state.settling, return_exceptions=True)
            await state.backend.close()
            await stores.aclose()
            if own_store:
                await content_store.close()

    app = FastAPI(title="inferd gateway", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state
    app.add_exception_handler(GatewayError, handle_gateway_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected)

    envelopes = getattr(state.backend, "envelopes", None)
    if envelopes is not None:  # sealed private inputs for their seats (node.gateway.private)
        from node.gateway.private import EnvelopeRoutes, envelope_router

        accept = getattr(state.backend, "accept_private_output", None)
        app.add_middleware(EnvelopeRoutes, book=envelopes, accept=accept)  # inside _Observe: counted
        app.include_router(envelope_router(envelopes, accept))
    app.add_middleware(_Observe, metrics=metrics)

    from node.content.trustless import trustless_router

    app.include_router(trustless_router(content_store))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, who: Authenticated) -> Response:
        return await _serve_inference(request, who, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request, who: Authenticated) -> Response:
        return await _serve_inference(request, who, "completion")

    def _pick_chain(chain_id: int | None) -> int:
        if chain_id is None:
            return state.backend.default_chain_id
        if chain_id not in state.backend.chain_ids():
            raise InvalidRequest(f"chain_id: this gateway does not serve chain {chain_id}", param="chain_id")
        return chain_id

    @app.get("/v1/models")
    async def list_models(
        _: Authenticated, chain_id: Annotated[int | None, Query()] = None
    ) -> dict[str, Any]:
        chains = [_pick_chain(chain_id)] if chain_id is not None else state.backend.chain_ids()
        data: list[dict[str, Any]] = []
        for cid in chains:
            data += [_model_json(m) for m in await state.backend.list_models(cid)]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model:path}")
    async def get_model(
        model: str, _: Authenticated, chain_id: Annotated[int | None, Query()] = None
    ) -> dict[str, Any]:
        cid = _pick_chain(chain_id)
        info = await state.backend.get_model(cid, model)
        if info is None:
            raise ModelNotFound(model, cid)
        return _model_json(info)

    @app.get("/v1/inferences/{request_id}")
    async def get_inference(
        who: Authenticated,
        request_id: Annotated[int, Path(ge=0, le=MAX_REQUEST_ID)],
        chain_id: Annotated[int | None, Query()] = None,
    ) -> dict[str, Any]:
        cid = _pick_chain(chain_id)
        if not who.admin and await state.ledger.aowner(cid, request_id) != who.key_id:
            # the same answer as for an id that does not exist: existence is not leaked
            raise NotFound(f"No inference request {request_id} on chain {cid}.", param="request_id")
        return await state.backend.get_inference(cid, request_id)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            detail = await state.backend.health()
        except Exception as exc:
            log.warning("health_check_failed", error=f"{type(exc).__name__}: {exc}")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        ok = bool(detail.get("ok", True))
        return JSONResponse(
            {"status": "ok" if ok else "degraded", **_public_health(detail)},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def app_from_env() -> FastAPI:
    """uvicorn `--factory` entry point: settings from `INFERD_*` env and `INFERD_CONFIG`."""
    import os
    from pathlib import Path as FsPath

    config = os.environ.get("INFERD_CONFIG")
    return create_app(load_settings(FsPath(config) if config else None))


__all__ = ["GatewayState", "Principal", "app_from_env", "authenticate", "create_app"]
