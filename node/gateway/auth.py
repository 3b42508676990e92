"""API keys: generated once, stored only as sha256 hashes in a JSON file, checked per request.

A key's record may carry its own limits (requests per minute, requests in flight, daily spend in
wei) over the gateway's defaults, and an `admin` flag (reads any request's record).

Keys are 32 random bytes (`sk-inferd-...`), so a fast hash is as strong as scrypt here: there is
no low-entropy password to brute-force, and lookups stay O(1). The file is rewritten atomically
with mode 0600 and re-read when its mtime changes, so `inferd gateway keys add|revoke` takes effect
on a running gateway without a restart. The plaintext key is shown once, at creation, and never
logged (it is registered with the log redactor). Several gateways share their keys in Redis
instead (`node.gateway.shared.RedisKeyStore`, chosen by `gateway.redis_url`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from node.log import register_secret

KEY_PREFIX = "sk-inferd-"


class KeyFileError(Exception):
    """The keys file exists but cannot be parsed; the gateway refuses to start rather than open up."""


class UnknownKey(Exception):
    """No key with this id (or prefix) is stored."""


class ApiKeyRecord(BaseModel):
    """One stored key: never the key itself, only its hash and a short displayable prefix."""

    id: str
    name: str = ""
    hash: str
    prefix: str
    created: int
    revoked: bool = False
    revoked_at: int | None = None
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    daily_budget_wei: int | None = Field(default=None, ge=0)
    admin: bool = False
    """An admin key may read every request's record (`GET /v1/inferences/{id}`), not only its own."""


class _KeyFile(BaseModel):
    version: int = 1
    keys: list[ApiKeyRecord] = Field(default_factory=list)


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(
    name: str = "",
    rate_limit_per_minute: int | None = None,
    *,
    max_concurrent: int | None = None,
    daily_budget_wei: int | None = None,
    admin: bool = False,
) -> tuple[str, ApiKeyRecord]:
    """A fresh random key and its record (only the key's hash is kept); every key store uses it."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    register_secret(key)
    record = ApiKeyRecord(
        id="key_" + secrets.token_hex(6),
        name=name,
        hash=hash_key(key),
        prefix=key[: len(KEY_PREFIX) + 4],
        created=int(time.time()),
        rate_limit_per_minute=rate_limit_per_minute,
        max_concurrent=max_concurrent,
        daily_budget_wei=daily_budget_wei,
        admin=admin,
    )
    return key, record


class KeyStore:
    """The keys file: add, list, revoke, and `lookup` for the request path (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime_ns: int | None = None
        self._data = _KeyFile()
        self._by_hash: dict[str, ApiKeyRecord] = {}

    # ------------------------------------------------------------------ file

    def _load_if_changed(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._data, self._by_hash, self._mtime_ns = _KeyFile(), {}, None
            return
        if stat.st_mtime_ns == self._mtime_ns:
            return
        try:
            data = _KeyFile.model_validate_json(self.path.read_bytes())
        except (ValidationError, OSError, ValueError) as exc:
            raise KeyFileError(f"cannot read API keys file {self.path}: {exc}") from exc
        self._data = data
        self._by_hash = {rec.hash: rec for rec in data.keys}
        self._mtime_ns = stat.st_mtime_ns

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        payload = json.dumps(self._data.model_dump(mode="json"), indent=2, sort_keys=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._mtime_ns = None  # force a reload so the mtime cache matches the new file
        self._load_if_changed()

    # ------------------------------------------------------------------ management

    def add(
        self,
        name: str = "",
        rate_limit_per_minute: int | None = None,
        *,
        max_concurrent: int | None = None,
        daily_budget_wei: int | None = None,
        admin: bool = False,
    ) -> tuple[str, ApiKeyRecord]:
        """Create a key; returns (plaintext key, record). The plaintext is not stored anywhere.
        Limits left None take the gateway's defaults."""
        key, record = new_key(
            name,
            rate_limit_per_minute,
            max_concurrent=max_concurrent,
            daily_budget_wei=daily_budget_wei,
            admin=admin,
        )
        with self._lock:
            self._load_if_changed()
            self._data.keys.append(record)
            self._save()
        return key, record

    def list(self) -> list[ApiKeyRecord]:
        with self._lock:
            self._load_if_changed()
            return list(self._data.keys)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Mark a key revoked (kept for audit); UnknownKey if no such id."""
        with self._lock:
            self._load_if_changed()
            for rec in self._data.keys:
                if rec.id == key_id:
                    rec.revoked = True
                    rec.revoked_at = int(time.time())
                    self._save()
                    return rec
        raise UnknownKey(f"no API key with id {key_id!r}; `inferd gateway keys list` shows them")

    # ------------------------------------------------------------------ request path

    def lookup(self, key: str) -> ApiKeyRecord | None:
        """The active record for a presented key, or None (unknown or revoked)."""
        wanted = hash_key(key)
        with self._lock:
            self._load_if_changed()
            rec = self._by_hash.get(wanted)
        if rec is None or rec.revoked or not hmac.compare_digest(rec.hash, wanted):
            return None
        return rec

    async def alookup(self, key: str) -> ApiKeyRecord | None:
        """`stores.ApiKeys`: `lookup` for the request path."""
        return self.lookup(key)


def extract_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The presented key from `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


def default_keys_path(data_dir: Path) -> Path:
    return data_dir / "gateway" / "api_keys.json"


__all__ = [
    "KEY_PREFIX",
    "ApiKeyRecord",
    "KeyFileError",
    "KeyStore",
    "UnknownKey",
    "default_keys_path",
    "extract_key",
    "hash_key",
    "new_key",
]
