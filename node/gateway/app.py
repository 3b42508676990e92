"""The gateway's FastAPI app: the OpenAI API over the chain.

`create_app(settings)` wires the chain-backed network (`ChainBackend`), the content store (also
served at `/ipfs/{cid}` so miners read inputs without a Kubo), API keys and rate limits. Tests pass
their own `backend` to exercise the HTTP layer without a chain. Run it with `inferd gateway serve`
or `uvicorn --factory node.gateway.app:app_from_env`.

Rate limits, in-flight slots, spend and API keys live where `node.gateway.stores` puts them: in
this process (memory, SQLite, the keys file), or in Redis when `gateway.redis_url` is set so that
several gateways behind one load balancer share them.

It is a public endpoint, so every inference call passes, in order and before it costs anything:
the key check and its rate limit (401/429, `node.gateway.caller`), then the key's in-flight limit,
the capped body read, validation and the spend budgets (`node.gateway.calls`, which also sends and
answers the call). Only the key that made a request (or an admin key) can read it back; `/healthz`
tells the public nothing but states. `node.gateway.metrics.ObserveRequests` counts and times every
response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from node.config import ChainSettings, Settings, load_settings
from node.content.store import ContentStore
from node.gateway.backend import InferenceBackend
from node.gateway.caller import Authenticated, Principal, authenticate
from node.gateway.calls import serve_inference
from node.gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    handle_gateway_error,
    handle_http_error,
    handle_unexpected,
    handle_validation_error,
)
from node.gateway.metrics import GatewayMetrics, ObserveRequests, watch_wallets
from node.gateway.mqtt import DropsCollector
from node.gateway.records import ModelInfo
from node.gateway.state import GatewayState
from node.gateway.stores import ApiKeys, RateLimits, SpendLedgers, open_stores
from node.log import get_logger
from node.supervise import LoopCollector, Supervisor

log = get_logger("gateway")


MAX_REQUEST_ID = 2**256 - 1


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
    if envelopes is not None:  # sealed private inputs for their seats (node.gateway.envelopes)
        from node.gateway.envelopes import EnvelopeRoutes, envelope_router

        accept = getattr(state.backend, "accept_private_output", None)
        app.add_middleware(EnvelopeRoutes, book=envelopes, accept=accept)  # inside ObserveRequests: counted
        app.include_router(envelope_router(envelopes))  # what EnvelopeRoutes leaves: HEAD, 405s
    app.add_middleware(ObserveRequests, metrics=metrics)

    from node.content.trustless import trustless_router

    app.include_router(trustless_router(content_store))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, who: Authenticated) -> Response:
        return await serve_inference(request, who, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request, who: Authenticated) -> Response:
        return await serve_inference(request, who, "completion")

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
