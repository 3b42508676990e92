"""`open_store`: the backend the settings name, built from `node.config.ContentSettings`.

Written against a Protocol with the settings' field names so this module does not import the
config (and tests can pass any object with those attributes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from node.content.gateway import GatewayStore
from node.content.http import RetryPolicy
from node.content.kubo import KuboStore
from node.content.local import LocalStore
from node.content.store import ContentStore


class ContentSettingsLike(Protocol):
    """The fields of `node.config.ContentSettings` this factory reads."""

    @property
    def backend(self) -> str: ...
    @property
    def path(self) -> Path | None: ...
    @property
    def kubo_api(self) -> str | None: ...
    @property
    def gateway_urls(self) -> Sequence[str]: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def retries(self) -> int: ...


def open_store(settings: ContentSettingsLike, default_path: Path | None = None) -> ContentStore:
    """Build the configured store; `default_path` is the local folder when `path` is unset.

    Pass `Settings.content_path()` as `default_path` to get `{data_dir}/blocks`.
    """
    policy = RetryPolicy(retries=settings.retries)
    if settings.backend == "local":
        root = settings.path or default_path
        if root is None:
            raise ValueError("the local content backend needs a folder: set content.path")
        return LocalStore(root)
    if settings.backend == "kubo":
        if not settings.kubo_api:
            raise ValueError("the kubo content backend needs content.kubo_api, e.g. http://127.0.0.1:5001")
        return KuboStore(settings.kubo_api, timeout_s=settings.timeout_s, policy=policy)
    if settings.backend == "gateway":
        if not settings.gateway_urls:
            raise ValueError(
                "the gateway content backend needs content.gateway_urls, e.g. ['http://127.0.0.1:8000']"
            )
        return GatewayStore(settings.gateway_urls, timeout_s=settings.timeout_s, policy=policy)
    raise ValueError(f"unknown content backend {settings.backend!r}: use local, kubo or gateway")


__all__ = ["ContentSettingsLike", "open_store"]
