"""Chat prompts from input documents, and the shapes tool calls are parsed into.

The model's own Jinja chat template renders the conversation, in a sandbox configured like
transformers' (same filters and globals) except that `strftime_now` returns a fixed date: a prompt
must never depend on when it was rendered, or two miners would answer differently.

Rendering errors are `ChatRenderError` with a message that depends only on the input and the model
(the template's own `raise_exception` words, or a fixed text), so honest miners refuse alike.

Tools: a template that takes a `tools` argument (Qwen, Hermes, Llama 3.1 ...) gets them as is; for
one that does not (SmolLM2), the hermes-style tool block is added to the system message, and
earlier tool calls / tool results are rendered as `<tool_call>` / `<tool_response>` text. Output
tool calls are parsed by vLLM's parser for the model's family (`node.engine.tool_parsers`), except
the JSON object that structured outputs force for `required` / a named tool_choice, parsed here.
Tool-call ids are hashes of the input, the choice and the call's index (`tool_call_id`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from node.content.documents import (
    AssistantMessage,
    ChatInputDocument,
    Content,
    DeveloperMessage,
    FunctionCall,
    Message,
    NamedToolChoice,
    SystemMessage,
    Tool,
    ToolCall,
    ToolMessage,
    UserMessage,
)

MAX_NESTING = 128
"""Deepest bracket nesting handed to a JSON / Python parser from untrusted text (see `nesting_depths`)."""
_NOT_BRACKET = re.compile(r"[^\[\]{}()]+")
_BRACKET_STEP = {"[": 1, "{": 1, "(": 1, "]": -1, "}": -1, ")": -1}

FIXED_DATE = datetime(2025, 1, 1)  # what `strftime_now` and `date_string` see: never the clock
DATE_STRING = FIXED_DATE.strftime("%d %b %Y")

HERMES_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
HERMES_TOOLS_FOOTER = (
    "</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


class ChatRenderError(ValueError):
    """The conversation cannot be rendered with this model's template (a bad input, not a bug)."""


def content_text(content: Content | None) -> str:
    """A message's text: a string, or its text parts joined as OpenAI does."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def tools_active(doc: ChatInputDocument) -> bool:
    """Whether tools are rendered and parsed: given, and tool_choice is not `none`."""
    return bool(doc.params.tools) and doc.params.tool_choice != "none"


def template_supports_tools(template: str) -> bool:
    """A template that reads a `tools` variable renders tools itself."""
    return re.search(r"\btools\b", template) is not None


def tool_json(tool: Tool) -> dict[str, Any]:
    """A tool as the OpenAI JSON object templates expect."""
    data: dict[str, Any] = tool.model_dump(mode="json")
    return data


def hermes_tools_block(tools: Sequence[Tool]) -> str:
    """The hermes/Qwen-style system text that lists tools and the `<tool_call>` format."""
    lines = [json.dumps(tool_json(t), ensure_ascii=False, sort_keys=True) for t in tools]
    return HERMES_TOOLS_HEADER + "\n" + "\n".join(lines) + "\n" + HERMES_TOOLS_FOOTER


def nesting_depths(text: str, depth: int = 0) -> tuple[int, int]:
    """(deepest, final) bracket depth over `text`, counted from `depth`, clamped at 0 (linear).

    Clamping makes the deepest value bound the nesting of a parse starting anywhere in the text.
    `json` and `ast` recurse in C once per level, and the miner's process has a raised recursion
    limit (torch and py_ecc raise it on import), so deep untrusted text would overflow the C stack
    (SIGSEGV) instead of raising RecursionError: text deeper than `MAX_NESTING` is never parsed.
    Streaming passes each new piece with the previous final depth.
    """
    deepest = depth
    for bracket in _NOT_BRACKET.sub("", text):
        depth = max(0, depth + _BRACKET_STEP[bracket])
        deepest = max(deepest, depth)
    return deepest, depth


def too_deep(text: str) -> bool:
    """Whether `text` nests brackets deeper than `MAX_NESTING` (then it is not parsed)."""
    return nesting_depths(text)[0] > MAX_NESTING


def _arguments_value(arguments: str) -> Any:
    """Tool-call arguments as JSON data when they parse (templates expect a mapping)."""
    if too_deep(arguments):
        return arguments
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):  # a requester's text: any nesting, any numbers
        return arguments


def _hermes_call_text(call: ToolCall) -> str:
    body = {"name": call.function.name, "arguments": _arguments_value(call.function.arguments)}
    return "<tool_call>\n" + json.dumps(body, ensure_ascii=False) + "\n</tool_call>"


def template_messages(doc: ChatInputDocument, *, native_tools: bool) -> list[dict[str, Any]]:
    """The conversation as plain dicts for the template.

    With `native_tools` the OpenAI shapes are kept (tool_calls with parsed arguments, `tool` role);
    otherwise tool calls and results become hermes text and the tool block joins the system prompt.
    """
    out: list[dict[str, Any]] = []
    msg: Message
    for msg in doc.messages:
        if isinstance(msg, SystemMessage | DeveloperMessage):
            out.append({"role": "system", "content": content_text(msg.content)})
        elif isinstance(msg, UserMessage):
            out.append({"role": "user", "content": content_text(msg.content)})
        elif isinstance(msg, AssistantMessage):
            text = content_text(msg.content)
            calls = msg.tool_calls or []
            if native_tools:
                item: dict[str, Any] = {"role": "assistant", "content": text}
                if calls:
                    item["tool_calls"] = [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {
                                "name": c.function.name,
                                "arguments": _arguments_value(c.function.arguments),
                            },
                        }
                        for c in calls
                    ]
                out.append(item)
            else:
                parts = [text] if text else []
                parts += [_hermes_call_text(c) for c in calls]
                out.append({"role": "assistant", "content": "\n".join(parts)})
        elif isinstance(msg, ToolMessage):
            text = content_text(msg.content)
            if native_tools:
                out.append({"role": "tool", "content": text, "tool_call_id": msg.tool_call_id})
            else:
                out.append({"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"})
    if not native_tools and tools_active(doc):
        block = hermes_tools_block(doc.params.tools or [])
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


class TemplateRefusal(jinja2.exceptions.TemplateError):
    """The template's own `raise_exception(...)`: its words are the model's, the same everywhere."""


def _raise_exception(message: str) -> None:
    raise TemplateRefusal(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_fixed(fmt: str) -> str:
    return FIXED_DATE.strftime(fmt)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_fixed
    return env.from_string(template)


def render_chat(
    doc: ChatInputDocument,
    template: str,
    *,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """The prompt text for a chat input: the model's template, tools included, no clock."""
    native = template_supports_tools(template)
    try:
        messages = template_messages(doc, native_tools=native)
        kwargs: dict[str, Any] = dict(special_tokens or {})
        if native and tools_active(doc):
            kwargs["tools"] = [tool_json(t) for t in doc.params.tools or []]
        return _compile(template).render(
            messages=messages, add_generation_prompt=True, date_string=DATE_STRING, **kwargs
        )
    except TemplateRefusal as exc:
        raise ChatRenderError(f"the model's chat template rejected the messages: {exc.message}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # jinja's or Python's wording varies by version: say only that it failed
        raise ChatRenderError("the model's chat template failed on these messages") from exc


# --------------------------------------------------------------------------- tool calls out


def tool_call_id(input_digest: bytes, choice: int, index: int) -> str:
    """A deterministic tool-call id: every honest miner must write the same bytes."""
    h = hashlib.sha256(input_digest + f":{choice}:{index}".encode()).hexdigest()
    return f"call_{h[:24]}"


@dataclass
class ParsedOutput:
    """An assistant turn split into text, tool calls and reasoning."""

    content: str | None
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments JSON)
    reasoning: str | None = None


def _call_from_json(raw: str, names: set[str] | None) -> tuple[str, str] | None:
    """`{"name", "arguments"}` JSON as (name, canonical-ish arguments), or None if not a call."""
    if too_deep(raw):
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # the model can be led to write any nesting
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    name: str = obj["name"]
    if names is not None and name not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return name, json.dumps(args, ensure_ascii=False)


def parse_forced_call(text: str, tool_names: set[str]) -> ParsedOutput:
    """The JSON object structured outputs forced for `required` / a named tool_choice."""
    call = _call_from_json(text.strip(), tool_names)
    if call is None:
        return ParsedOutput(content=text)
    return ParsedOutput(content=None, tool_calls=[call])


def forced_call_schema(tools: Sequence[Tool], choice: Any) -> dict[str, Any]:
    """JSON schema of one call `{"name", "arguments"}` to a named tool or (required) any tool."""
    if isinstance(choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == choice.function.name]
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t.function.name]},
                "arguments": t.function.parameters or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def make_tool_calls(parsed: ParsedOutput, input_digest: bytes, choice: int) -> list[ToolCall] | None:
    """OpenAI `tool_calls` for a parsed output, with deterministic ids."""
    if not parsed.tool_calls:
        return None
    return [
        ToolCall(id=tool_call_id(input_digest, choice, i), function=FunctionCall(name=name, arguments=args))
        for i, (name, args) in enumerate(parsed.tool_calls)
    ]


__all__ = [
    "DATE_STRING",
    "FIXED_DATE",
    "MAX_NESTING",
    "ChatRenderError",
    "ParsedOutput",
    "content_text",
    "forced_call_schema",
    "hermes_tools_block",
    "make_tool_calls",
    "nesting_depths",
    "parse_forced_call",
    "render_chat",
    "template_messages",
    "template_supports_tools",
    "too_deep",
    "tool_call_id",
    "tool_json",
    "tools_active",
]
