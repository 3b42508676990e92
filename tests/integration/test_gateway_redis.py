"""Several gateways on one Redis act as one: a key's rate limit, in-flight slots, daily spend and the
API keys themselves are shared (`node.gateway.shared`), and survive a gateway's restart.

The gateways are real separate processes (`tests.integration.fake_gateway`: the real app over the
fake chain and miner of `node.gateway.testing`) on a real redis-server; each gets its Redis URL
from a secrets file (`INFERD_SECRETS_DIR`), as an operator would hand it a password-bearing URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from node.config import load_settings
from node.content.local import LocalStore
from node.devnet.processes import REPO_ROOT, Redis, free_port
from node.gateway.app import create_app
from node.gateway.auth import KeyStore
from node.gateway.budget import TOTAL, Budget
from node.gateway.errors import GatewayBudgetExhausted, InsufficientQuota
from node.gateway.shared import (
    KeyStoreUnreachable,
    RedisInFlight,
    RedisKeyStore,
    RedisSpendLedger,
    connect,
)
from node.gateway.testing import FakeBackend

pytestmark = pytest.mark.timeout(180)

MODEL = "SmolLM2-135M-Instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
FEE = 10**12  # the fake backend's model fee; its transactions cost no gas


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def prefix() -> str:
    """Each test's own key space on the session's Redis."""
    return f"t{secrets.token_hex(4)}"


# ------------------------------------------------------------------ gateway processes


@dataclass
class GatewayProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _spawn(name: str, tmp: Path, secrets_dir: Path, prefix: str) -> GatewayProcess:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    env.update(
        INFERD_DATA_DIR=str(tmp / name),
        INFERD_SECRETS_DIR=str(secrets_dir),  # gateway.redis_url comes from a file there
        INFERD_GATEWAY__PORT=str(port),
        INFERD_GATEWAY__REDIS_PREFIX=prefix,
        INFERD_STREAM__ENABLED="false",
        PYTHONPATH=str(REPO_ROOT),
    )
    log_path = tmp / f"{name}-{port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.fake_gateway"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return GatewayProcess(name, port, proc, log_path)


def _await_ready(gws: list[GatewayProcess], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = list(gws)
    while waiting:
        gw = waiting[0]
        if gw.proc.poll() is not None:
            raise AssertionError(f"gateway {gw.name} exited: {gw.log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{gw.url}/healthz", timeout=1.0).status_code == 200:
                waiting.pop(0)
                continue
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway {gw.name} not ready: {gw.log_path.read_text()[-2000:]}")
        time.sleep(0.1)


class Fleet:
    """Gateway processes `a` and `b` on one Redis (its URL in a secrets file), restartable."""

    def __init__(self, redis_url: str, tmp: Path, prefix: str) -> None:
        self.tmp, self.prefix = tmp, prefix
        self.secrets_dir = tmp / "secrets"
        self.secrets_dir.mkdir(mode=0o700)
        (self.secrets_dir / "inferd_gateway__redis_url").write_text(redis_url + "\n")
        self.running = {name: _spawn(name, tmp, self.secrets_dir, prefix) for name in ("a", "b")}
        _await_ready(list(self.running.values()))

    def restart(self, name: str) -> GatewayProcess:
        self.running[name].stop()
        self.running[name] = _spawn(name, self.tmp, self.secrets_dir, self.prefix)
        _await_ready([self.running[name]])
        return self.running[name]

    def stop(self) -> None:
        for gw in self.running.values():
            gw.stop()


@pytest.fixture()
def fleet(redis_server: Redis, tmp_path: Path, prefix: str) -> Iterator[Fleet]:
    made: list[Fleet] = []
    try:
        made.append(Fleet(redis_server.url, tmp_path, prefix))
        yield made[0]
    finally:
        for f in made:
            f.stop()


async def test_two_gateway_processes_share_rate_limit_spend_and_keys_across_a_restart(
    redis_server: Redis, fleet: Fleet, prefix: str
) -> None:
    keys = RedisKeyStore(redis_server.url, prefix)  # what `inferd gateway keys add` does with redis_url
    rate_key, _ = keys.add("rate", rate_limit_per_minute=10)  # added while both gateways run
    budget_key, budget_rec = keys.add("budget", daily_budget_wei=3 * FEE)
    a, b = fleet.running["a"], fleet.running["b"]

    async with httpx.AsyncClient(timeout=30) as http:
        # one key's rate limit over both gateways: 10 per minute in all, not 10 each
        by_gateway: dict[str, Counter[int]] = {"a": Counter(), "b": Counter()}
        for i in range(24):
            gw = (a, b)[i % 2]
            reply = await http.get(f"{gw.url}/v1/models", headers=auth(rate_key))
            by_gateway[gw.name][reply.status_code] += 1
            if reply.status_code == 429:
                assert reply.json()["error"]["code"] == "rate_limit_exceeded"
                assert int(reply.headers["Retry-After"]) >= 1
        total = by_gateway["a"] + by_gateway["b"]
        assert total == Counter({200: 10, 429: 14}), by_gateway
        assert by_gateway["a"][200] == by_gateway["b"][200] == 5  # each served its turns until the limit

        # one key's daily budget over both gateways: 3 fees in all
        statuses = []
        for gw in (a, b, a, b, a):
            reply = await http.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers=auth(budget_key))
            statuses.append(reply.status_code)
            if reply.status_code == 429:
                assert reply.json()["error"]["code"] == "insufficient_quota"
        assert statuses == [200, 200, 200, 429, 429]
        ledger = RedisSpendLedger(connect(redis_server.url), prefix, lease_s=60)
        assert await ledger.aspent(budget_rec.id) == 3 * FEE == await ledger.aspent(TOTAL)

        # a restarted gateway keeps what the fleet counted
        a = fleet.restart("a")
        limited = await http.get(f"{a.url}/v1/models", headers=auth(rate_key))
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
        broke = await http.post(f"{a.url}/v1/chat/completions", json=CHAT, headers=auth(budget_key))
        assert broke.status_code == 429 and broke.json()["error"]["code"] == "insufficient_quota"
        assert await ledger.aspent(budget_rec.id) == 3 * FEE

        # a revoked key is refused by every gateway at once
        keys.revoke(budget_rec.id)
        for gw in (a, b):
            reply = await http.get(f"{gw.url}/v1/models", headers=auth(budget_key))
            assert reply.status_code == 401, reply.text


# ------------------------------------------------------------------ the stores, two clients each


async def _eventually(check: object, what: str, timeout_s: float = 30.0) -> None:
    """Poll an async predicate until true; a deadline only guards against hanging forever."""
    deadline = time.monotonic() + timeout_s
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.05)


@pytest.fixture()
async def clients(redis_server: Redis) -> AsyncIterator[list[object]]:
    made = [connect(redis_server.url) for _ in range(3)]
    yield made  # type: ignore[misc]
    for client in made:
        await client.aclose()


async def test_in_flight_slots_are_shared_and_a_crashed_holders_expire(
    redis_server: Redis, prefix: str, clients: list[object]
) -> None:
    one, two = (RedisInFlight(c, prefix, lease_s=60) for c in clients[:2])  # type: ignore[arg-type]
    first, second = await one.acquire("k", 2), await two.acquire("k", 2)
    assert first is not None and second is not None
    assert await one.acquire("k", 2) is None and await two.acquire("k", 2) is None
    assert await one.held("k") == await two.held("k") == 2
    await first.release()
    await first.release()  # idempotent: frees one slot, not two
    assert await two.held("k") == 1
    assert await two.acquire("k", 2) is not None

    short = RedisInFlight(clients[2], prefix, lease_s=0.5)  # type: ignore[arg-type]
    assert await short.acquire("crash", 1) is not None  # held by a gateway that dies, never released
    assert await one.acquire("crash", 1) is None
    await _eventually(
        lambda: _acquired(one, "crash"), "a dead gateway's slot never came back after its lease"
    )


async def _acquired(store: RedisInFlight, key: str) -> bool:
    return await store.acquire(key, 1) is not None


async def test_shared_ledger_is_atomic_exact_and_reservations_lease(
    redis_server: Redis, prefix: str, clients: list[object]
) -> None:
    one, two = (RedisSpendLedger(c, prefix, lease_s=60) for c in clients[:2])  # type: ignore[arg-type]
    big = 10**20  # 100 ether: past Lua's exact doubles and INCRBY's 64 bits
    budget = Budget(key_wei=10 * big, total_wei=None)
    tries = [(one, two)[i % 2].areserve("k", big, budget) for i in range(40)]
    results = await asyncio.gather(*tries, return_exceptions=True)
    taken = [r for r in results if not isinstance(r, BaseException)]
    assert len(taken) == 10 and all(isinstance(r, InsufficientQuota) for r in results if r not in taken)
    for i, reservation in enumerate(taken):
        await (one, two)[i % 2].asettle(reservation, big + 1)
    assert await one.aspent("k") == 10 * (big + 1) == await two.aspent(TOTAL)
    with pytest.raises(GatewayBudgetExhausted):
        await two.areserve("other", 1, Budget(key_wei=None, total_wei=10 * big))

    await one.arecord_owner(31337, 2**255, "k")
    assert await two.aowner(31337, 2**255) == "k" and await two.aowner(31337, 1) is None

    short = RedisSpendLedger(clients[2], prefix, lease_s=0.5)  # type: ignore[arg-type]
    tight = Budget(key_wei=5, total_wei=None)
    await short.areserve("lease", 5, tight)  # its gateway dies before settling
    with pytest.raises(InsufficientQuota):
        await one.areserve("lease", 1, tight)

    async def fits() -> bool:
        try:
            await one.areserve("lease", 5, tight)
        except InsufficientQuota:
            return False
        return True

    await _eventually(fits, "a dead gateway's reservation never expired")


async def test_unreachable_redis_is_503_or_refuses_to_start(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = load_settings(data_dir=tmp_path, gateway={"redis_url": dead})
    with pytest.raises(KeyStoreUnreachable, match=r"check gateway\.redis_url"):
        create_app(settings, backend=FakeBackend(), store=LocalStore(tmp_path / "blocks"))
    keys = KeyStore(tmp_path / "keys.json")
    key, _ = keys.add("t")
    app = create_app(settings, backend=FakeBackend(), store=LocalStore(tmp_path / "blocks"), keys=keys)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=auth(key)) as http:
        reply = await http.get("/v1/models")
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "shared_state_unavailable"
    assert "127.0.0.1" not in reply.text


def test_keys_cli_manages_keys_in_redis(
    redis_server: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from node.cli.gateway import app as gateway_cli

    monkeypatch.setenv("INFERD_GATEWAY__REDIS_URL", redis_server.url)
    monkeypatch.setenv("INFERD_GATEWAY__REDIS_PREFIX", prefix)
    runner = CliRunner()
    added = runner.invoke(gateway_cli, ["keys", "add", "--name", "ops", "--admin", "--json"])
    assert added.exit_code == 0, added.output
    info = json.loads(added.output)
    store = RedisKeyStore(redis_server.url, prefix)  # what every gateway on this Redis reads
    (record,) = store.list()
    assert record.id == info["id"] and record.admin and info["key"] not in str(record.model_dump())
    assert runner.invoke(gateway_cli, ["keys", "revoke", info["id"]]).exit_code == 0
    assert store.list()[0].revoked
    monkeypatch.setenv("INFERD_GATEWAY__REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    down = runner.invoke(gateway_cli, ["keys", "list"])
    assert down.exit_code == 2 and "cannot reach Redis" in down.output
