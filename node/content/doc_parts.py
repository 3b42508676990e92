"""The base of every document part, and the pieces input and output documents share.

Input documents (`node.content.documents`, `node.content.input_parts`) and output documents
(`node.content.output_document`) encode the same way (`DocPart`: strict, no unknown keys, None
omitted), report a cross-field failure the same way (`FieldError`, turned into a `DocumentError`
naming the dotted field), bound version-3 integers the same way (`check_safe`) and both carry tool
calls, so those live here, below both.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)

from node.content.canonical import DOCUMENT_VERSION_3, MAX_SAFE_INTEGER, UNSAFE_NUMBER


class DocPart(BaseModel):
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


class FieldError(ValueError):
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


class FunctionCall(DocPart):
    """The function a tool call invokes; `arguments` is a JSON string, as OpenAI sends it."""

    name: str
    arguments: str


class ToolCall(DocPart):
    """One tool call made by the assistant (in an input history or in an output message)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def check_safe(v: int, value: int | None, field: str) -> None:
    """A version-3 integer field beyond ±(2^53 - 1) (free-form JSON is checked when read and encoded)."""
    if v == DOCUMENT_VERSION_3 and value is not None and abs(value) > MAX_SAFE_INTEGER:
        raise FieldError(field, UNSAFE_NUMBER)


__all__ = [
    "Bias",
    "DocPart",
    "FieldError",
    "FunctionCall",
    "NonEmptyStr",
    "PublicKeyHex",
    "Salt",
    "TokenId",
    "TokenIdKey",
    "ToolCall",
    "ToolName",
    "check_safe",
]
