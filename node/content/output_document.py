"""The output document: a miner's answer, byte for byte what it commits to and the gateway checks.

Every field must follow from the input, the model and the generated tokens alone: `created` is the
request block's timestamp, logprobs are finite (the engine clamps -inf), and an error's message is
either a `DocumentError`'s (derived from the document) or fixed per code, never a library's text,
so two honest miners write the same bytes. An output's version follows its input's
(`output_version`). Kept apart from the input side (`node.content.documents`), which it does not need.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from node.content.canonical import CURRENT_VERSION, DOCUMENT_VERSION, DOCUMENT_VERSION_3, LEGACY_VERSIONS
from node.content.doc_parts import DocPart, FieldError, NonEmptyStr, Salt, ToolCall, check_safe
from node.content.errors import MAX_DOCUMENT_BYTES, DocumentError


def output_version(input_version: int | None) -> Literal[1, 3]:
    """The `v` of the output document answering an input of this version (None: not readable).

    A readable v1 or v2 input is answered as before (v1 bytes: replaying an old request rebuilds its
    old output); a v3 input, and one that could not be read or validated, in the current version.
    """
    return DOCUMENT_VERSION if input_version in LEGACY_VERSIONS else CURRENT_VERSION


class TopLogprob(DocPart):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(DocPart):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(DocPart):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class AssistantOutput(DocPart):
    """The generated message; `content` is always written (null when only tools were called)."""

    _keep_null: ClassVar[frozenset[str]] = frozenset({"content"})

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class ChatChoice(DocPart):
    index: Annotated[int, Field(ge=0)]
    message: AssistantOutput
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class CompletionLogprobs(DocPart):
    """Legacy logprobs; the first echoed prompt token has no logprob (null)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(DocPart):
    index: Annotated[int, Field(ge=0)]
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None


class Usage(DocPart):
    prompt_tokens: Annotated[int, Field(ge=0)]
    completion_tokens: Annotated[int, Field(ge=0)]
    total_tokens: Annotated[int, Field(ge=0)]


class OutputError(DocPart):
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


class OutputDocument(DocPart):
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
            raise FieldError("salt", 'needs "v": 3 (private documents)')
        check_safe(self.v, self.request_id, "request_id")
        check_safe(self.v, self.created, "created")
        want = {"chat.completion": ChatChoice, "text_completion": CompletionChoice}.get(self.object)
        if want is None:
            if self.error is None or self.choices:
                raise FieldError("object", "'error' needs error set and no choices")
        elif not all(isinstance(c, want) for c in self.choices):
            raise FieldError("choices", f"must be {want.__name__} objects for {self.object}")
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


__all__ = [
    "AssistantOutput",
    "ChatChoice",
    "ChatLogprobs",
    "Choice",
    "CompletionChoice",
    "CompletionLogprobs",
    "FinishReason",
    "OutputDocument",
    "OutputError",
    "OutputObject",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
    "output_version",
]
