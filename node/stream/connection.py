"""Connecting to the MQTT broker: what the miner's publisher and the gateway's subscriber share.

`Broker` turns a `mqtt://host:port` URL (and a login) into an `aiomqtt.Client`, `credentials` reads
the login from the `stream.*` settings, and `Backoff` is the reconnect delay both use while the
broker is away.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlparse

import aiomqtt

if TYPE_CHECKING:
    from node.config import StreamSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883


@dataclass(frozen=True)
class Broker:
    """Where the broker is and how to log in."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line

    @classmethod
    def from_url(cls, broker_url: str, *, username: str | None = None, password: str | None = None) -> Broker:
        """From `mqtt://host:port` (or `tcp://`, or bare `//host:port`); ValueError for other schemes."""
        url = urlparse(broker_url)
        if url.scheme not in ("mqtt", "tcp", ""):
            raise ValueError(f"unsupported broker URL {broker_url!r}: use mqtt://host:port")
        return cls(url.hostname or DEFAULT_HOST, url.port or DEFAULT_PORT, username, password)

    def client(self, **options: Any) -> aiomqtt.Client:
        """An (unconnected) aiomqtt client for this broker; `options` go to `aiomqtt.Client`."""
        return aiomqtt.Client(self.host, self.port, username=self.username, password=self.password, **options)


class Credentials(TypedDict):
    """The broker login as keyword arguments (`StreamPublisher(..., **credentials(stream))`)."""

    username: str | None
    password: str | None


def credentials(stream: StreamSettings) -> Credentials:
    """The broker login from the `stream.*` settings, the password unwrapped."""
    password = stream.password.get_secret_value() if stream.password else None
    return {"username": stream.username, "password": password}


class Backoff:
    """Reconnect delay: `first_s`, doubling after each wait up to `max_s`; `reset` after a success."""

    def __init__(self, max_s: float, first_s: float = 0.2) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.delay = first_s

    def reset(self) -> None:
        self.delay = self.first_s

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.max_s)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Backoff", "Broker", "Credentials", "credentials"]
