"""OpenAI response objects built from a verified output document, plus the on-chain evidence.

The `choices` come from the output document unchanged (they already are OpenAI choice objects), so
what the client reads is byte-for-byte what the chain's digest commits to; `id` and `onchain_data`
tie the answer to its request on chain.
"""

from __future__ import annotations

import re
from typing import Any

from node.content.documents import ChatChoice, CompletionChoice, OutputDocument
from node.gateway.errors import GatewayError, InvalidRequest, UpstreamError
from node.gateway.records import Submission, VerifiedResult


def completion_id(kind: str, sub: Submission) -> str:
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return f"{prefix}-inferd-{sub.chain_id}-{sub.request_id}"


def onchain_data(sub: Submission, result: VerifiedResult | None = None) -> dict[str, Any]:
    """The evidence; `document_version` is the output document's `v`, which fixes its encoding.

    `verification` says how far the chain has checked the result (protocol v2,
    `node.chain.hub.VerificationState`: `final`, `audited` or `disputed` once answered) and
    `phase` the request's phase when it was answered; `settlement` is `final` when the answer waited
    for the chain and `pending` when it was answered on the assignee's verified signed result
    (`gateway.answer_on = "signature"`: `submit_tx` is then its commit when seen, `phase` null, and
    `GET /v1/inferences/{id}` shows the settled state); `max_tokens` and `fee_wei` are what the
    request declared and paid; `engine_class` the bytes32 class its miners run (the output's
    `system_fingerprint` is its text).
    """
    extra = result.extra if result else {}
    return {
        "chain_id": sub.chain_id,
        "hub": sub.hub,
        "request_id": sub.request_id,
        "infer_tx": sub.infer_tx,
        "submit_tx": result.submit_tx if result else None,
        "assignment_addresses": list(sub.assignees),
        "input_cid": sub.input_cid,
        "output_cid": result.output_cid if result else None,
        "document_version": result.output.v if result else None,
        # a VerifiedResult matched a finalized digest: final unless the chain said more
        "verification": extra.get("verification", "final" if result else "pending"),
        "phase": extra.get("phase", "final" if result else None),
        "settlement": extra.get("settlement", "final" if result else "pending"),
        "max_tokens": sub.max_tokens or None,
        "fee_wei": str(sub.fee),
        "engine_class": sub.engine_class,
        # a private answer's output salt (issue 16): with it the requester rebuilds the digested bytes
        **({"output_salt": result.output.salt} if result and result.output.salt else {}),
    }


def output_error(result: VerifiedResult) -> GatewayError | None:
    """A verified output that carries an error (the miner refused the input) as a gateway error."""
    err = result.output.error
    if err is None:
        return None
    rid = result.submission.request_id
    message = f"The miner answered request {rid} with an error ({err.code}): {err.message}"
    if err.code in CLIENT_ERROR_CODES:
        param = _PARAM_PREFIX.match(err.message)
        return InvalidRequest(
            message,
            code=err.code,
            request_id=rid,
            param=param.group(1).removeprefix("params.") if param else None,
        )
    return UpstreamError(message, code=err.code, request_id=rid)


CLIENT_ERROR_CODES = frozenset(
    {"invalid_request", "input_too_large", "unsupported_parameter", "unsupported_value",
     "context_length_exceeded"}
)  # fmt: skip
"""Error-document codes that blame the request (OpenAI answers them 400); the rest are 502s."""

# The engine writes a refused parameter as `name: why` (`ParamError`); documents as `field: why`.
_PARAM_PREFIX = re.compile(r"([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+|\[\d+\])*): ")


def chat_choice_json(choice: ChatChoice) -> dict[str, Any]:
    data: dict[str, Any] = choice.model_dump(mode="json")
    data["finish_reason"] = choice.finish_reason or "stop"
    data.setdefault("logprobs", None)
    message = data["message"]
    message.setdefault("refusal", None)
    return data


def completion_choice_json(choice: CompletionChoice) -> dict[str, Any]:
    data: dict[str, Any] = choice.model_dump(mode="json")
    data["finish_reason"] = choice.finish_reason or "stop"
    data.setdefault("logprobs", None)
    return data


def usage_json(output: OutputDocument) -> dict[str, Any] | None:
    return output.usage.model_dump(mode="json") if output.usage is not None else None


def build_response(kind: str, result: VerifiedResult) -> dict[str, Any]:
    """The `chat.completion` / `text_completion` body with `onchain_data` and `signature`."""
    out = result.output
    sub = result.submission
    choices: list[dict[str, Any]] = []
    for choice in out.choices:
        if isinstance(choice, ChatChoice):
            choices.append(chat_choice_json(choice))
        else:
            choices.append(completion_choice_json(choice))
    return {
        "id": completion_id(kind, sub),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": out.created,
        "model": out.model,
        "system_fingerprint": out.system_fingerprint,
        "choices": choices,
        "usage": usage_json(out),
        "onchain_data": onchain_data(sub, result),
        "signature": result.signature,
        "signer": result.signer,
    }


__all__ = [
    "build_response",
    "chat_choice_json",
    "completion_choice_json",
    "completion_id",
    "onchain_data",
    "output_error",
    "usage_json",
]
