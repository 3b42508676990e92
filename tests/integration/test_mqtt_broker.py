"""The broker as shipped is locked down (real mosquitto, the inferd ACL and password file).

Proves who can do what: nobody connects anonymously or with a wrong password; a miner publishes
only under its own address (a subscriber allowed to read everything sees nothing it wrote under
another miner's name) and reads nothing; a gateway reads but cannot publish under a miner's name.
Also that a password file hashed in Python (no `mosquitto_passwd` installed) works in mosquitto.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest
from eth_account import Account

from node.devnet.processes import Mosquitto, mosquitto_process
from node.stream.access import Login, gateway_login, miner_login
from node.stream.topics import delta_topic, miner_topic, parse_request_topic, result_topic

HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _client(broker: Mosquitto, login: Login | None, password: str | None = None) -> aiomqtt.Client:
    if login is None:
        return aiomqtt.Client(broker.host, broker.port, timeout=5)
    secret = login.password if password is None else password
    return aiomqtt.Client(broker.host, broker.port, username=login.username, password=secret, timeout=5)


def _miners(broker: Mosquitto) -> tuple[Login, Login]:
    a, b = (login for name, login in broker.logins.items() if name.startswith("0x"))
    return a, b


async def _observe(broker: Mosquitto, publish: list[tuple[Login, str]], settle_s: float = 0.5) -> list[str]:
    """Topics an all-reading gateway login receives while each (login, topic) publishes once (not
    the retained heartbeats earlier tests left on this shared broker)."""
    seen: list[str] = []
    async with _client(broker, broker.logins["gateway-observer"]) as observer:
        await observer.subscribe("inferd/#", qos=1)

        async def collect() -> None:
            async for message in observer.messages:
                if not message.retain:
                    seen.append(str(message.topic))

        task = asyncio.create_task(collect())
        for login, topic in publish:
            async with _client(broker, login) as publisher:
                await publisher.publish(topic, b'{"seq":0,"choice":0,"delta":"x"}', qos=1)
        await asyncio.sleep(settle_s)
        task.cancel()
    return seen


async def test_anonymous_and_wrong_password_are_refused(locked_mosquitto: Mosquitto) -> None:
    a, _ = _miners(locked_mosquitto)
    with pytest.raises(aiomqtt.MqttError):
        async with _client(locked_mosquitto, None):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with _client(locked_mosquitto, a, password="not-" + a.password):
            pass
    stranger = miner_login(Account.create().address)
    with pytest.raises(aiomqtt.MqttError):
        async with _client(locked_mosquitto, stranger):
            pass
    async with _client(locked_mosquitto, a):
        pass  # the right password gets in


async def test_a_miner_publishes_only_under_its_own_address(locked_mosquitto: Mosquitto) -> None:
    a, b = _miners(locked_mosquitto)
    forged = [
        (a, delta_topic(31337, HUB, 7, b.username)),
        (a, result_topic(31337, HUB, 7, b.username)),
        (a, miner_topic(31337, HUB, b.username)),
        (a, "inferd/v1/31337/" + HUB + "/req/7/delta"),  # the old, sender-less layout
    ]
    own = [
        (a, delta_topic(31337, HUB, 7, a.username)),
        (a, result_topic(31337, HUB, 7, a.username)),
        (a, miner_topic(31337, HUB, a.username)),
    ]
    seen = await _observe(locked_mosquitto, forged + own)
    assert sorted(seen) == sorted(topic for _, topic in own)


async def test_a_gateway_reads_but_cannot_publish(locked_mosquitto: Mosquitto) -> None:
    a, _ = _miners(locked_mosquitto)
    gateway = locked_mosquitto.logins["gateway-test"]
    topics = [
        delta_topic(31337, HUB, 9, a.username),
        result_topic(31337, HUB, 9, a.username),
        miner_topic(31337, HUB, a.username),
        "inferd/v1/31337/" + HUB + "/req/9/delta",
    ]
    assert await _observe(locked_mosquitto, [(gateway, t) for t in topics]) == []
    # `pattern ... %u` lets every login write under its own name, a gateway's too; such a topic
    # names no miner address, so the gateway's parser refuses it.
    own_name = f"inferd/v1/31337/{HUB}/req/9/gateway-test/delta"
    assert await _observe(locked_mosquitto, [(gateway, own_name)]) == [own_name]
    assert parse_request_topic(own_name) is None


async def test_a_miner_cannot_read_others_streams(locked_mosquitto: Mosquitto) -> None:
    a, b = _miners(locked_mosquitto)
    got: list[str] = []
    async with _client(locked_mosquitto, b) as spy:
        await spy.subscribe("inferd/#", qos=1)

        async def collect() -> None:
            async for message in spy.messages:
                got.append(str(message.topic))

        task = asyncio.create_task(collect())
        async with _client(locked_mosquitto, a) as publisher:
            await publisher.publish(delta_topic(31337, HUB, 3, a.username), b"{}", qos=1)
        await asyncio.sleep(0.5)
        task.cancel()
    assert got == []


async def test_python_hashed_passwords_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `mosquitto_passwd` the same PBKDF2-SHA512 `$7$` hash is written in Python."""
    import node.devnet.processes as processes
    from node.stream import access

    def python_only(path: Path, logins: list[Login], *, mosquitto_passwd: str | None = None) -> None:
        access.write_password_file(path, logins, mosquitto_passwd="")

    monkeypatch.setattr(processes, "write_password_file", python_only)
    miner = miner_login(Account.create().address)
    broker = mosquitto_process(tmp_path, logins=[miner, gateway_login("observer")])
    assert "$7$101$" in Path(broker.argv[-1]).with_suffix(".passwd").read_text()
    broker.start()
    try:
        own = delta_topic(31337, HUB, 1, miner.username)
        assert await _observe(broker, [(miner, own)]) == [own]
        with pytest.raises(aiomqtt.MqttError):
            async with _client(broker, miner, password="wrong"):
                pass
    finally:
        broker.stop()
