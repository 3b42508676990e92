"""The real external parts start and answer: anvil's JSON-RPC and mosquitto pub/sub."""

from __future__ import annotations

import asyncio

import aiomqtt
import httpx

from node.devnet.processes import Anvil, Mosquitto


async def test_anvil_answers_chain_id(anvil: Anvil) -> None:
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            anvil.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        )
    assert reply.status_code == 200
    assert int(reply.json()["result"], 16) == anvil.chain_id == 31337


async def test_anvil_funds_the_dev_accounts(own_anvil: Anvil, anvil_keys: list[str]) -> None:
    """Each dev account starts with 10,000 ETH (an anvil of the test's own: the session's has paid gas
    by now, and it keeps no state as old as its genesis)."""
    from eth_account import Account

    assert Account.from_key(anvil_keys[0]).address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    async with httpx.AsyncClient() as client:
        for key in anvil_keys:
            address = Account.from_key(key).address
            body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [address, "latest"]}
            reply = await client.post(own_anvil.rpc_url, json=body)
            assert int(reply.json()["result"], 16) == 10_000 * 10**18, address


async def test_mqtt_publish_reaches_subscriber(mosquitto: Mosquitto) -> None:
    topic = "inferd/v1/test/roundtrip"
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="sub") as sub:
        await sub.subscribe(topic, qos=1)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="pub") as pub:
            await pub.publish(topic, b'{"seq":1}', qos=1)

        async def first() -> aiomqtt.Message:
            async for message in sub.messages:
                return message
            raise AssertionError("subscription ended")

        message = await asyncio.wait_for(first(), timeout=10)
    assert str(message.topic) == topic
    assert message.payload == b'{"seq":1}'
