"""Typed gateway errors and OpenAI's error envelope, so every failure answers like api.openai.com.

Each error carries its HTTP status, OpenAI `type`, `code` and `param`; the app's exception
handlers turn them into `{"error": {"message", "type", "param", "code"}}`. Errors about a request
that reached the chain also carry its on-chain `request_id`, so the caller can look it up later
(`GET /v1/inferences/{id}`, `inferd verify --request-id`).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

REQUEST_ID_HEADER = "X-Inferd-Request-Id"


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses fix status, type and code."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        request_id: int | None = None,
        headers: dict[str, str] | None = None,
        spent_wei: int | None = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.request_id = request_id
        self.headers = dict(headers or {})
        self.spent_wei = spent_wei
        """What the failed call cost the gateway's wallet (gas of a reverted tx); None if unknown."""

    def envelope(self) -> dict[str, Any]:
        """The OpenAI error body; `request_id` is added only for requests that reached the chain."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.request_id is not None:
            error["request_id"] = str(self.request_id)
        return {"error": error}

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.request_id is not None:
            headers[REQUEST_ID_HEADER] = str(self.request_id)
        return headers


class InvalidRequest(GatewayError):
    """400: the body is malformed or a parameter is out of range; `param` names it."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class UnsupportedParameter(InvalidRequest):
    """400: a parameter OpenAI accepts that this network cannot honour (never silently ignored)."""

    code = "unsupported_parameter"

    def __init__(self, param: str, why: str) -> None:
        super().__init__(f"Unsupported parameter: '{param}' is not supported here: {why}", param=param)


class UnsupportedValue(InvalidRequest):
    """400: a value OpenAI accepts for a parameter that this network cannot honour."""

    code = "unsupported_value"

    def __init__(self, param: str, value: object, why: str) -> None:
        super().__init__(f"Unsupported value: '{param}' does not support {value!r} here: {why}", param=param)


class AuthenticationError(GatewayError):
    """401: no API key, or an unknown or revoked one."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    """404: an unknown route or inference id."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """404: the model is not registered on the selected chain."""

    code = "model_not_found"

    def __init__(self, model: str, chain_id: int | None = None) -> None:
        where = f" on chain {chain_id}" if chain_id is not None else ""
        super().__init__(
            f"The model `{model}` does not exist{where}; GET /v1/models lists the registered ones.",
            param="model",
        )


class RateLimited(GatewayError):
    """429: this key's token bucket is empty; `Retry-After` says when to come back."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, retry_after_s: float, limit_per_minute: int) -> None:
        wait = max(1, int(retry_after_s + 0.999))
        super().__init__(
            f"Rate limit of {limit_per_minute} requests per minute reached for this API key; "
            f"retry in {wait}s.",
            headers={"Retry-After": str(wait)},
        )
        self.retry_after_s = retry_after_s


class PayloadTooLarge(GatewayError):
    """413: the body is over the gateway's byte limit (refused while reading, never buffered whole)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BodyTimeout(GatewayError):
    """408: the client did not finish sending its body in time (a slow sender holds no slot forever)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class ConcurrencyLimited(GatewayError):
    """429: this key already has its maximum number of requests in flight."""

    status = 429
    type = "rate_limit_error"
    code = "concurrency_limit_exceeded"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This API key already has {limit} requests in flight, its concurrency limit; "
            "wait for one to finish.",
            headers={"Retry-After": "1"},
        )


class InsufficientQuota(GatewayError):
    """429: this key's daily spend budget (fees plus gas) is used up until the next UTC day."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, budget_wei: int, retry_after_s: int) -> None:
        super().__init__(
            f"You exceeded this API key's daily budget of {budget_wei} wei (request fees plus gas); "
            "it resets at 00:00 UTC.",
            headers={"Retry-After": str(max(1, retry_after_s))},
        )


class ServiceUnavailable(GatewayError):
    """503: no miner serves the model, or the chain / content store cannot be reached."""

    status = 503
    type = "api_error"
    code = "service_unavailable"


class GatewayBudgetExhausted(ServiceUnavailable):
    """503: the gateway wallet's daily spend cap (all keys together, fees plus gas) is reached."""

    code = "gateway_budget_exhausted"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "This gateway has spent its daily budget for on-chain requests; it resets at 00:00 UTC.",
            headers={"Retry-After": str(max(1, retry_after_s))},
        )


class UpstreamError(GatewayError):
    """502: the request reached the chain but no verifiable output came back (or it was refunded)."""

    status = 502
    type = "api_error"
    code = "bad_gateway"


class UpstreamTimeout(GatewayError):
    """504: no result was finalized on chain before the deadline."""

    status = 504
    type = "timeout_error"
    code = "timeout"


class TamperedOutput(UpstreamError):
    """An output whose digest or signature does not match the chain: never answered as valid."""

    code = "output_verification_failed"


def error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.response_headers())


def _loc_to_param(loc: tuple[int | str, ...] | list[int | str]) -> str | None:
    parts = list(loc[1:]) if loc and loc[0] in ("body", "path", "query", "header") else list(loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


async def handle_gateway_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def handle_validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for a bad path/query parameter becomes OpenAI's 400 naming the parameter."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = _loc_to_param(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid request"))
    return error_response(InvalidRequest(f"{param}: {message}" if param else message, param=param))


async def handle_http_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's 404/405 for unknown routes, in the OpenAI envelope."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        err: GatewayError = NotFound(f"Unknown route: {exc.detail}" if exc.detail else "Not found")
        err.code = "unknown_url"
    else:
        err = GatewayError(str(exc.detail))
        err.status = exc.status_code
        err.type = "invalid_request_error"
        err.code = None
    return error_response(err)


async def handle_unexpected(_: Request, exc: Exception) -> JSONResponse:
    """Anything else is a 500 with a generic message: internals are logged, not returned."""
    from node.log import get_logger

    get_logger("gateway").error("unhandled_error", error=repr(exc), exc_info=exc)
    return error_response(GatewayError("The gateway hit an internal error; see its logs."))


__all__ = [
    "REQUEST_ID_HEADER",
    "AuthenticationError",
    "BodyTimeout",
    "ConcurrencyLimited",
    "GatewayBudgetExhausted",
    "GatewayError",
    "InsufficientQuota",
    "InvalidRequest",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "TamperedOutput",
    "UnsupportedParameter",
    "UnsupportedValue",
    "UpstreamError",
    "UpstreamTimeout",
    "error_response",
    "handle_gateway_error",
    "handle_http_error",
    "handle_unexpected",
    "handle_validation_error",
]
