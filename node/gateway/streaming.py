"""Server-sent events for `stream: true`, relaying the miner's MQTT deltas and ending with the
verified result.

Deltas are unverified: they are relayed for latency, and the stream only *ends well* (a chunk with
`finish_reason` and `onchain_data`, then `[DONE]`) once the output document matches the chain, or,
for a request answered on the signed result, once that checks out (`settlement: pending`, `pending.py`).
If what was streamed is not a prefix of the verified text (a lying miner, or lost QoS-0 deltas),
the stream ends with an `error` event instead, which the OpenAI SDK raises as an APIError.
Without a broker there are no deltas: the whole verified text is sent as one chunk at the end.
Requests with logprobs are not relayed live (logprobs must match the verified tokens): they get
their content in the final chunks.

Tool calls: live text is safe to relay because a mismatch can still end the stream with an error,
but a tool-call fragment, once sent, is part of the call every OpenAI client reassembles (it
concatenates `arguments` per index) and cannot be taken back. The engine's live fragments are only
a preview: an honest miner's preview can diverge from its document (the final parse finds the text
malformed and makes it plain content), so relaying them live would make honest answers end in
errors. So the gateway **buffers tool-call fragments until the document is verified**, then sends
them before the final chunk: the miner's own fragments when they reassemble to exactly the
document's calls (ids, names, arguments), otherwise the document's calls (each a first entry with
id, type, name and empty arguments, then its arguments). Either way a client ends with exactly the
document's calls, the final chunk (with `finish_reason`, `"tool_calls"` when the document says so)
carries no tool calls, and a non-streamed request for the same input answers the same calls. The
buffer is bounded (`MAX_BUFFERED_CALL_BYTES`, the size of a whole output document); past it the
document's calls are sent instead. Text before the calls is still relayed live (the engine only
previews content its document provably starts with). A reasoning model's `reasoning_content` is
sent once verified too, in its own chunk, as OpenAI-compatible servers stream it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from node.content.documents import ChatChoice, CompletionChoice
from node.gateway.errors import GatewayError, TamperedOutput
from node.gateway.pending import PendingInference
from node.gateway.records import Delta, ToolCallFragment, VerifiedResult
from node.gateway.responses import completion_id, onchain_data, output_error, usage_json

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n\n"


MAX_BUFFERED_CALL_BYTES = 1 << 20
"""Tool-call fragment bytes one stream buffers (all choices): an output document's size limit."""


@dataclass
class _ChoiceState:
    sent: str = ""
    calls: list[tuple[ToolCallFragment, ...]] = field(default_factory=list)
    """Tool-call fragments received, one tuple per delta, held back until the result is verified."""


@dataclass
class _CallBuffer:
    """The bound on buffered tool-call fragments, shared by a stream's choices."""

    left: int = MAX_BUFFERED_CALL_BYTES
    overflowed: bool = False

    def keep(self, state: _ChoiceState, fragments: tuple[ToolCallFragment, ...]) -> None:
        cost = sum(f.nbytes for f in fragments)
        if self.overflowed or cost > self.left:
            self.overflowed = True  # the document's calls are sent instead (see module doc)
            return
        self.left -= cost
        state.calls.append(fragments)


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
        reasoning: str | None = None,
    ) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if reasoning is not None:
                delta["reasoning_content"] = reasoning
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
    calls = _CallBuffer()
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
            if not relay_live or state is None:
                continue
            if delta.tool_calls:
                calls.keep(state, delta.tool_calls)
            if broken or not delta.text:
                continue
            state.sent += delta.text
            yield writer.chunk([writer.text_choice(delta.choice, delta.text)])
        for delta in await _leftovers(pending, getter):  # arrived with the result: tool calls count
            state = states.get(delta.choice)
            if relay_live and state is not None and delta.tool_calls:
                calls.keep(state, delta.tool_calls)
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
            if isinstance(choice, ChatChoice) and choice.message.reasoning_content:  # verified only
                yield writer.chunk(
                    [writer.text_choice(choice.index, None, reasoning=choice.message.reasoning_content)]
                )
            if rest or logprobs is not None:
                yield writer.chunk([writer.text_choice(choice.index, rest or None, logprobs=logprobs)])
            for entries in tool_call_deltas(choice, [] if calls.overflowed else state.calls):
                yield writer.chunk([writer.text_choice(choice.index, None, tool_calls=entries)])
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


async def _leftovers(pending: PendingInference, getter: asyncio.Future[Delta] | None) -> list[Delta]:
    """Deltas received but not yet read when the result arrived (their text is in the final chunk)."""
    left: list[Delta] = []
    if getter is not None:
        if getter.done() and not getter.cancelled():
            left.append(getter.result())
        else:
            getter.cancel()
    while not pending.deltas.empty():
        left.append(await pending.next_delta())
    return left


def _logprobs_json(choice: ChatChoice | CompletionChoice) -> Any:
    if choice.logprobs is None:
        return None
    return choice.logprobs.model_dump(mode="json")


def document_calls(choice: ChatChoice | CompletionChoice) -> list[tuple[str, str, str]]:
    """The verified choice's tool calls as (id, name, arguments)."""
    if not isinstance(choice, ChatChoice) or not choice.message.tool_calls:
        return []
    return [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls]


def reassemble(received: list[tuple[ToolCallFragment, ...]]) -> list[tuple[str, str, str]] | None:
    """The calls an OpenAI client builds from these fragments, or None if they break OpenAI's order
    (a call opens with its id and name at the next free index, then only appends arguments)."""
    built: list[list[str]] = []
    for fragment in (f for fragments in received for f in fragments):
        if fragment.name is not None and fragment.id is not None and fragment.index == len(built):
            built.append([fragment.id, fragment.name, fragment.arguments])
        elif fragment.name is None and fragment.index < len(built):
            built[fragment.index][2] += fragment.arguments
        else:
            return None
    return [(i, n, a) for i, n, a in built]


def tool_call_deltas(
    choice: ChatChoice | CompletionChoice, received: list[tuple[ToolCallFragment, ...]]
) -> list[list[dict[str, Any]]]:
    """The `delta.tool_calls` lists to send, one per chunk, that add up to the document's calls:
    the buffered fragments when they reassemble to exactly those calls, else the document's own."""
    calls = document_calls(choice)
    if not calls:
        return []
    if reassemble(received) == calls:
        return [[f.entry() for f in fragments] for fragments in received if fragments]
    deltas: list[list[dict[str, Any]]] = []
    for index, (call_id, name, arguments) in enumerate(calls):
        deltas.append([ToolCallFragment(index, call_id, name, "").entry()])
        if arguments:
            deltas.append([ToolCallFragment(index, arguments=arguments).entry()])
    return deltas


__all__ = [
    "DONE",
    "MAX_BUFFERED_CALL_BYTES",
    "ChunkWriter",
    "reassemble",
    "sse",
    "stream_events",
    "tool_call_deltas",
]
