"""A trustless-gateway route over a `ContentStore`, so miners can read inputs without a Kubo.

Implements the raw-block part of the IPFS Trustless Gateway spec: `GET|HEAD /ipfs/{cid}` with
`?format=raw` or `Accept: application/vnd.ipld.raw` (`format` wins when both are given). This is a
strict trustless gateway: no CARs, no paths, no deserialized responses. Status codes: 400 for a
malformed CID, a path, a missing `Accept` or an unsupported `format`; 406 for an `Accept` without
the raw type; 404 for a block the store does not have; 412 for `Cache-Control: only-if-cached`
and no block; 304 for a matching `If-None-Match`. Mount with `app.include_router(...)`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from node.content.cid import normalize_cid
from node.content.errors import (
    BackendUnavailable,
    ContentError,
    ContentNotFound,
    InvalidCID,
    UnsupportedCodec,
)
from node.content.gateway import RAW_MEDIA_TYPE
from node.content.store import ContentStore

IMMUTABLE_CACHE = "public, max-age=29030400, immutable"


def _text(status: int, message: str) -> Response:
    return Response(
        message + "\n",
        status_code=status,
        media_type="text/plain; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def _accepts_raw(accept: str) -> bool:
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() != RAW_MEDIA_TYPE:
            continue
        weights = [p for p in params if p.lower().startswith("q=")]
        try:
            if weights and float(weights[0][2:]) <= 0:
                continue
        except ValueError:
            continue
        return True
    return False


def _negotiate(request: Request) -> Response | None:
    """None when the request asks for a raw block, else the error response to send."""
    fmt = request.query_params.get("format")
    if fmt is not None:
        if fmt == "raw":
            return None
        return _text(
            400, f"format={fmt} is not supported here: this gateway serves raw blocks only (format=raw)"
        )
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return _text(400, f"strict trustless gateway: send format=raw or Accept: {RAW_MEDIA_TYPE}")
    if _accepts_raw(accept):
        return None
    return _text(406, f"not acceptable: {accept!r}; this gateway serves only {RAW_MEDIA_TYPE} (format=raw)")


def trustless_router(store: ContentStore) -> APIRouter:
    """An APIRouter serving `store`'s blocks at `/ipfs/{cid}` per the trustless gateway spec."""
    router = APIRouter(tags=["ipfs"])

    @router.api_route("/ipfs/{cid}", methods=["GET", "HEAD"], response_class=Response)
    async def get_block(cid: str, request: Request) -> Response:
        refused = _negotiate(request)
        if refused is not None:
            return refused
        try:
            key = normalize_cid(cid)
        except InvalidCID as exc:
            return _text(400, str(exc))
        except UnsupportedCodec as exc:
            return _text(404, str(exc))
        etag = f'"{key}.raw"'
        headers = {
            "Cache-Control": IMMUTABLE_CACHE,
            "ETag": etag,
            "X-Content-Type-Options": "nosniff",
            "X-Ipfs-Path": f"/ipfs/{cid}",
            "X-Ipfs-Roots": key,
            "Vary": "Accept",
        }
        wanted_tags = {t.strip() for t in request.headers.get("if-none-match", "").split(",")}
        if etag in wanted_tags and await store.has(key):
            return Response(status_code=304, headers=headers)
        only_cached = "only-if-cached" in request.headers.get("cache-control", "").lower()
        if only_cached and not await store.has(key):
            return _text(412, f"block {key} is not in this gateway's store (only-if-cached)")
        try:
            data = await store.get(key)
        except ContentNotFound as exc:
            return _text(404, str(exc))
        except BackendUnavailable as exc:
            return _text(502, str(exc))
        except ContentError as exc:  # IntegrityError, DocumentTooLarge: the store is broken
            return _text(500, f"cannot serve {key}: {exc}")
        headers["Content-Disposition"] = f'attachment; filename="{key}.bin"'
        headers["Content-Length"] = str(len(data))
        body = b"" if request.method == "HEAD" else data
        return Response(body, media_type=RAW_MEDIA_TYPE, headers=headers)

    @router.api_route("/ipfs/{cid}/{path:path}", methods=["GET", "HEAD"], response_class=Response)
    async def get_path(cid: str, path: str) -> Response:
        return _text(400, "paths are not supported: this gateway serves raw blocks at /ipfs/{cid} only")

    return router


__all__ = ["IMMUTABLE_CACHE", "trustless_router"]
