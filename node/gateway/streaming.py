"""Server-sent events for `stream: true`, relaying the miner's MQTT deltas and ending with the
verified result.

Deltas are unverified: they are relayed for latency, and the stream only *ends well* (a chunk with
`finish_reason` and `onchain_data`, then `[DONE]`) once the output document matches the chain.
If what was streamed is not a prefix of the verified text (a lying miner, or lost QoS-0 deltas),
the stream ends with an `error` event instead, which the OpenAI SDK raises as an APIError.
Without a broker there are no deltas: the whole verified text is sent as one chunk at the end.
Requests with tools or logprobs are not relayed live (tool-call markup is parsed out of the final
text, logprobs must match the verified tokens): they get their content in the final chunks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from node.content.documents import ChatChoice, CompletionChoice
from node.gateway.errors import GatewayError, TamperedOutput
from node.gateway.pending import PendingInference
from node.gateway.records import Delta, VerifiedResult
from node.gateway.responses import completion_id, onchain_data, output_error, usage_json

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n\n"


@dataclass
class _ChoiceState:
    sent: str = ""


class ChunkWriter:
    """Builds `chat.completion.chunk` / `text_completion` chunks with a fixed id, created and model."""

    def __init__(self, kind: str, pending: PendingInference, model: str, include_usage: bool) -> None:
        sub = pending.submission
        self.kind = kind
        self.id = completion_id(kind, sub)
        self.created = sub.created or int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.fingerprint: str | None = None

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = None
        body.update(extra)
        return sse(body)

    def text_choice(
        self,
        index: int,
        text: str | None,
        *,
        role: bool = False,
        finish_reason: str | None = None,
        logprobs: Any = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_calls
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}


def _error_event(exc: GatewayError) -> bytes:
    return sse(exc.envelope())


async def stream_events(
    kind: str,
    pending: PendingInference,
    *,
    model: str,
    n: int,
    include_usage: bool,
    relay_live: bool,
    timeout_s: float,
    keepalive_s: float = 15.0,
    on_finish: Callable[[VerifiedResult | None, GatewayError | None], None] | None = None,
) -> AsyncIterator[bytes]:
    """The SSE byte stream for one request; always releases `pending` at the end."""
    writer = ChunkWriter(kind, pending, model, include_usage)
    states = {i: _ChoiceState() for i in range(n)}
    deadline = time.monotonic() + timeout_s
    result: VerifiedResult | None = None
    error: GatewayError | None = None
    try:
        if kind == "chat":
            yield writer.chunk([writer.text_choice(i, "", role=True) for i in range(n)])
        future = pending.result_future
        getter: asyncio.Future[Delta] | None = None
        last_seq = -1
        broken = False
        while not future.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if getter is None:
                getter = asyncio.ensure_future(pending.next_delta())
            waitables: set[asyncio.Future[Any]] = {getter, future}
            done, _ = await asyncio.wait(
                waitables, timeout=min(keepalive_s, remaining), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                yield KEEPALIVE
                continue
            if getter not in done:
                continue
            delta: Delta = getter.result()
            getter = None
            # `seq` counts every delta of the request (all choices) from 0: a gap or a repeat means
            # a lost or reordered QoS-0 message, so live relaying stops and the final chunk catches up.
            if delta.seq != last_seq + 1:
                broken = True
            last_seq = max(last_seq, delta.seq)
            state = states.get(delta.choice)
            if not relay_live or broken or state is None or not delta.text:
                continue
            state.sent += delta.text
            yield writer.chunk([writer.text_choice(delta.choice, delta.text)])
        if getter is not None:
            getter.cancel()
        try:
            result = await pending.wait(max(0.0, deadline - time.monotonic()))
        except GatewayError as exc:
            error = exc
        if result is not None:
            error = output_error(result)
        if error is not None or result is None:
            assert error is not None
            yield _error_event(error)
            return
        writer.fingerprint = result.output.system_fingerprint
        final_choices: list[dict[str, Any]] = []
        for choice in result.output.choices:
            state = states.setdefault(choice.index, _ChoiceState())
            text = choice.message.content if isinstance(choice, ChatChoice) else choice.text
            text = text or ""
            if not text.startswith(state.sent):
                error = TamperedOutput(
                    f"The streamed text of choice {choice.index} does not match the output verified "
                    f"on chain for request {pending.request_id}; discard what was streamed and fetch "
                    f"GET /v1/inferences/{pending.request_id}.",
                    request_id=pending.request_id,
                )
                yield _error_event(error)
                return
            rest = text[len(state.sent) :]
            logprobs = _logprobs_json(choice)
            tool_calls = _tool_calls_json(choice)
            if rest or logprobs is not None or tool_calls:
                yield writer.chunk(
                    [writer.text_choice(choice.index, rest or None, logprobs=logprobs, tool_calls=tool_calls)]
                )
            final_choices.append(
                writer.text_choice(choice.index, None, finish_reason=choice.finish_reason or "stop")
            )
        evidence = {"onchain_data": onchain_data(result.submission, result), "signature": result.signature}
        yield writer.chunk(final_choices, **evidence)
        if include_usage:
            usage = usage_json(result.output)
            body_extra: dict[str, Any] = dict(evidence)
            writer.include_usage = False
            yield writer.chunk([], usage=usage, **body_extra)
        yield DONE
    finally:
        pending.release()
        if on_finish is not None:
            on_finish(result, error)


def _logprobs_json(choice: ChatChoice | CompletionChoice) -> Any:
    if choice.logprobs is None:
        return None
    return choice.logprobs.model_dump(mode="json")


def _tool_calls_json(choice: ChatChoice | CompletionChoice) -> list[dict[str, Any]] | None:
    if not isinstance(choice, ChatChoice) or not choice.message.tool_calls:
        return None
    return [{"index": i, **call.model_dump(mode="json")} for i, call in enumerate(choice.message.tool_calls)]


__all__ = ["DONE", "ChunkWriter", "sse", "stream_events"]
