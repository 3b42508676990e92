"""What an input document is made of: chat messages, tools, response formats and sampling parameters.

These are OpenAI's request fields as the protocol holds them (ranges where OpenAI enforces them,
the protocol caps of `node.content.caps`, cross-field checks naming the field), apart from the two
document types that combine them (`node.content.documents`), which also decide versions and work.
`V2_PARAMS` are the chat parameters version 2 added (see `node.content.documents`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, JsonValue, StringConstraints, model_validator

from node import gate
from node.content.canonical import canonical_json
from node.content.caps import (
    MAX_BEST_OF,
    MAX_CONTENT_PARTS,
    MAX_LOGIT_BIAS,
    MAX_N,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_ENUM_VALUES,
    MAX_SCHEMA_PROPERTIES,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TOKENS,
    MAX_TOOLS,
)
from node.content.doc_parts import Bias, DocPart, FieldError, TokenIdKey, ToolCall, ToolName

V2_PARAMS = ("response_format", "parallel_tool_calls", "reasoning_effort")
"""Chat parameters added by version 2: a v1/v2 document uses one if and only if it is `"v": 2`; v3 may."""


def _text_part_shape(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") != "text":
        raise ValueError(f"content part type {value.get('type')!r} is not supported; only text parts are")
    return value


class _TextPart(DocPart):
    type: Literal["text"]
    text: str


TextPart = Annotated[_TextPart, BeforeValidator(_text_part_shape)]
Content = str | Annotated[list[TextPart], Field(min_length=1, max_length=MAX_CONTENT_PARTS)]


# --------------------------------------------------------------------------- chat messages


class SystemMessage(DocPart):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(DocPart):
    """OpenAI's newer name for system instructions; rendered like a system message."""

    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(DocPart):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(DocPart):
    """An earlier assistant turn: text, tool calls, or both."""

    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_or_tools(self) -> AssistantMessage:
        if self.content is None and self.tool_calls is None:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(DocPart):
    """The result of a tool call, answering `tool_call_id`."""

    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


# --------------------------------------------------------------------------- params


class FunctionDefinition(DocPart):
    name: ToolName
    description: str | None = None
    parameters: dict[str, JsonValue] | None = None
    strict: bool | None = None


class Tool(DocPart):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(DocPart):
    name: ToolName


class NamedToolChoice(DocPart):
    type: Literal["function"]
    function: NamedFunction


def _tool_choice_shape(value: Any) -> Any:
    if value is None or value in ("none", "auto", "required") or isinstance(value, dict):
        return value
    raise ValueError(
        'must be \'none\', \'auto\', \'required\' or {"type": "function", "function": {"name": ...}}'
    )


ToolChoice = Annotated[
    Literal["none", "auto", "required"] | NamedToolChoice, BeforeValidator(_tool_choice_shape)
]


def check_schema_size(schema: JsonValue) -> str | None:
    """Why a JSON schema is over the schema caps (bytes, `properties` entries, `enum` values), or None.

    Iterative (no recursion on requester data); the gate has already bounded its depth.
    """
    size = len(canonical_json(schema))
    if size > MAX_SCHEMA_BYTES:
        return f"the schema is {size} bytes as canonical JSON, over the limit of {MAX_SCHEMA_BYTES}"
    properties = enums = 0
    for key, value in gate.iter_members(schema):
        if key == "properties" and isinstance(value, dict):
            properties += len(value)
        elif key == "enum" and isinstance(value, list):
            enums += len(value)
    if properties > MAX_SCHEMA_PROPERTIES:
        return f"the schema has {properties} properties in all, over the limit of {MAX_SCHEMA_PROPERTIES}"
    if enums > MAX_SCHEMA_ENUM_VALUES:
        return f"the schema has {enums} enum values in all, over the limit of {MAX_SCHEMA_ENUM_VALUES}"
    return None


class JsonSchemaSpec(DocPart):
    """`response_format.json_schema`: OpenAI's named schema; `strict` is kept as data (always enforced)."""

    name: ToolName
    description: str | None = None
    schema_: Annotated[dict[str, JsonValue] | None, Field(alias="schema")] = None
    strict: bool | None = None

    # `schema` would shadow BaseModel.schema: the field is `schema_`, read and written as `schema`
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, serialize_by_alias=True)

    @model_validator(mode="after")
    def _bounded(self) -> JsonSchemaSpec:
        if self.schema_ is not None and (why := check_schema_size(self.schema_)) is not None:
            raise FieldError("schema", why)
        return self


class JsonObjectFormat(DocPart):
    """JSON mode: the output is one JSON object (enforced by a grammar)."""

    type: Literal["json_object"]


class JsonSchemaFormat(DocPart):
    """Structured outputs: the output is JSON valid against `json_schema.schema` (enforced by a grammar)."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
"""`text`, OpenAI's default, is never written: the gateway drops it, so it has the CID of no format."""
ReasoningEffort = Literal["low", "medium", "high"]
StopText = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)]
Stop = StopText | Annotated[list[StopText], Field(min_length=1, max_length=MAX_STOP)]


class _Params(DocPart):
    """Sampling parameters both endpoints share; None everywhere means "not given"."""

    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=-(1 << 63), lt=1 << 64)] | None = None
    stop: Stop | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: Annotated[dict[TokenIdKey, Bias], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    user: str | None = None


class ChatParams(_Params):
    """Chat Completions parameters: `logprobs` is a bool, `top_logprobs` 0..20 needs it true."""

    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    # version 2 (see V2_PARAMS)
    response_format: ResponseFormat | None = None
    parallel_tool_calls: Literal[False] | None = None
    reasoning_effort: ReasoningEffort | None = None

    def v2_fields(self) -> list[str]:
        """The version-2 parameters this document sets (empty: it is a version-1 document)."""
        return [name for name in V2_PARAMS if getattr(self, name) is not None]

    @model_validator(mode="after")
    def _cross_checks(self) -> ChatParams:
        if self.top_logprobs is not None and self.logprobs is not True:
            raise FieldError("top_logprobs", "requires logprobs to be true")
        if self.parallel_tool_calls is not None and not self.tools:
            raise FieldError("parallel_tool_calls", "is only allowed when tools are given")
        if self.response_format is not None and self.tools and self.tool_choice in (None, "auto"):
            raise FieldError(
                "response_format",
                "cannot be enforced while the model may either call a tool or answer (tool_choice auto); "
                "set tool_choice to 'none', 'required' or a named function",
            )
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise FieldError("tool_choice", "is only allowed when tools are given")
        if isinstance(self.tool_choice, NamedToolChoice):
            wanted = self.tool_choice.function.name
            if wanted not in {t.function.name for t in self.tools or []}:
                raise FieldError("tool_choice", f"names function {wanted!r}, not among tools")
        if self.tools and len({t.function.name for t in self.tools}) != len(self.tools):
            raise FieldError("tools", "function names must be unique")
        return self


class CompletionParams(_Params):
    """Legacy Completions parameters: `logprobs` an int 0..5, `best_of` >= n, `echo`, `suffix`."""

    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    best_of: Annotated[int, Field(ge=1, le=MAX_BEST_OF)] | None = None
    echo: bool | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> CompletionParams:
        if self.best_of is not None and self.best_of < (self.n or 1):
            raise FieldError("best_of", f"must be >= n ({self.n or 1})")
        return self


__all__ = [
    "V2_PARAMS",
    "AssistantMessage",
    "ChatParams",
    "CompletionParams",
    "Content",
    "DeveloperMessage",
    "FunctionDefinition",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "JsonSchemaSpec",
    "Message",
    "NamedFunction",
    "NamedToolChoice",
    "ReasoningEffort",
    "ResponseFormat",
    "Stop",
    "SystemMessage",
    "TextPart",
    "Tool",
    "ToolChoice",
    "ToolMessage",
    "UserMessage",
    "check_schema_size",
]
