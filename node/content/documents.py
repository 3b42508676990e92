"""The input and output documents, shared by gateway and miner: their shapes, versions and limits.

A document's CID (and the digest on chain) is the sha2-256 of its canonical bytes; the bytes are
`node.content.canonical`'s concern (`to_canonical_bytes`, re-exported here, encodes by the document's
own `v`). This module decides *what* is encoded:

* **None means "not given" and is omitted**, so `{"temperature": null}` and `{}` are the same
  document. Only fields a reader must always see are written as `null`: `OutputDocument.error`
  (null on success) and `AssistantOutput.content` (null when the model only called tools). Nulls
  *inside* free-form JSON (a tool's `parameters` schema) are data and are kept; defaults that are
  not None (`v`, `params` as `{}`) are always written.
* **Parse, then encode**: a document received as bytes is parsed into its model and re-encoded
  with `to_canonical_bytes`; a hand-written document gets the canonical CID only after that.

**Versions.** `"v": 1` is every document written before version 2, unchanged (same bytes, same
CID). Version 2 adds three chat parameters (`V2_PARAMS`): `response_format` (`json_object`, or
`json_schema` with `name`, `schema`, `strict`, `description`; OpenAI's default `text` is never
written), `parallel_tool_calls` (only `false`) and `reasoning_effort` (`low` / `medium` / `high`);
a v1/v2 chat document uses one if and only if it is `"v": 2` (else a `DocumentError` naming the
field), and completion documents are v1. Version 3 (`CURRENT_VERSION`, what gateways and miners
write) is RFC 8785 bytes, carries every parameter of its type, and holds numbers within
±(2^53 - 1) only (`MAX_SAFE_INTEGER`; a larger `seed` is a `DocumentError` naming it). Readers
accept all three. An output document's `v` follows its input (`output_version`): 1 for a readable
v1/v2 input (a replay rebuilds the old bytes), 3 for a v3 input or one that could not be read.

Validation (`parse_input_document`, `validate_input_document`) follows OpenAI's ranges where OpenAI
enforces them and raises `DocumentError(field, message)` naming the field as a dotted path
(`params.temperature`, `messages[2].content`): the gateway answers it as a 400 with `param=field`,
the miner writes it into an output document's `error` (`OutputError.from_exception`), so every
assigned request still gets a result.

**Protocol caps** (`MAX_*` below) bound the work one request can ask for, so a requester cannot
stall a miner or make honest miners run out of time (and be slashed for silence) with a document
that is valid JSON. They are part of the input format: a document over a cap is invalid
(`DocumentError` naming the field: a 400 at the gateway, an `invalid_request` error output document
at the miner), the same on every node whatever its hardware. The values:

* `MAX_N` = 8 choices, `MAX_BEST_OF` = 8 candidates, `MAX_PROMPTS` = 16 completion prompts, and at
  most `MAX_SEQUENCES` = 32 sequences in all (prompts × max(n, best_of)): what one vLLM batch of a
  small box holds at once (the devnet runs `max_num_seqs` 32-64).
* `MAX_TOKENS` = 32768 per sequence (reasoning models such as gpt-oss need well over 8k), and at
  most `MAX_TOTAL_TOKENS` = 65536 generated tokens per request (sequences × max_tokens). That is the
  worst case a model's `timeoutBlocks` must cover: about a minute for a GPU box running 32 sequences
  of an 8B-class model; on a 2-core CPU devnet the context window (`max_model_len` 2048) bounds each
  sequence well below the cap anyway. A document without `max_tokens` gets the context left, capped
  at `MAX_TOKENS` and at `MAX_TOTAL_TOKENS` / sequences (`default_max_tokens`).
* `MAX_MESSAGES` = 1024 messages, `MAX_CONTENT_PARTS` = 64 text parts per message, `MAX_TOOLS` = 128
  tools (OpenAI's limit), `MAX_STOP` = 4 stop sequences (OpenAI's) of at most `MAX_STOP_CHARS` = 1024
  characters, `MAX_LOGIT_BIAS` = 300 entries, `MAX_PROMPT_TOKEN_IDS` = 131072 token ids over all
  token-id prompts: rendering, tokenizing and per-step sampling costs stay linear and small.
* A `response_format` JSON schema (v2) is compiled into a grammar by every miner: at most
  `MAX_SCHEMA_BYTES` = 64 KiB of canonical JSON, `MAX_SCHEMA_PROPERTIES` = 5000 `properties`
  entries and `MAX_SCHEMA_ENUM_VALUES` = 1000 `enum` values in all (OpenAI's structured-output
  limits); its depth is bounded by the gate. The engine adds bounds on counts and lengths
  (`node.engine.params.check_forced_schema`), refused as error documents.

Everything else is bounded by the 1 MiB document limit and `node.gate`'s JSON limits (depth,
string length, element count), checked before the JSON is parsed.

Output documents must be deterministic too: `created` is **not** wall-clock time but the timestamp
of the block that carried the request, passed in by the miner, so every honest miner writes the
same bytes. Non-finite floats are rejected, so the engine must clamp `-inf` logprobs (vLLM's
OpenAI server uses -9999.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    Tag,
    ValidationError,
    model_serializer,
    model_validator,
)

from node import gate
from node.content.canonical import (
    CURRENT_VERSION,
    DOCUMENT_VERSION,
    DOCUMENT_VERSION_2,
    DOCUMENT_VERSION_3,
    LEGACY_VERSIONS,
    MAX_SAFE_INTEGER,
    SUPPORTED_VERSIONS,
    UNSAFE_NUMBER,
    canonical_json,
    find_unsafe_number,
    to_canonical_bytes,
)
from node.content.errors import MAX_DOCUMENT_BYTES, DocumentError, DocumentTooLarge

V2_PARAMS = ("response_format", "parallel_tool_calls", "reasoning_effort")
"""Chat parameters added by version 2: a v1/v2 document uses one if and only if it is `"v": 2`; v3 may."""

# --------------------------------------------------------------------------- protocol caps
# See the module docstring for why these values; changing one changes which documents are valid.

MAX_N = 8
MAX_BEST_OF = 8
MAX_PROMPTS = 16
MAX_SEQUENCES = 32
MAX_TOKENS = 32768
MAX_TOTAL_TOKENS = 65536
MAX_MESSAGES = 1024
MAX_CONTENT_PARTS = 64
MAX_TOOLS = 128
MAX_STOP = 4
MAX_STOP_CHARS = 1024
MAX_LOGIT_BIAS = 300
MAX_PROMPT_TOKEN_IDS = 131072
MAX_SCHEMA_BYTES = 65536
MAX_SCHEMA_PROPERTIES = 5000
MAX_SCHEMA_ENUM_VALUES = 1000


class _Doc(BaseModel):
    """Base of every document part: strict types, no unknown keys, None omitted when encoded."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    _keep_null: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not isinstance(data, dict):
            return data
        keep = self._keep_null
        return {k: v for k, v in data.items() if v is not None or k in keep}


# --------------------------------------------------------------------------- shared pieces


class _FieldError(ValueError):
    """A cross-field check's failure inside a model, naming the field relative to that model."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
ToolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
TokenIdKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]
TokenId = Annotated[int, Field(ge=0, lt=1 << 32)]
Salt = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A private document's salt (`node.content.salt`): 32 bytes as 64 lowercase hex digits."""
PublicKeyHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]
"""A requester's 64-byte secp256k1 public key (`node.chain.pubkeys` form), lowercase hex, no 0x."""


class FunctionCall(_Doc):
    """The function a tool call invokes; `arguments` is a JSON string, as OpenAI sends it."""

    name: str
    arguments: str


class ToolCall(_Doc):
    """One tool call made by the assistant (in an input history or in an output message)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def _text_part_shape(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") != "text":
        raise ValueError(f"content part type {value.get('type')!r} is not supported; only text parts are")
    return value


class _TextPart(_Doc):
    type: Literal["text"]
    text: str


TextPart = Annotated[_TextPart, BeforeValidator(_text_part_shape)]
Content = str | Annotated[list[TextPart], Field(min_length=1, max_length=MAX_CONTENT_PARTS)]


# --------------------------------------------------------------------------- chat messages


class SystemMessage(_Doc):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(_Doc):
    """OpenAI's newer name for system instructions; rendered like a system message."""

    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(_Doc):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Doc):
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


class ToolMessage(_Doc):
    """The result of a tool call, answering `tool_call_id`."""

    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


# --------------------------------------------------------------------------- params


class FunctionDefinition(_Doc):
    name: ToolName
    description: str | None = None
    parameters: dict[str, JsonValue] | None = None
    strict: bool | None = None


class Tool(_Doc):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Doc):
    name: ToolName


class NamedToolChoice(_Doc):
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


class JsonSchemaSpec(_Doc):
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
            raise _FieldError("schema", why)
        return self


class JsonObjectFormat(_Doc):
    """JSON mode: the output is one JSON object (enforced by a grammar)."""

    type: Literal["json_object"]


class JsonSchemaFormat(_Doc):
    """Structured outputs: the output is JSON valid against `json_schema.schema` (enforced by a grammar)."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
"""`text`, OpenAI's default, is never written: the gateway drops it, so it has the CID of no format."""
ReasoningEffort = Literal["low", "medium", "high"]
StopText = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)]
Stop = StopText | Annotated[list[StopText], Field(min_length=1, max_length=MAX_STOP)]


class _Params(_Doc):
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
            raise _FieldError("top_logprobs", "requires logprobs to be true")
        if self.parallel_tool_calls is not None and not self.tools:
            raise _FieldError("parallel_tool_calls", "is only allowed when tools are given")
        if self.response_format is not None and self.tools and self.tool_choice in (None, "auto"):
            raise _FieldError(
                "response_format",
                "cannot be enforced while the model may either call a tool or answer (tool_choice auto); "
                "set tool_choice to 'none', 'required' or a named function",
            )
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise _FieldError("tool_choice", "is only allowed when tools are given")
        if isinstance(self.tool_choice, NamedToolChoice):
            wanted = self.tool_choice.function.name
            if wanted not in {t.function.name for t in self.tools or []}:
                raise _FieldError("tool_choice", f"names function {wanted!r}, not among tools")
        if self.tools and len({t.function.name for t in self.tools}) != len(self.tools):
            raise _FieldError("tools", "function names must be unique")
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
            raise _FieldError("best_of", f"must be >= n ({self.n or 1})")
        return self


# --------------------------------------------------------------------------- input documents


class ChatInputDocument(_Doc):
    """A Chat Completions request: `messages` rendered through the model's chat template."""

    v: Literal[1, 2, 3] = CURRENT_VERSION
    type: Literal["chat"] = "chat"
    model: NonEmptyStr
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    params: ChatParams = Field(default_factory=ChatParams)
    # private documents (issue 16, v3 only): see `_check_private`
    salt: Salt | None = None
    reply_to: PublicKeyHex | None = None

    @model_validator(mode="after")
    def _bounded_work(self) -> ChatInputDocument:
        _check_work(1, self.params.n or 1, self.params.max_tokens, "params.n")
        _check_version(self.v, self.params.v2_fields())
        _check_private(self.v, self.salt, self.reply_to)
        _check_safe(self.v, self.params.seed, "params.seed")
        return self


def _check_version(v: int, v2_fields: list[str]) -> None:
    """Versions 1 and 2: v2 fields need `v: 2`, and `v: 2` needs a v2 field. Version 3 takes any."""
    if v == DOCUMENT_VERSION and v2_fields:
        raise _FieldError(
            f"params.{v2_fields[0]}", 'is not a version-1 field: the document must be "v": 2 or 3'
        )
    if v == DOCUMENT_VERSION_2 and not v2_fields:
        raise _FieldError("v", f"must be 1 or 3 for a document that uses none of {', '.join(V2_PARAMS)}")


def _check_private(v: int, salt: str | None, reply_to: str | None) -> None:
    """`salt` and `reply_to` mark a private input: version 3 only, and both or neither.

    The salt keeps the digest on chain unguessable (`node.content.salt`); `reply_to` is the
    requester's public key the miner seals its output to (`node.content.envelope`). Both are covered
    by the input digest, so no relay can swap the reply key.
    """
    if (salt is not None or reply_to is not None) and v != DOCUMENT_VERSION_3:
        raise _FieldError("salt" if salt is not None else "reply_to", 'needs "v": 3 (private documents)')
    if (salt is None) != (reply_to is None):
        raise _FieldError(
            "reply_to" if salt is not None else "salt", "a private document sets both salt and reply_to"
        )


def _check_safe(v: int, value: int | None, field: str) -> None:
    """A version-3 integer field beyond ±(2^53 - 1) (free-form JSON is checked when read and encoded)."""
    if v == DOCUMENT_VERSION_3 and value is not None and abs(value) > MAX_SAFE_INTEGER:
        raise _FieldError(field, UNSAFE_NUMBER)


def output_version(input_version: int | None) -> Literal[1, 3]:
    """The `v` of the output document answering an input of this version (None: not readable).

    A readable v1 or v2 input is answered as before (v1 bytes: replaying an old request rebuilds its
    old output); a v3 input, and one that could not be read or validated, in the current version.
    """
    return DOCUMENT_VERSION if input_version in LEGACY_VERSIONS else CURRENT_VERSION


def _prompt_shape(value: Any) -> Any:
    ok = isinstance(value, str) or (
        isinstance(value, list)
        and len(value) > 0
        and (
            all(isinstance(p, str) for p in value)
            or all(isinstance(p, int) and not isinstance(p, bool) for p in value)
            or all(
                isinstance(p, list)
                and len(p) > 0
                and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
                for p in value
            )
        )
    )
    if not ok:
        raise ValueError(
            "must be a string, a non-empty list of strings, a non-empty list of token ids, "
            "or a non-empty list of non-empty lists of token ids"
        )
    return value


Prompt = Annotated[
    str | list[str] | list[TokenId] | list[Annotated[list[TokenId], Field(min_length=1)]],
    BeforeValidator(_prompt_shape),
]


class CompletionInputDocument(_Doc):
    """A legacy Completions request: raw `prompt`(s), no chat template."""

    v: Literal[1, 3] = CURRENT_VERSION
    type: Literal["completion"] = "completion"
    model: NonEmptyStr
    prompt: Prompt
    params: CompletionParams = Field(default_factory=CompletionParams)
    salt: Salt | None = None
    reply_to: PublicKeyHex | None = None

    @model_validator(mode="after")
    def _bounded_work(self) -> CompletionInputDocument:
        _check_safe(self.v, self.params.seed, "params.seed")
        _check_private(self.v, self.salt, self.reply_to)
        prompts = prompt_count(self.prompt)
        if prompts > MAX_PROMPTS:
            raise _FieldError("prompt", f"at most {MAX_PROMPTS} prompts per request, got {prompts}")
        ids = _token_id_count(self.prompt)
        if ids > MAX_PROMPT_TOKEN_IDS:
            raise _FieldError(
                "prompt", f"at most {MAX_PROMPT_TOKEN_IDS} token ids over all prompts, got {ids}"
            )
        params = self.params
        n = params.n or 1
        if params.best_of is not None and params.best_of > n:
            _check_work(prompts, params.best_of, params.max_tokens, "params.best_of")
        else:
            _check_work(prompts, n, params.max_tokens, "params.n" if prompts == 1 else "prompt")
        return self


InputDocument: TypeAlias = ChatInputDocument | CompletionInputDocument


def prompt_count(prompt: str | list[str] | list[int] | list[list[int]]) -> int:
    """How many prompts a completion's `prompt` holds (a list of token ids is one prompt)."""
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return 1
    return len(prompt)


def _token_id_count(prompt: str | list[str] | list[int] | list[list[int]]) -> int:
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], str):
        return 0
    if isinstance(prompt[0], int):
        return len(prompt)
    return sum(len(p) for p in prompt if isinstance(p, list))


def sequence_count(doc: InputDocument) -> int:
    """Sequences the engine generates for a document: prompts × max(n, best_of)."""
    n = doc.params.n or 1
    if isinstance(doc, CompletionInputDocument):
        return prompt_count(doc.prompt) * max(n, doc.params.best_of or 0)
    return n


def default_max_tokens(doc: InputDocument) -> int:
    """The per-sequence token budget of a document that gives no `max_tokens` (before the context)."""
    return min(MAX_TOKENS, MAX_TOTAL_TOKENS // sequence_count(doc))


def _check_work(prompts: int, samples: int, max_tokens: int | None, field: str) -> None:
    """The sequence and generated-token caps; `field` is blamed for too many sequences."""
    sequences = prompts * samples
    if sequences > MAX_SEQUENCES:
        raise _FieldError(
            field,
            f"{prompts} prompt(s) x {samples} sequences each is {sequences} sequences, "
            f"over the limit of {MAX_SEQUENCES} per request",
        )
    if max_tokens is not None and sequences * max_tokens > MAX_TOTAL_TOKENS:
        raise _FieldError(
            "params.max_tokens",
            f"{sequences} sequence(s) x max_tokens {max_tokens} is {sequences * max_tokens} tokens, "
            f"over the limit of {MAX_TOTAL_TOKENS} generated tokens per request",
        )


# --------------------------------------------------------------------------- output documents


class TopLogprob(_Doc):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Doc):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(_Doc):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class AssistantOutput(_Doc):
    """The generated message; `content` is always written (null when only tools were called)."""

    _keep_null: ClassVar[frozenset[str]] = frozenset({"content"})

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class ChatChoice(_Doc):
    index: Annotated[int, Field(ge=0)]
    message: AssistantOutput
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class CompletionLogprobs(_Doc):
    """Legacy logprobs; the first echoed prompt token has no logprob (null)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Doc):
    index: Annotated[int, Field(ge=0)]
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None


class Usage(_Doc):
    prompt_tokens: Annotated[int, Field(ge=0)]
    completion_tokens: Annotated[int, Field(ge=0)]
    total_tokens: Annotated[int, Field(ge=0)]


class OutputError(_Doc):
    """Why a request produced no completion; `code` is machine-readable, `message` for people."""

    code: NonEmptyStr
    message: str

    @classmethod
    def from_exception(cls, exc: Exception, code: str | None = None) -> OutputError:
        """An error for a bad input, whose text depends only on the input (see `_FIXED_MESSAGES`).

        `DocumentError` -> `invalid_request` with its message (which names the field and is derived
        from the document alone); anything else gets a fixed message for its code, never `str(exc)`:
        a library's text carries paths, URLs, sizes read from a truncated stream or version-specific
        wording, and two honest miners must write the same bytes.
        """
        if code is None:
            code = _ERROR_CODES.get(type(exc).__name__, "input_unprocessable")
        if code == "invalid_request" and isinstance(exc, DocumentError):
            return cls(code=code, message=str(exc))
        return cls(code=code, message=_FIXED_MESSAGES.get(code, _FIXED_MESSAGES["input_unprocessable"]))


_ERROR_CODES = {
    "DocumentError": "invalid_request",
    "DocumentTooLarge": "input_too_large",
    "ContentNotFound": "input_not_found",
    "IntegrityError": "input_integrity",
    "InputTampered": "input_tampered",
}
_FIXED_MESSAGES = {
    "invalid_request": "the input document is invalid",
    "input_too_large": f"the input document is over the {MAX_DOCUMENT_BYTES}-byte limit of one IPFS block",
    "input_not_found": "the input document could not be fetched by its CID",
    "input_integrity": "the input document's bytes do not match its CID",
    "output_too_large": f"the output document would be over the {MAX_DOCUMENT_BYTES}-byte limit",
    "input_unprocessable": "the engine could not process this input",
    "input_tampered": (
        "the private input's envelope does not open to the document whose digest is on chain "
        "(changed after sealing, or sealed from another document)"
    ),
}


def _choice_kind(value: Any) -> str:
    if isinstance(value, CompletionChoice) or (isinstance(value, dict) and "text" in value):
        return "completion"
    return "chat"


Choice = Annotated[
    Annotated[ChatChoice, Tag("chat")] | Annotated[CompletionChoice, Tag("completion")],
    Discriminator(_choice_kind),
]
OutputObject = Literal["chat.completion", "text_completion", "error"]


class OutputDocument(_Doc):
    """The miner's answer. `object` is `error` only when the input's type could not be read.

    `created` is the request block's timestamp (deterministic), never the wall clock.
    """

    _keep_null: ClassVar[frozenset[str]] = frozenset({"error"})

    v: Literal[1, 3] = CURRENT_VERSION
    request_id: Annotated[int, Field(ge=0, lt=1 << 256)]
    input_cid: NonEmptyStr
    model: str
    system_fingerprint: str
    object: OutputObject
    created: Annotated[int, Field(ge=0)]
    choices: list[Choice] = Field(default_factory=list)
    usage: Usage | None = None
    error: OutputError | None = None
    salt: Salt | None = None
    """Private outputs only (v3): `node.content.salt.output_salt` of the input's salt."""

    @model_validator(mode="after")
    def _consistent(self) -> OutputDocument:
        if self.salt is not None and self.v != DOCUMENT_VERSION_3:
            raise _FieldError("salt", 'needs "v": 3 (private documents)')
        _check_safe(self.v, self.request_id, "request_id")
        _check_safe(self.v, self.created, "created")
        want = {"chat.completion": ChatChoice, "text_completion": CompletionChoice}.get(self.object)
        if want is None:
            if self.error is None or self.choices:
                raise _FieldError("object", "'error' needs error set and no choices")
        elif not all(isinstance(c, want) for c in self.choices):
            raise _FieldError("choices", f"must be {want.__name__} objects for {self.object}")
        return self

    @classmethod
    def for_error(
        cls,
        *,
        request_id: int,
        input_cid: str,
        model: str,
        system_fingerprint: str,
        created: int,
        error: OutputError,
        object: OutputObject = "error",
        v: Literal[1, 3] = CURRENT_VERSION,
    ) -> OutputDocument:
        """An output document that carries only an error: every assigned request gets a result.

        `v` is `output_version` of the input's version (the current one when the input is unreadable).
        """
        return cls(
            v=v,
            request_id=request_id,
            input_cid=input_cid,
            model=model,
            system_fingerprint=system_fingerprint,
            object=object,
            created=created,
            error=error,
        )


# --------------------------------------------------------------------------- parsing


def load_json(raw: bytes) -> Any:
    """Strict, bounded JSON through the one gate (`node.gate`); DocumentError otherwise."""
    try:
        return gate.load_json(raw, gate.DOCUMENT_LIMITS)
    except gate.UntrustedJSON as exc:
        if exc.reason == "too_large":
            raise DocumentTooLarge(len(raw)) from None
        shown = f"is {exc}" if exc.reason in ("invalid_json", "not_utf8") else f"refused: {exc}"
        raise DocumentError("", f"document {shown}") from None


def _field_path(data: Any, loc: Sequence[int | str], names_field: bool = False) -> str:
    """Turn a pydantic error location into `a.b[2].c`, skipping union tags and member names.

    The input is walked alongside: a location part that is a list index or a key of the data
    is kept, as is a last part naming a missing or unknown field (`names_field`); anything else
    (the `user` tag of a message union, the `str` of `str | list[str]`) is pydantic's bookkeeping.
    """
    out = ""
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out += f"[{part}]"
            node = node[part]
        elif (
            isinstance(node, dict)
            and isinstance(part, str)
            and (part in node or (names_field and i == len(loc) - 1))
        ):
            out += f".{part}" if out else part
            node = node.get(part)
    return out


def _document_error(exc: ValidationError, data: Any) -> DocumentError:
    """The most specific of pydantic's errors (the deepest field path), as a DocumentError."""
    best: tuple[str, str] | None = None
    for err in exc.errors(include_url=False):
        inner = (err.get("ctx") or {}).get("error")
        path = _field_path(data, err["loc"], err["type"] in ("missing", "extra_forbidden"))
        if isinstance(inner, _FieldError):  # a cross-field check inside a sub-model
            path = f"{path}.{inner.field}" if path else inner.field
            msg = inner.message
        else:
            msg = err["msg"].removeprefix("Value error, ")
        if best is None or len(path) > len(best[0]):
            best = (path, msg)
    assert best is not None  # a ValidationError always carries at least one error
    return DocumentError(*best)


def validate_input_document(obj: Any) -> InputDocument:
    """Validate already-decoded JSON as an input document; DocumentError names the bad field."""
    if not isinstance(obj, dict):
        raise DocumentError("", "an input document must be a JSON object")
    v = obj.get("v")
    if v not in SUPPORTED_VERSIONS or isinstance(v, bool):
        raise DocumentError("v", f"must be one of {', '.join(map(str, SUPPORTED_VERSIONS))}, got {v!r}")
    kind = obj.get("type")
    if kind == "completion" and v == DOCUMENT_VERSION_2:
        raise DocumentError(
            "v", f"must be {DOCUMENT_VERSION} or {DOCUMENT_VERSION_3} for a completion document"
        )
    model: type[ChatInputDocument] | type[CompletionInputDocument]
    if kind == "chat":
        model = ChatInputDocument
    elif kind == "completion":
        model = CompletionInputDocument
    else:
        raise DocumentError("type", f"must be 'chat' or 'completion', got {kind!r}")
    try:
        doc = model.model_validate(obj, strict=True)
    except ValidationError as exc:
        raise _document_error(exc, obj) from None
    _check_numbers(doc.v, obj)
    return doc


def _check_numbers(v: int, obj: Any) -> None:
    """Version 3 holds only numbers within ±(2^53 - 1): DocumentError naming the first other one."""
    if v == DOCUMENT_VERSION_3 and (field := find_unsafe_number(obj)) is not None:
        raise DocumentError(field, UNSAFE_NUMBER)


def parse_input_document(raw: bytes) -> InputDocument:
    """Parse and validate an input document's bytes (as fetched by CID)."""
    return validate_input_document(load_json(raw))


def parse_output_document(raw: bytes) -> OutputDocument:
    """Parse and validate an output document's bytes (the gateway checks what miners wrote)."""
    obj = load_json(raw)
    if not isinstance(obj, dict):
        raise DocumentError("", "an output document must be a JSON object")
    try:
        doc = OutputDocument.model_validate(obj, strict=True)
    except ValidationError as exc:
        raise _document_error(exc, obj) from None
    _check_numbers(doc.v, obj)
    return doc


__all__ = [
    "CURRENT_VERSION",
    "DOCUMENT_VERSION",
    "DOCUMENT_VERSION_2",
    "DOCUMENT_VERSION_3",
    "LEGACY_VERSIONS",
    "MAX_BEST_OF",
    "MAX_CONTENT_PARTS",
    "MAX_LOGIT_BIAS",
    "MAX_MESSAGES",
    "MAX_N",
    "MAX_PROMPTS",
    "MAX_PROMPT_TOKEN_IDS",
    "MAX_SAFE_INTEGER",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_ENUM_VALUES",
    "MAX_SCHEMA_PROPERTIES",
    "MAX_SEQUENCES",
    "MAX_STOP",
    "MAX_STOP_CHARS",
    "MAX_TOKENS",
    "MAX_TOOLS",
    "MAX_TOTAL_TOKENS",
    "SUPPORTED_VERSIONS",
    "V2_PARAMS",
    "AssistantMessage",
    "AssistantOutput",
    "ChatChoice",
    "ChatInputDocument",
    "ChatLogprobs",
    "ChatParams",
    "Choice",
    "CompletionChoice",
    "CompletionInputDocument",
    "CompletionLogprobs",
    "CompletionParams",
    "Content",
    "DeveloperMessage",
    "FinishReason",
    "FunctionCall",
    "FunctionDefinition",
    "InputDocument",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "JsonSchemaSpec",
    "Message",
    "NamedFunction",
    "NamedToolChoice",
    "OutputDocument",
    "OutputError",
    "OutputObject",
    "ReasoningEffort",
    "ResponseFormat",
    "SystemMessage",
    "TextPart",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "ToolMessage",
    "TopLogprob",
    "Usage",
    "UserMessage",
    "canonical_json",
    "check_schema_size",
    "default_max_tokens",
    "load_json",
    "output_version",
    "parse_input_document",
    "parse_output_document",
    "prompt_count",
    "sequence_count",
    "to_canonical_bytes",
    "validate_input_document",
]
