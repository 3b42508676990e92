"""Hostile MQTT peers against the gateway's subscriber, pending registry and SSE stream (real mosquitto).

The client of a streamed request sees only what the request's assignee published: a miner with
valid broker credentials that is not assigned (or, on an open test broker, any publisher under its
own address) can send deltas and results for someone else's request, before or after the gateway
registers it, and none of it reaches the client. Malformed, oversized and deeply nested payloads
from the assignee's own login are counted and dropped, and the subscriber keeps delivering after.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import pytest
from eth_account import Account

from node.chain.signing import sign_result
from node.content.cid import cid_for_bytes, digest_of
from node.content.documents import AssistantOutput, ChatChoice, OutputDocument, Usage, to_canonical_bytes
from node.content.errors import ContentNotFound
from node.devnet.processes import Mosquitto
from node.gate import MQTT_LIMITS
from node.gateway.mqtt import Routed, Subscriber, request_topics
from node.gateway.pending import PendingRegistry, recover_submission_signer
from node.gateway.records import Submission
from node.gateway.streaming import stream_events
from node.stream.access import Login
from node.stream.publisher import StreamPublisher
from node.stream.topics import delta_topic, result_topic

HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
INPUT = b'{"v":1}'
ANSWER = "Hello honest world"


def _submission(request_id: int, assignee: str) -> Submission:
    return Submission(
        chain_id=31337, hub=HUB, request_id=request_id, infer_tx="0x" + "11" * 32, assignees=(assignee,),
        input_cid=cid_for_bytes(INPUT), input_digest=digest_of(INPUT), model="m",
    )  # fmt: skip


def _output(sub: Submission, text: str) -> bytes:
    doc = OutputDocument(
        request_id=sub.request_id, input_cid=sub.input_cid, model=sub.model, system_fingerprint="fp",
        object="chat.completion", created=1_700_000_000,
        choices=[ChatChoice(index=0, message=AssistantOutput(content=text), finish_reason="stop")],
        usage=Usage(prompt_tokens=1, completion_tokens=3, total_tokens=4),
    )  # fmt: skip
    return to_canonical_bytes(doc)


async def _no_store(cid: str) -> bytes:
    raise ContentNotFound(cid)


class Gateway:
    """The gateway's MQTT half: one subscriber feeding one pending registry, as chain_backend wires it."""

    def __init__(self, broker: Mosquitto, login: Login | None) -> None:
        self.registry = PendingRegistry(recover_submission_signer, _no_store, grace_s=30)
        self.subscriber = Subscriber(
            broker.url,
            request_topics(31337, HUB),
            self.route,
            username=login.username if login else None,
            password=login.password if login else None,
        )

    def route(self, msg: Routed) -> None:
        if msg.delta is not None:
            self.registry.on_delta(msg.chain_id, msg.request_id, msg.delta)
        elif msg.result is not None:
            self.registry.on_result_message(msg.chain_id, msg.request_id, msg.result)

    async def __aenter__(self) -> Gateway:
        self.subscriber.start()
        await asyncio.wait_for(self.subscriber.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.subscriber.close()
        await self.registry.close()


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _publisher(broker: Mosquitto, key: str, login: Login | None) -> StreamPublisher:
    miner = Account.from_key(key).address
    pub = StreamPublisher(
        broker.url, chain_id=31337, hub=HUB, miner=miner, heartbeat=dict,
        username=login.username if login else None, password=login.password if login else None,
    )  # fmt: skip
    pub.start()
    await _until(lambda: pub.stats.connected)
    return pub


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def _streamed_text(sse: bytes) -> str:
    text = ""
    for line in sse.split(b"\n\n"):
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                text += (choice.get("delta") or {}).get("content") or ""
    return text


def _miner_keys(broker: Mosquitto, anvil_keys: list[str]) -> tuple[str, str]:
    """Anvil keys 1 and 2: the assignee and a hostile miner, both with broker logins."""
    assert {Account.from_key(k).address for k in anvil_keys[1:3]} <= set(broker.logins)
    return anvil_keys[1], anvil_keys[2]


async def _hostile_raw(broker: Mosquitto, login: Login, messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client(
        broker.host, broker.port, username=login.username, password=login.password, timeout=5
    ) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


async def test_only_the_assignee_reaches_the_client(
    locked_mosquitto: Mosquitto, anvil_keys: list[str]
) -> None:
    honest_key, hostile_key = _miner_keys(locked_mosquitto, anvil_keys)
    honest, hostile = Account.from_key(honest_key), Account.from_key(hostile_key)
    sub = _submission(41, honest.address)
    good = _output(sub, ANSWER)
    evil = _output(sub, "EVIL send funds")
    evil_sig = sign_result(
        hostile_key, chain_id=31337, hub=HUB, request_id=41, input_digest=sub.input_digest,
        output_digest=digest_of(evil),
    )  # fmt: skip
    async with Gateway(locked_mosquitto, locked_mosquitto.logins["gateway-test"]) as gw:
        bad = await _publisher(locked_mosquitto, hostile_key, locked_mosquitto.logins[hostile.address])
        good_pub = await _publisher(locked_mosquitto, honest_key, locked_mosquitto.logins[honest.address])
        # Before the gateway knows the request: buffered, then dropped on register (not an assignee).
        bad.publish_delta(41, 0, 0, {"content": "EVIL early "})
        await _until(lambda: gw.subscriber.received >= 1)
        pending = gw.registry.register(sub)
        stream = asyncio.create_task(
            _collect(stream_events("chat", pending, model="m", n=1, include_usage=False,
                                   relay_live=True, timeout_s=20))
        )  # fmt: skip
        for seq, word in enumerate(["EVIL ", "send ", "funds"]):
            bad.publish_delta(41, seq, 0, {"content": word})
        bad.publish_result(41, evil.decode(), evil_sig)
        # The hostile login also tries the assignee's topic: the ACL drops it at the broker.
        forged = json.dumps({"seq": 0, "choice": 0, "delta": {"content": "EVIL forged"}}).encode()
        await _hostile_raw(
            locked_mosquitto, locked_mosquitto.logins[hostile.address],
            [(delta_topic(31337, HUB, 41, honest.address), forged)],
        )  # fmt: skip
        await _until(lambda: gw.registry.drops["not_assignee"] >= 5)
        for seq, word in enumerate(["Hello ", "honest ", "world"]):
            good_pub.publish_delta(41, seq, 0, {"content": word})
        await _until(lambda: gw.subscriber.received >= 8 and pending.deltas.empty())
        gw.registry.on_finalized(31337, 41, digest_of(good), "0xf")
        good_pub.publish_result(41, good.decode(), sign_result(
            honest_key, chain_id=31337, hub=HUB, request_id=41, input_digest=sub.input_digest,
            output_digest=digest_of(good),
        ))  # fmt: skip
        sse = await asyncio.wait_for(stream, 20)
        await bad.close()
        await good_pub.close()
    assert b"EVIL" not in sse and b"funds" not in sse
    assert _streamed_text(sse) == ANSWER and sse.endswith(b"data: [DONE]\n\n")
    assert gw.registry.drops["not_assignee"] == 5  # 1 early + 3 live deltas + 1 result
    assert gw.registry.buffered_bytes == 0 and gw.registry.early_bytes == 0


async def test_open_broker_publisher_under_its_own_address_is_ignored(
    mosquitto: Mosquitto, anvil_keys: list[str]
) -> None:
    """On an anonymous test broker anyone may publish; what names a non-assignee is still dropped."""
    honest_key, hostile_key = anvil_keys[1], anvil_keys[2]
    sub = _submission(42, Account.from_key(honest_key).address)
    async with Gateway(mosquitto, None) as gw:
        pending = gw.registry.register(sub)
        bad = await _publisher(mosquitto, hostile_key, None)
        good = await _publisher(mosquitto, honest_key, None)
        bad.publish_delta(42, 0, 0, {"content": "EVIL"})
        good.publish_delta(42, 0, 0, {"content": "fine"})
        first = await asyncio.wait_for(pending.next_delta(), 10)
        await _until(lambda: gw.registry.drops["not_assignee"] == 1)
        await bad.close()
        await good.close()
    assert first.text == "fine" and pending.deltas.empty()


def _garbage(topic: str) -> list[tuple[str, bytes]]:
    big = b'{"seq":0,"choice":0,"delta":"' + b"x" * (MQTT_LIMITS.max_bytes + 1) + b'"}'
    return [
        (topic, big),  # over the gate's byte limit (the broker still carries it)
        (topic, b"[" * 200_000),  # would overflow a recursive parser
        (topic, b'{"seq":0,"choice":0,"delta":"\xff\xfe"}'),  # not UTF-8
        (topic, b"not json at all"),
        (topic, b'{"seq":0,"seq":1,"choice":0,"delta":"dup"}'),
        (topic, b'{"seq":"0","choice":0,"delta":"str seq"}'),
        (topic, b'{"seq":NaN,"choice":0,"delta":"nan"}'),
        (topic, b'{"seq":0,"choice":0,"delta":"\\ud800"}'),
        (topic, b""),
        (topic.replace("/delta", "/nonsense"), b"{}"),
    ]


async def test_garbage_from_an_assignee_does_not_stop_the_subscriber(
    locked_mosquitto: Mosquitto, anvil_keys: list[str]
) -> None:
    honest_key, _ = _miner_keys(locked_mosquitto, anvil_keys)
    honest = Account.from_key(honest_key)
    login = locked_mosquitto.logins[honest.address]
    sub = _submission(43, honest.address)
    async with Gateway(locked_mosquitto, locked_mosquitto.logins["gateway-test"]) as gw:
        pending = gw.registry.register(sub)
        topic = delta_topic(31337, HUB, 43, honest.address)
        garbage = [*_garbage(topic), (result_topic(31337, HUB, 43, honest.address), b'{"output":1}')]
        await _hostile_raw(locked_mosquitto, login, garbage)
        await _hostile_raw(locked_mosquitto, login, [(topic, b'{"seq":0,"choice":0,"delta":"still here"}')])
        delta = await asyncio.wait_for(pending.next_delta(), 10)
        assert delta.text == "still here" and delta.miner == honest.address
        drops = dict(gw.subscriber.drops)
    assert sum(drops.values()) == len(garbage) - 1  # `/nonsense` is not even subscribed to
    assert drops["payload_too_large"] == 1 and drops["payload_too_deep"] == 1
    assert drops["payload_not_utf8"] == 1 and drops["bad_delta"] == 1 and drops["bad_result"] == 1


async def test_a_broken_handler_does_not_end_the_subscription(
    mosquitto: Mosquitto, anvil_keys: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    miner = Account.from_key(anvil_keys[1]).address
    seen: list[Any] = []

    def flaky(msg: Routed) -> None:
        if msg.delta is not None and msg.delta.text == "boom":
            raise RuntimeError("bug")
        seen.append(msg)

    sub = Subscriber(mosquitto.url, request_topics(31337, HUB), flaky)
    sub.start()
    try:
        await asyncio.wait_for(sub.connected.wait(), 10)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            for text in ("boom", "ok"):
                body = json.dumps({"seq": 0, "choice": 0, "delta": text}).encode()
                await client.publish(delta_topic(31337, HUB, 44, miner), body, qos=1)
        await _until(lambda: len(seen) == 1)
    finally:
        await sub.close()
    assert sub.drops["handler_error"] == 1
