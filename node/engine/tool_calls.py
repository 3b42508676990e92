"""Which reader turns a chat choice's generated text into content and tool calls, and its live deltas.

A chat job is read back in one of four ways, fixed when it is prepared (`jobs.ParseMode`): harmony
models by their own token format (`harmony`), a request with tools in `auto` by the model family's
vLLM tool parser (`tool_parsers`), a forced call (`required` or a named function) by the JSON its
grammar guarantees (`chat.parse_forced_call`), anything else as plain content. The choice of reader,
the `parallel_tool_calls: false` rule (the first call as parsed, the same on every miner) and the
live tool-call stream of a choice live here, so the engine adapter only moves tokens and the
document builder only lays out what this module parsed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from node.content.documents import ChatChoice, ChatInputDocument, Tool
from node.engine import chat, tool_parsers
from node.engine.errors import EngineError
from node.engine.jobs import Job


def tools_of(job: Job) -> list[Tool]:
    """The tools a chat job offered (none for completions)."""
    return list(job.doc.params.tools or []) if isinstance(job.doc, ChatInputDocument) else []


class ToolCallReader:
    """Reads the tool calls of one model's chat choices (harmony, its tool parser, forced calls)."""

    def __init__(self, harmony: Any, tool_parser: tool_parsers.ToolCallParser | None) -> None:
        self.harmony = harmony
        self.tool_parser = tool_parser

    @property
    def skip_special_tokens(self) -> bool:
        """Whether text for the tool parser may drop special tokens (some parsers need them)."""
        return self.tool_parser is None or self.tool_parser.skip_special_tokens

    def parse(self, job: Job, text: str, token_ids: Sequence[int]) -> chat.ParsedOutput:
        """A finished choice's content, reasoning and tool calls, by the job's parse mode."""
        if job.mode == "harmony":
            parsed: chat.ParsedOutput = self.harmony.parse(list(token_ids), job.tool_names)
        elif job.mode == "tools" and self.tool_parser is not None:
            parsed = self.tool_parser.parse(text, tools_of(job))
        elif job.mode == "forced":
            parsed = chat.parse_forced_call(text, job.tool_names)
        else:
            parsed = chat.ParsedOutput(content=text)
        if job.single_call:
            parsed.tool_calls = parsed.tool_calls[:1]  # the first, as parsed: the same on every miner
        return parsed

    def stream(self, job: Job, choice: int) -> tool_parsers.ToolCallStream:
        """Live tool-call deltas for one choice (ids as the document will have them)."""
        if self.tool_parser is None:
            raise EngineError("tool-call streaming without a tool parser")
        call_id = functools.partial(chat.tool_call_id, job.digest, choice)
        return self.tool_parser.stream(tools_of(job), call_id)


def finish_stream(stream: tool_parsers.ToolCallStream, choice: ChatChoice) -> dict[str, Any] | None:
    """The delta that completes a choice's live tool-call deltas into its document message."""
    calls = [(tc.function.name, tc.function.arguments) for tc in choice.message.tool_calls or []]
    return stream.finish(choice.message.content, calls)


__all__ = ["ToolCallReader", "finish_stream", "tools_of"]
