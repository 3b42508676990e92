"""The default backend: a content-addressed blockstore in a folder on disk.

Layout: `{root}/{shard}/{cid}`, where `shard` is the two characters before the CID's last one
(the "next-to-last/2" scheme of Kubo's flatfs), so no folder grows past ~1024 entries. Writes are
atomic and durable (temp file, fsync, rename, fsync of the folder): a crash leaves the old state
or the whole block, never half of one. Reads are verified against the CID.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from node.content.cid import cid_for_bytes, normalize_cid
from node.content.errors import (
    MAX_DOCUMENT_BYTES,
    ContentNotFound,
    DocumentTooLarge,
    IntegrityError,
)
from node.content.store import ContentStore, check_size, verify_block


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(ContentStore):
    """Blocks as files under `root`; blocking I/O runs in a worker thread."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, cid: str) -> Path:
        """Where the block of `cid` (any spelling) lives on disk."""
        key = normalize_cid(cid)
        return self.root / key[-3:-1] / key

    async def put(self, data: bytes) -> str:
        check_size(data)
        return await asyncio.to_thread(self._put, data)

    async def get(self, cid: str) -> bytes:
        path = self.path_for(cid)  # parses first: InvalidCID / UnsupportedCodec
        return await asyncio.to_thread(self._get, cid, path)

    async def has(self, cid: str) -> bool:
        path = self.path_for(cid)
        return await asyncio.to_thread(path.is_file)

    def _put(self, data: bytes) -> str:
        cid = cid_for_bytes(data)
        path = self.path_for(cid)
        if path.is_file():
            try:
                self._get(cid, path)
                return cid  # already stored and intact
            except IntegrityError:
                pass  # a corrupt copy: overwrite it with the good bytes
        shard = path.parent
        new_shard = not shard.is_dir()
        shard.mkdir(parents=True, exist_ok=True)
        if new_shard:
            _fsync_dir(self.root)
        tmp = shard / f".{cid}.{secrets.token_hex(6)}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(shard)
        return cid

    def _get(self, cid: str, path: Path) -> bytes:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_DOCUMENT_BYTES + 1)
        except FileNotFoundError:
            raise ContentNotFound(cid, f"local store {self.root}") from None
        if len(data) > MAX_DOCUMENT_BYTES:
            raise DocumentTooLarge(path.stat().st_size)
        return verify_block(cid, data, f"local store file {path}")


__all__ = ["LocalStore"]
