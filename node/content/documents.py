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

**Protocol caps** (`MAX_*`, in `node.content.caps`) bound the work one request can ask for, so a
requester cannot stall a miner or make honest miners run out of time (and be slashed for silence)
with a document that is valid JSON. They are part of the input format: a document over a cap is invalid
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

The parts live in modules of their own, re-exported here (import from this module):
`node.content.caps` (the caps), `node.content.doc_parts` (the base model and shared pieces),
`node.content.input_parts` (messages, tools, formats, parameters) and
`node.content.output_document` (the output document); this module holds the two input document
types, the work they may ask for, and parsing bytes into validated documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BeforeValidator, Field, ValidationError, model_validator

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
from node.content.caps import (
    MAX_BEST_OF,
    MAX_CONTENT_PARTS,
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_N,
    MAX_PROMPT_TOKEN_IDS,
    MAX_PROMPTS,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_ENUM_VALUES,
    MAX_SCHEMA_PROPERTIES,
    MAX_SEQUENCES,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TOKENS,
    MAX_TOOLS,
    MAX_TOTAL_TOKENS,
)
from node.content.doc_parts import (
    DocPart,
    FieldError,
    FunctionCall,
    NonEmptyStr,
    PublicKeyHex,
    Salt,
    TokenId,
    ToolCall,
    check_safe,
)
from node.content.errors import DocumentError, DocumentTooLarge
from node.content.input_parts import (
    V2_PARAMS,
    AssistantMessage,
    ChatParams,
    CompletionParams,
    Content,
    DeveloperMessage,
    FunctionDefinition,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaSpec,
    Message,
    NamedFunction,
    NamedToolChoice,
    ReasoningEffort,
    ResponseFormat,
    SystemMessage,
    TextPart,
    Tool,
    ToolChoice,
    ToolMessage,
    UserMessage,
    check_schema_size,
)
from node.content.output_document import (
    AssistantOutput,
    ChatChoice,
    ChatLogprobs,
    Choice,
    CompletionChoice,
    CompletionLogprobs,
    FinishReason,
    OutputDocument,
    OutputError,
    OutputObject,
    TokenLogprob,
    TopLogprob,
    Usage,
    output_version,
)

# --------------------------------------------------------------------------- input documents


class ChatInputDocument(DocPart):
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
        check_safe(self.v, self.params.seed, "params.seed")
        return self


def _check_version(v: int, v2_fields: list[str]) -> None:
    """Versions 1 and 2: v2 fields need `v: 2`, and `v: 2` needs a v2 field. Version 3 takes any."""
    if v == DOCUMENT_VERSION and v2_fields:
        raise FieldError(
            f"params.{v2_fields[0]}", 'is not a version-1 field: the document must be "v": 2 or 3'
        )
    if v == DOCUMENT_VERSION_2 and not v2_fields:
        raise FieldError("v", f"must be 1 or 3 for a document that uses none of {', '.join(V2_PARAMS)}")


def _check_private(v: int, salt: str | None, reply_to: str | None) -> None:
    """`salt` and `reply_to` mark a private input: version 3 only, and both or neither.

    The salt keeps the digest on chain unguessable (`node.content.salt`); `reply_to` is the
    requester's public key the miner seals its output to (`node.content.envelope`). Both are covered
    by the input digest, so no relay can swap the reply key.
    """
    if (salt is not None or reply_to is not None) and v != DOCUMENT_VERSION_3:
        raise FieldError("salt" if salt is not None else "reply_to", 'needs "v": 3 (private documents)')
    if (salt is None) != (reply_to is None):
        raise FieldError(
            "reply_to" if salt is not None else "salt", "a private document sets both salt and reply_to"
        )


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


class CompletionInputDocument(DocPart):
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
        check_safe(self.v, self.params.seed, "params.seed")
        _check_private(self.v, self.salt, self.reply_to)
        prompts = prompt_count(self.prompt)
        if prompts > MAX_PROMPTS:
            raise FieldError("prompt", f"at most {MAX_PROMPTS} prompts per request, got {prompts}")
        ids = _token_id_count(self.prompt)
        if ids > MAX_PROMPT_TOKEN_IDS:
            raise FieldError(
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
        raise FieldError(
            field,
            f"{prompts} prompt(s) x {samples} sequences each is {sequences} sequences, "
            f"over the limit of {MAX_SEQUENCES} per request",
        )
    if max_tokens is not None and sequences * max_tokens > MAX_TOTAL_TOKENS:
        raise FieldError(
            "params.max_tokens",
            f"{sequences} sequence(s) x max_tokens {max_tokens} is {sequences * max_tokens} tokens, "
            f"over the limit of {MAX_TOTAL_TOKENS} generated tokens per request",
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
        if isinstance(inner, FieldError):  # a cross-field check inside a sub-model
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
