"""The gateway's FastAPI app: the OpenAI API over the chain.

`create_app(settings)` wires the chain-backed network (`ChainBackend`), the content store (also
served at `/ipfs/{cid}` so miners read inputs without a Kubo), API keys and rate limits. Tests pass
their own `backend` to exercise the HTTP layer without a chain. Run it with `inferd gateway serve`
or `uvicorn --factory node.gateway.app:app_from_env`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from node.config import ChainSettings, Settings, load_settings
from node.content.documents import ChatInputDocument, CompletionInputDocument
from node.content.store import ContentStore
from node.gateway.auth import KeyStore, default_keys_path, extract_key
from node.gateway.backend import InferenceBackend
from node.gateway.errors import (
    REQUEST_ID_HEADER,
    AuthenticationError,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    ServiceUnavailable,
    handle_gateway_error,
    handle_http_error,
    handle_unexpected,
    handle_validation_error,
)
from node.gateway.metrics import GatewayMetrics
from node.gateway.ratelimit import RateLimiter
from node.gateway.records import ModelInfo, VerifiedResult
from node.gateway.responses import build_response, output_error
from node.gateway.schemas import (
    ParsedRequest,
    parse_chat_request,
    parse_completion_request,
    parse_json_body,
)
from node.gateway.streaming import stream_events
from node.log import bound, get_logger

log = get_logger("gateway")


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key id (never the key) and its per-minute limit."""

    key_id: str
    per_minute: int


@dataclass
class GatewayState:
    settings: Settings
    backend: InferenceBackend
    keys: KeyStore
    limiter: RateLimiter
    metrics: GatewayMetrics


def _state(request: Request) -> GatewayState:
    st: GatewayState = request.app.state.gateway
    return st


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency: 401 without a valid key, 429 when its bucket is empty."""
    st = _state(request)
    gw = st.settings.gateway
    key = extract_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    if key is None:
        if gw.require_auth:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or "
                "`X-API-Key: <key>`; create one with `inferd gateway keys add`.",
                code="missing_api_key",
            )
        client = request.client.host if request.client else "unknown"
        who = Principal(key_id=f"anon:{client}", per_minute=gw.rate_limit_per_minute)
    else:
        record = st.keys.lookup(key)
        if record is None:
            if gw.require_auth:
                raise AuthenticationError(
                    "Incorrect API key provided (unknown or revoked). `inferd gateway keys list` "
                    "shows the keys this gateway accepts."
                )
            client = request.client.host if request.client else "unknown"
            who = Principal(key_id=f"anon:{client}", per_minute=gw.rate_limit_per_minute)
        else:
            who = Principal(
                key_id=record.id, per_minute=record.rate_limit_per_minute or gw.rate_limit_per_minute
            )
    wait = st.limiter.take(who.key_id, who.per_minute)
    if wait > 0:
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
    """Live deltas only when the final text is exactly their concatenation (see streaming.py)."""
    doc = parsed.document
    if isinstance(doc, ChatInputDocument):
        p = doc.params
        return not p.tools and not p.logprobs
    cp = doc.params
    return cp.logprobs is None and not cp.echo and (cp.best_of or 1) <= (cp.n or 1)


class _Inference:
    """One OpenAI call turned into an on-chain request and answered."""

    def __init__(self, st: GatewayState, kind: str, parsed: ParsedRequest) -> None:
        self.st = st
        self.kind = kind
        self.parsed = parsed

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
        pending = await st.backend.submit(chain_id, doc, self.parsed.document_bytes, model)
        st.metrics.pending.inc()
        headers = {REQUEST_ID_HEADER: str(pending.request_id)}
        timeout = st.settings.gateway.request_timeout_s
        with bound(request_id=pending.request_id, chain_id=chain_id):
            log.info(
                "inference_submitted",
                model=doc.model,
                stream=self.parsed.stream,
                infer_tx=pending.submission.infer_tx,
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


def _endpoint_label(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def create_app(
    settings: Settings,
    *,
    backend: InferenceBackend | None = None,
    store: ContentStore | None = None,
    keys: KeyStore | None = None,
    limiter: RateLimiter | None = None,
    chains: list[ChainSettings] | None = None,
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
    state = GatewayState(
        settings=settings,
        backend=backend,
        keys=keys or KeyStore(settings.gateway.keys_path or default_keys_path(settings.data_dir)),
        limiter=limiter or RateLimiter(),
        metrics=metrics,
    )
    backend.add_rejection_listener(lambda _reason: metrics.rejected.inc())
    state.keys.list()  # fail at startup, not on the first request, if the keys file is corrupt
    content_store = store

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.backend.start()
        try:
            yield
        finally:
            await state.backend.close()
            if own_store:
                await content_store.close()

    app = FastAPI(title="inferd gateway", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state
    app.add_exception_handler(GatewayError, handle_gateway_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        endpoint = _endpoint_label(request)
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)
        return response

    from node.content.trustless import trustless_router

    app.include_router(trustless_router(content_store))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, _: Authenticated) -> Response:
        parsed = parse_chat_request(parse_json_body(await request.body()))
        return await _Inference(_state(request), "chat", parsed).run()

    @app.post("/v1/completions")
    async def completions(request: Request, _: Authenticated) -> Response:
        parsed = parse_completion_request(parse_json_body(await request.body()))
        return await _Inference(_state(request), "completion", parsed).run()

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
        _: Authenticated,
        request_id: Annotated[int, Path(ge=0)],
        chain_id: Annotated[int | None, Query()] = None,
    ) -> dict[str, Any]:
        return await state.backend.get_inference(_pick_chain(chain_id), request_id)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            detail = await state.backend.health()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        ok = bool(detail.get("ok", True))
        return JSONResponse(
            {"status": "ok" if ok else "degraded", **detail},
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
