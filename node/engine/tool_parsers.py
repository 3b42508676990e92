"""Tool calls parsed out of generated text with vLLM's own parsers, one per model family.

Models write tool calls in their family's syntax (hermes `<tool_call>` JSON, Llama 3 JSON, Mistral
`[TOOL_CALLS]`, Qwen3-Coder XML, pythonic lists ...). vLLM ships a parser for each (`ToolParserManager`),
kept up to date with the models, so inferd uses those rather than its own; this module is the thin,
defensive layer that makes them fit the protocol:

- The parser is chosen from the model's settings only (`engine.tool_parser`; `auto` reads the
  model's chat template for a family marker, hermes otherwise), never from the request or the node.
- vLLM's random tool-call ids are dropped: the caller numbers calls and derives the ids
  (`chat.tool_call_id`), so every honest miner writes the same bytes.
- Parsing never fails on hostile output: a parser exception, a call to a tool the request did not
  offer, or arguments that are not a JSON object make the whole text plain content, the same way on
  every miner (all-or-nothing, as vLLM's hermes parser does). Text nesting brackets deeper than
  `chat.MAX_NESTING` is never handed to a parser (json/ast would overflow the C stack, see
  `chat.nesting_depths`): it is plain content too, and stops the streamed preview.
- Streaming (`ToolCallStream`) turns vLLM's streaming deltas into OpenAI `tool_calls` delta dicts as
  tokens arrive, and at the end completes them from the final (non-streamed) parse, which is what
  the output document holds. Live deltas are a preview: when they cannot be completed into the
  document (malformed output the streaming parser took for a call), nothing more is sent and the
  document stands. Content is previewed live only for parsers whose document content provably
  starts with it (`LIVE_CONTENT_PARSERS`: hermes keeps the raw text before the first `<tool_call>`,
  or all of it when there is no valid call); others strip or reorder it, so their content waits for
  the last delta, and a relay that checks the live text against the document never sees a mismatch.
  Everything kept is bounded by the output, which `max_tokens` bounds, and the
  streaming parser (which may rescan all the text on every call) is fed in growing steps, so a long
  output costs O(n log n) parsing, not O(n^2) on the miner's event loop.
- No outcome may depend on the clock: a few vLLM parsers stop a regex after
  `VLLM_TOOL_PARSE_REGEX_TIMEOUT_SECONDS` (1 s) and then answer "no tool call", so a slow miner would
  answer differently from a fast one. That timeout is lifted here, and the pythonic family, whose
  gate regex backtracks super-linearly (about 0.5 s at 2 KiB, 2 s at 4 KiB on a small CPU), only
  parses outputs up to `PYTHONIC_MAX_CHARS`; longer ones are plain content, on every miner.
- vLLM's parsers log a traceback for every malformed call; model output is untrusted input here,
  not an error, so their loggers are raised to CRITICAL.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.content.documents import Tool
from node.engine.chat import MAX_NESTING, ParsedOutput, nesting_depths, too_deep, tool_json

AUTO = "auto"
DEFAULT_PARSER = "hermes"
TEMPLATE_MARKERS = (  # (marker in the chat template, vLLM parser): first match wins
    ("[TOOL_CALLS]", "mistral"),
    ("<parameter=", "qwen3_coder"),
    ("<|python_tag|>", "llama3_json"),
)

LIVE_CONTENT_PARSERS = frozenset({"hermes", "qwen3_json"})
FEED_FRACTION = 64  # feed the streaming parser once the text grew by 1/64 (at least a character)
QUIET_LOGGERS = ("vllm.tool_parsers", "vllm.parser")
REGEX_TIMEOUT_ENV = "VLLM_TOOL_PARSE_REGEX_TIMEOUT_SECONDS"
NO_TIMEOUT_S = 10**6  # never reached: the work is bounded by size instead (see module doc)
PYTHONIC_MAX_CHARS = 2048
SIZE_CAPS = {
    "pythonic": PYTHONIC_MAX_CHARS,
    "llama4_pythonic": PYTHONIC_MAX_CHARS,
    "olmo3": PYTHONIC_MAX_CHARS,
}

CallId = Callable[[int], str]


class ToolParserError(ValueError):
    """The configured tool parser does not exist or does not fit this model's tokenizer."""


def available_parsers() -> list[str]:
    """The names vLLM registers (what `engine.tool_parser` may be, besides `auto`)."""
    from vllm.tool_parsers import ToolParserManager

    return list(ToolParserManager.list_registered())


def auto_parser_name(template: str | None) -> str:
    """The parser a chat template's own tool-call syntax implies; hermes when it names none."""
    for marker, name in TEMPLATE_MARKERS:
        if template is not None and marker in template:
            return name
    return DEFAULT_PARSER


def _parser_class(name: str) -> Any:
    from vllm.tool_parsers import ToolParserManager

    try:
        return ToolParserManager.get_tool_parser(name)
    except KeyError:
        raise ToolParserError(
            f"unknown tool parser {name!r}; choose auto or one of: {', '.join(available_parsers())}"
        ) from None


def _lift_regex_timeouts() -> None:
    """Make vLLM's parsers finish their regexes: an outcome must not depend on the miner's speed."""
    os.environ[REGEX_TIMEOUT_ENV] = str(NO_TIMEOUT_S)
    import vllm.envs as envs

    cached = getattr(getattr(envs, "__getattr__", None), "cache_clear", None)
    if cached is not None:  # vLLM memoises its env reads once started in this process
        cached()


def _request(tools: Sequence[Tool]) -> Any:
    """The minimal ChatCompletionRequest vLLM parsers read: tools and tool_choice=auto."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(
        model="inferd", messages=[], tools=[tool_json(t) for t in tools], tool_choice="auto"
    )


@dataclass(frozen=True)
class ToolCallParser:
    """One vLLM tool parser bound to the model's tokenizer; see the module docstring."""

    name: str
    tokenizer: Any
    parser_class: Any
    skip_special_tokens: bool
    max_chars: int | None = None

    @classmethod
    def load(cls, setting: str, template: str | None, tokenizer: Any) -> ToolCallParser:
        """The parser for `engine.tool_parser`; `auto` falls back to hermes if its pick cannot load."""
        name = auto_parser_name(template) if setting == AUTO else setting
        try:
            return cls._load(name, tokenizer)
        except ToolParserError:
            if setting != AUTO or name == DEFAULT_PARSER:
                raise
            return cls._load(DEFAULT_PARSER, tokenizer)

    @classmethod
    def _load(cls, name: str, tokenizer: Any) -> ToolCallParser:
        parser_class = _parser_class(name)
        for logger in QUIET_LOGGERS:
            logging.getLogger(logger).setLevel(logging.CRITICAL)
        _lift_regex_timeouts()
        probe = _request([Tool.model_validate({"type": "function", "function": {"name": "probe"}})])
        try:
            parser = parser_class(tokenizer, probe.tools)
            adjusted = parser.adjust_request(probe)
        except Exception as exc:  # e.g. "could not locate the tool call token in the tokenizer"
            raise ToolParserError(f"tool parser {name!r} does not fit this model: {exc}") from exc
        # Parsers whose markers are special tokens need them kept in the decoded text.
        skip = bool(getattr(adjusted, "skip_special_tokens", True))
        return cls(
            name=name,
            tokenizer=tokenizer,
            parser_class=parser_class,
            skip_special_tokens=skip,
            max_chars=SIZE_CAPS.get(name),
        )

    def _instance(self, tools: Sequence[Tool]) -> tuple[Any, Any]:
        request = _request(tools)
        return self.parser_class(self.tokenizer, request.tools), request

    def parse(self, text: str, tools: Sequence[Tool]) -> ParsedOutput:
        """The finished text as content and (name, arguments JSON) calls; plain content if not valid."""
        if too_deep(text) or (self.max_chars is not None and len(text) > self.max_chars):
            return ParsedOutput(content=text)
        try:
            parser, request = self._instance(tools)
            info = parser.extract_tool_calls(text, request)
            calls = [(c.function.name, c.function.arguments) for c in info.tool_calls]
        except MemoryError:
            raise
        except Exception:  # a parser choking on hostile output: the text is the answer
            return ParsedOutput(content=text)
        checked = _checked_calls(calls, {t.function.name for t in tools}) if info.tools_called else None
        if not checked:
            return ParsedOutput(content=text)
        content = info.content if isinstance(info.content, str) and info.content else None
        return ParsedOutput(content=content, tool_calls=checked)

    def stream(self, tools: Sequence[Tool], call_id: CallId) -> ToolCallStream:
        """A live-delta view of one choice's generation (see `ToolCallStream`)."""
        names = {t.function.name for t in tools}
        try:
            parser, request = self._instance(tools)
        except MemoryError:
            raise
        except Exception:
            return ToolCallStream(None, None, names, call_id)
        live_content = self.name in LIVE_CONTENT_PARSERS
        return ToolCallStream(parser, request, names, call_id, self.max_chars, live_content)


def _object_arguments(arguments: Any) -> str | None:
    """Arguments as a JSON-object string (a JSON string holding one is unwrapped), else None."""
    if not isinstance(arguments, str):
        return None
    try:
        value = json.loads(arguments)
        if isinstance(value, str):
            arguments, value = value, json.loads(value)
    except (ValueError, RecursionError):  # the model can be led to write any nesting
        return None
    return arguments if isinstance(value, dict) else None


def _checked_calls(calls: list[tuple[Any, Any]], names: set[str]) -> list[tuple[str, str]] | None:
    """The calls if every one names an offered tool with object arguments; None otherwise."""
    out: list[tuple[str, str]] = []
    for name, arguments in calls:
        args = _object_arguments(arguments)
        if not isinstance(name, str) or name not in names or args is None:
            return None
        out.append((name, args))
    return out


# --------------------------------------------------------------------------- streaming


@dataclass
class _Sent:
    """One streamed call as the client has it so far."""

    name: str
    arguments: str = ""


@dataclass
class ToolCallStream:
    """OpenAI-style deltas for one choice, from vLLM's streaming parser, completed by the final parse.

    `feed` takes the cumulative text and token ids after each engine step and returns a delta dict
    or None; `finish` takes the document's message and returns the delta that completes what was
    sent into it, or None when nothing is missing or the preview diverged (see the module doc).
    Deltas: `{"role"?, "content"?, "tool_calls"?: [...]}` where a call's first entry is
    `{"index", "id", "type": "function", "function": {"name", "arguments"}}` and later ones
    `{"index", "function": {"arguments"}}`.
    """

    parser: Any
    request: Any
    names: set[str]
    call_id: CallId
    max_chars: int | None = None  # the parse's size cap: longer text is content, so stop previewing
    live_content: bool = False  # content deltas while generating (else all of it comes with `finish`)
    content: str = ""
    calls: list[_Sent] = field(default_factory=list)
    stopped: bool = False
    started: bool = False
    _text: str = ""
    _ids: int = 0
    _depth: int = 0

    def feed(self, text: str, token_ids: Sequence[int]) -> dict[str, Any] | None:
        """The delta for what the parser found new in `text`, or None."""
        if self.stopped or self.parser is None:
            return None
        if self.max_chars is not None and len(text) > self.max_chars:
            self.stopped = True
            return None
        if len(text) - len(self._text) < max(1, len(self._text) // FEED_FRACTION):
            return None  # not grown enough yet: what is left is sent by `finish` at the latest
        prev_text, prev_ids = self._text, self._ids
        if not text.startswith(prev_text):
            self.stopped = True
            return None
        deepest, self._depth = nesting_depths(text[len(prev_text) :], self._depth)
        if deepest > MAX_NESTING:
            self.stopped = True
            return None
        self._text, self._ids = text, len(token_ids)
        ids = list(token_ids)
        try:
            message = self.parser.extract_tool_calls_streaming(
                prev_text, text, text[len(prev_text) :], ids[:prev_ids], ids, ids[prev_ids:], self.request
            )
        except MemoryError:
            raise
        except Exception:  # hostile output: stop the preview, the final parse still answers
            self.stopped = True
            return None
        return self._translate(message)

    def _translate(self, message: Any) -> dict[str, Any] | None:
        if message is None:
            return None
        delta: dict[str, Any] = {}
        content = getattr(message, "content", None)
        if self.live_content and isinstance(content, str) and content:
            self.content += content
            delta["content"] = content
        entries = [e for call in getattr(message, "tool_calls", None) or [] if (e := self._entry(call))]
        if entries:
            delta["tool_calls"] = entries
        return self._first(delta) if delta else None

    def _entry(self, call: Any) -> dict[str, Any] | None:
        """One vLLM DeltaToolCall as our entry (our id, checked name), or None (and stop if odd)."""
        if self.stopped:
            return None
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        arguments = getattr(function, "arguments", None) or ""
        index = getattr(call, "index", None)
        if name is None and not arguments:
            return None  # an id/type-only entry: ours are sent with the name
        if index == len(self.calls) and isinstance(name, str) and name in self.names:
            end = _json_end(arguments)
            arguments = arguments if end is None else arguments[:end]
            self.calls.append(_Sent(name=name, arguments=arguments))
            return _head(index, self.call_id(index), name, arguments)
        if isinstance(index, int) and 0 <= index < len(self.calls) and name is None:
            sent = self.calls[index].arguments
            if _json_end(sent) is not None:
                return None  # text after a finished object (a parser quirk): never part of the call
            end = _json_end(sent + arguments)
            if end is not None:
                arguments = (sent + arguments)[len(sent) : end]
            self.calls[index].arguments += arguments
            return {"index": index, "function": {"arguments": arguments}} if arguments else None
        self.stopped = True  # a call we could not complete into the document: stop previewing
        return None

    def _first(self, delta: dict[str, Any]) -> dict[str, Any]:
        if not self.started:
            self.started = True
            return {"role": "assistant", **delta}
        return delta

    def finish(self, content: str | None, calls: Sequence[tuple[str, str]]) -> dict[str, Any] | None:
        """The delta that makes the streamed deltas add up to the final message, if they can."""
        final = content or ""
        if not final.startswith(self.content) or len(self.calls) > len(calls):
            return None
        delta: dict[str, Any] = {}
        if len(final) > len(self.content):
            delta["content"] = final[len(self.content) :]
        entries: list[dict[str, Any]] = []
        for index, (name, arguments) in enumerate(calls):
            if index >= len(self.calls):
                entries.append(_head(index, self.call_id(index), name, arguments))
                continue
            sent = self.calls[index]
            if sent.name != name or not arguments.startswith(sent.arguments):
                return None
            if len(arguments) > len(sent.arguments):
                entries.append({"index": index, "function": {"arguments": arguments[len(sent.arguments) :]}})
        if entries:
            delta["tool_calls"] = entries
        if not self.started:
            delta.setdefault("content", content)
        return self._first(delta) if delta else None


_DECODER = json.JSONDecoder()


def _json_end(text: str) -> int | None:
    """Where the JSON value that `text` starts with ends, if it is whole yet (depth bounded by feed)."""
    try:
        return int(_DECODER.raw_decode(text, len(text) - len(text.lstrip()))[1])
    except (ValueError, RecursionError):
        return None


def _head(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A call's first delta entry, as OpenAI sends it."""
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


__all__ = [
    "AUTO",
    "DEFAULT_PARSER",
    "ToolCallParser",
    "ToolCallStream",
    "ToolParserError",
    "auto_parser_name",
    "available_parsers",
]
