"""Content layer: documents, their canonical bytes and CIDs, and the stores that keep them.

Import documents from `node.content.documents`, CIDs from `node.content.cid`, stores through
`node.content.factory.open_store`, and the trustless gateway route from `node.content.trustless`.
"""

from node.content.cid import cid_for_bytes, cid_to_digest, digest_to_cid, parse_cid
from node.content.errors import (
    MAX_DOCUMENT_BYTES,
    BackendUnavailable,
    ContentError,
    ContentNotFound,
    DocumentError,
    DocumentTooLarge,
    IntegrityError,
    InvalidCID,
    ReadOnlyStore,
    UnsupportedCodec,
)
from node.content.store import ContentStore

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "BackendUnavailable",
    "ContentError",
    "ContentNotFound",
    "ContentStore",
    "DocumentError",
    "DocumentTooLarge",
    "IntegrityError",
    "InvalidCID",
    "ReadOnlyStore",
    "UnsupportedCodec",
    "cid_for_bytes",
    "cid_to_digest",
    "digest_to_cid",
    "parse_cid",
]
