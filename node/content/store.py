"""The `ContentStore` interface every backend implements, and the verification they all share.

A store keeps raw blocks by CID. Whatever the backend, `get` hands back only bytes that hash to
the CID asked for (`verify_block`), so a corrupt disk or a lying server becomes an
`IntegrityError`, never data.
"""

from __future__ import annotations

import abc
from types import TracebackType

from node.content.cid import cid_for_bytes, normalize_cid
from node.content.errors import MAX_DOCUMENT_BYTES, DocumentTooLarge, IntegrityError


def check_size(data: bytes) -> None:
    """DocumentTooLarge when `data` is over the 1 MiB block limit."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge(len(data))


def verify_block(cid: str, data: bytes, where: str = "") -> bytes:
    """Return `data` if it hashes to `cid` (any spelling), else raise IntegrityError."""
    actual = cid_for_bytes(data)
    if actual != normalize_cid(cid):
        raise IntegrityError(cid, actual, where)
    return data


class ContentStore(abc.ABC):
    """Raw blocks by CID. Async, usable as `async with`; `close` releases connections."""

    name: str = "store"

    @abc.abstractmethod
    async def put(self, data: bytes) -> str:
        """Store `data` as one raw block and return its canonical CID (idempotent)."""

    @abc.abstractmethod
    async def get(self, cid: str) -> bytes:
        """The verified bytes of `cid`: ContentNotFound, IntegrityError, BackendUnavailable."""

    @abc.abstractmethod
    async def has(self, cid: str) -> bool:
        """Whether the block is available here without fetching it from elsewhere."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections or files; the store is unusable afterwards."""

    async def __aenter__(self) -> ContentStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


__all__ = ["ContentStore", "check_size", "verify_block"]
