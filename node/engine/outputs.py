"""vLLM's finished sequences laid out as an output document: choices, logprobs, usage, errors.

This is the other end of the adapter from `jobs`: what the protocol hashes and miners commit to, so
every byte must follow from the input, the model and the tokens alone. Logprobs are clamped to
`MIN_LOGPROB` (documents reject -inf, as vLLM's OpenAI server clamps), `best_of` keeps the
candidates with the best mean token logprob (ties by index), a choice's text and tool calls come
from `tool_calls.ToolCallReader`, and an error document's message never carries vLLM's own text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from node.content.documents import (
    AssistantOutput,
    ChatChoice,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    FinishReason,
    OutputDocument,
    OutputError,
    OutputObject,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from node.engine import chat
from node.engine.errors import EngineError
from node.engine.jobs import Job
from node.engine.params import ParamError
from node.engine.tool_calls import ToolCallReader

MIN_LOGPROB = -9999.0  # documents reject -inf; vLLM's OpenAI server clamps the same way


def clamp(logprob: float) -> float:
    if math.isnan(logprob):
        return MIN_LOGPROB
    return max(float(logprob), MIN_LOGPROB)


def finish_reason(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


def best(comps: Sequence[Any], n: int) -> list[Any]:
    """The n candidates with the highest mean token logprob (ties: lower index first)."""

    def score(c: Any) -> float:
        count = max(len(c.token_ids), 1)
        total = c.cumulative_logprob if c.cumulative_logprob is not None else -math.inf
        return float(total) / count

    return sorted(comps, key=lambda c: (-score(c), c.index))[:n]


class OutputBuilder:
    """Builds one model's output documents (see module docstring)."""

    def __init__(
        self, tokenizer: Any, reader: ToolCallReader, *, model_name: str, system_fingerprint: str
    ) -> None:
        self.tokenizer = tokenizer
        self.reader = reader
        self.model_name = model_name
        self.system_fingerprint = system_fingerprint

    def error_doc(self, meta: dict[str, Any], exc: Exception, obj: OutputObject) -> OutputDocument:
        if isinstance(exc, ParamError):
            error = OutputError(code=exc.code, message=exc.message)
        elif isinstance(exc, chat.ChatRenderError):
            error = OutputError(code="invalid_request", message=str(exc))
        else:
            error = OutputError.from_exception(exc)
        return OutputDocument.for_error(
            model=self.model_name, system_fingerprint=self.system_fingerprint, error=error, object=obj, **meta
        )

    def build(
        self,
        job: Job,
        meta: dict[str, Any],
        finals: Mapping[int, Mapping[int, Any]],
        prompt_lps: Mapping[int, Any],
    ) -> OutputDocument:
        choices: list[ChatChoice | CompletionChoice] = []
        completion_tokens = 0
        prompt_tokens = sum(len(p) for p in job.prompts)
        n = job.spec.n
        for index in range(len(job.prompts)):
            comps = [finals[index][k] for k in sorted(finals[index])]
            if len(comps) != job.spec.samples:
                raise EngineError(f"vLLM returned {len(comps)} of {job.spec.samples} sequences")
            completion_tokens += sum(len(c.token_ids) for c in comps)
            if job.spec.best_of is not None:
                comps = best(comps, n)
            for j, comp in enumerate(comps):
                choice = index * n + j
                if job.is_chat:
                    choices.append(self.chat_choice(job, choice, comp))
                else:
                    choices.append(self.completion_choice(job, index, choice, comp, prompt_lps.get(index)))
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return OutputDocument(
            model=self.model_name,
            system_fingerprint=self.system_fingerprint,
            object=job.object,
            choices=choices,
            usage=usage,
            **meta,
        )

    def chat_choice(self, job: Job, index: int, comp: Any) -> ChatChoice:
        parsed = self.reader.parse(job, comp.text, comp.token_ids)
        calls = chat.make_tool_calls(parsed, job.digest, index)
        finish: FinishReason = finish_reason(comp.finish_reason)
        if calls and finish != "length":
            finish = "tool_calls"
        logprobs = None
        if job.want_logprobs and comp.logprobs is not None:
            k = job.spec.logprobs or 0
            logprobs = ChatLogprobs(
                content=[
                    self.token_logprob(tid, lp, k)
                    for tid, lp in zip(comp.token_ids, comp.logprobs, strict=False)
                ]
            )
        message = AssistantOutput(
            content=parsed.content, tool_calls=calls, reasoning_content=parsed.reasoning
        )
        return ChatChoice(index=index, message=message, finish_reason=finish, logprobs=logprobs)

    def token_text(self, token_id: int, entry: Any) -> str:
        decoded = getattr(entry, "decoded_token", None)
        return decoded if isinstance(decoded, str) else str(self.tokenizer.decode([token_id]))

    def token_logprob(self, token_id: int, entries: Mapping[int, Any], k: int) -> TokenLogprob:
        own = entries[token_id]
        token = self.token_text(token_id, own)
        tops = sorted(
            ((tid, e) for tid, e in entries.items() if e.rank is not None and e.rank <= k),
            key=lambda x: x[1].rank,
        )
        return TokenLogprob(
            token=token,
            logprob=clamp(own.logprob),
            bytes=list(token.encode("utf-8")),
            top_logprobs=[
                TopLogprob(
                    token=(t := self.token_text(tid, e)),
                    logprob=clamp(e.logprob),
                    bytes=list(t.encode("utf-8")),
                )
                for tid, e in tops[:k]
            ],
        )

    def completion_choice(
        self, job: Job, prompt_index: int, index: int, comp: Any, prompt_logprobs: Any
    ) -> CompletionChoice:
        prefix = job.prompt_texts[prompt_index] if job.echo else ""
        logprobs = None
        if job.want_logprobs and comp.logprobs is not None:
            k = job.spec.logprobs or 0
            tokens: list[str] = []
            token_lps: list[float | None] = []
            tops: list[dict[str, float] | None] = []
            if job.echo:
                prompt_ids = job.prompts[prompt_index]
                plps = prompt_logprobs or [None] * len(prompt_ids)
                for tid, entries in zip(prompt_ids, plps, strict=False):
                    if entries is None:
                        tokens.append(str(self.tokenizer.decode([tid])))
                        token_lps.append(None)
                        tops.append(None)
                    else:
                        self._legacy_entry(tid, entries, k, tokens, token_lps, tops)
            for tid, entries in zip(comp.token_ids, comp.logprobs, strict=False):
                self._legacy_entry(tid, entries, k, tokens, token_lps, tops)
            offsets: list[int] = []
            pos = 0
            for tok in tokens:
                offsets.append(pos)
                pos += len(tok)
            logprobs = CompletionLogprobs(
                tokens=tokens, token_logprobs=token_lps, top_logprobs=tops, text_offset=offsets
            )
        return CompletionChoice(
            index=index,
            text=prefix + comp.text,
            finish_reason=finish_reason(comp.finish_reason),
            logprobs=logprobs,
        )

    def _legacy_entry(
        self,
        token_id: int,
        entries: Mapping[int, Any],
        k: int,
        tokens: list[str],
        token_lps: list[float | None],
        tops: list[dict[str, float] | None],
    ) -> None:
        own = entries[token_id]
        tokens.append(self.token_text(token_id, own))
        token_lps.append(clamp(own.logprob))
        ranked = sorted(
            ((tid, e) for tid, e in entries.items() if e.rank is not None and e.rank <= k),
            key=lambda x: x[1].rank,
        )
        tops.append({self.token_text(tid, e): clamp(e.logprob) for tid, e in ranked[:k]})


__all__ = ["MIN_LOGPROB", "OutputBuilder", "best", "clamp", "finish_reason"]
