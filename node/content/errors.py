"""Typed errors of the content layer, so callers map each failure to the right answer.

The gateway turns `DocumentError` into a 400 naming `param`, `ContentNotFound` into a 404 and
`BackendUnavailable` into a 503; the miner turns a bad input into an error output document.
Every message says what went wrong and what to do about it.
"""

from __future__ import annotations

MAX_DOCUMENT_BYTES = 1 << 20
"""The largest document (one raw IPFS block) we store or serve: Kubo's block limit, 1 MiB."""


class ContentError(Exception):
    """Base class of every content-layer error."""


class DocumentTooLarge(ContentError):
    """A document or block is larger than `MAX_DOCUMENT_BYTES`."""

    def __init__(self, size: int, limit: int = MAX_DOCUMENT_BYTES) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"document is {size} bytes, over the {limit}-byte limit of one raw IPFS block; "
            "shorten the prompt or messages"
        )


class InvalidCID(ContentError):
    """A string that is not a CID at all (bad multibase, bad varint, bad multihash)."""

    def __init__(self, value: str, reason: str) -> None:
        self.value = value
        self.reason = reason
        shown = value if len(value) <= 100 else value[:97] + "..."
        super().__init__(f"{shown!r} is not a valid CID: {reason}")


class UnsupportedCodec(ContentError):
    """A well-formed CID that names content we do not serve (only raw 0x55 sha2-256 blocks)."""

    def __init__(self, cid: str, reason: str) -> None:
        self.cid = cid
        self.reason = reason
        super().__init__(
            f"CID {cid} is not served here: {reason}; inferd documents are raw blocks "
            "(CIDv1, codec raw 0x55, sha2-256), e.g. bafkrei..."
        )


class ContentNotFound(ContentError):
    """No backend has the block for this CID."""

    def __init__(self, cid: str, where: str = "") -> None:
        self.cid = cid
        suffix = f" in {where}" if where else ""
        super().__init__(f"no block for CID {cid}{suffix}; was it uploaded (inferd content put)?")


class IntegrityError(ContentError):
    """Bytes that do not hash to the CID they were fetched by: never handed to the caller."""

    def __init__(self, cid: str, actual_cid: str, where: str = "") -> None:
        self.cid = cid
        self.actual_cid = actual_cid
        suffix = f" from {where}" if where else ""
        super().__init__(
            f"block{suffix} does not match its CID: asked for {cid}, bytes hash to {actual_cid}; "
            "the store is corrupt or the server is lying, the data was discarded"
        )


class ReadOnlyStore(ContentError):
    """A write to a backend that can only read (a trustless gateway)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        super().__init__(
            f"the {backend} content backend is read-only; use backend 'local' or 'kubo' to store documents"
        )


class BackendUnavailable(ContentError):
    """The backend could not be reached or answered garbage, after all retries."""

    def __init__(self, backend: str, detail: str) -> None:
        self.backend = backend
        self.detail = detail
        super().__init__(f"content backend {backend} unavailable: {detail}")


class InputUnavailable(ContentError):
    """An input that could not be fetched *yet*: not found, a backend down, or bytes that do not match.

    Never an answer: none of these is a property of the input (its CID fixes its bytes), and a
    requester who makes an input reachable for some assignees only would otherwise turn honest
    miners against each other. The miner keeps the job and tries again after `retry_after_s`.
    """

    def __init__(self, cid: str, reason: str, retry_after_s: float) -> None:
        self.cid = cid
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(f"input {cid} is not available yet ({reason}); retrying in {retry_after_s:.0f} s")


class DocumentError(ContentError):
    """A document that is not valid JSON or does not fit the schema; `field` names the culprit.

    `field` is a dotted path such as `params.temperature` or `messages[2].content`, or `""` when the
    document as a whole is wrong (not JSON, not an object).
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)
