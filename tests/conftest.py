"""Shared fixtures: real anvil, mosquitto and redis on free loopback ports, and a temp data dir."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from node.devnet.processes import (
    Anvil,
    Mosquitto,
    Redis,
    anvil_private_keys,
    anvil_process,
    mosquitto_process,
    redis_process,
)


@pytest.fixture(scope="session")
def process_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("process-logs")


@contextmanager
def _running(node: Anvil) -> Iterator[Anvil]:
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def anvil(process_logs: Path) -> Iterator[Anvil]:
    """A real anvil (automine) for the whole session."""
    with _running(anvil_process(process_logs)) as node:
        yield node


@pytest.fixture
def own_anvil(process_logs: Path) -> Iterator[Anvil]:
    """An anvil of a test's own, for tests that change the node's behaviour (automine off, block gas
    limit, reorgs) or that must not depend on the shared node's long history."""
    with _running(anvil_process(process_logs)) as node:
        yield node


@pytest.fixture(scope="session")
def anvil_keys() -> list[str]:
    """Private keys of anvil's ten funded dev accounts (test mnemonic; never real funds)."""
    return anvil_private_keys(10)


@pytest.fixture(scope="session")
def mosquitto(process_logs: Path) -> Iterator[Mosquitto]:
    """A real mosquitto broker for the whole session; tests may stop and restart it."""
    broker = mosquitto_process(process_logs)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def locked_mosquitto(process_logs: Path, anvil_keys: list[str]) -> Iterator[Mosquitto]:
    """A real mosquitto locked down as shipped: no anonymous clients, the inferd ACL, and logins for
    the miners of anvil keys 1 and 2 (username = address) and gateways `test` and `observer`."""
    from eth_account import Account

    from node.stream.access import gateway_login, miner_login

    logins = [miner_login(Account.from_key(k).address) for k in anvil_keys[1:3]]
    logins += [gateway_login("test"), gateway_login("observer")]
    broker = mosquitto_process(process_logs, logins=logins)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def redis_server(process_logs: Path) -> Iterator[Redis]:
    """A real redis-server (loopback, ephemeral port, temp dir, no persistence) for the whole session;
    tests keep apart by using their own `gateway.redis_prefix`."""
    server = redis_process(process_logs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """An empty data dir for one test."""
    path = tmp_path / "data"
    path.mkdir()
    return path
