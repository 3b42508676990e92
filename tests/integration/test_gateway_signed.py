"""The gateway answers on the assignee's signed result (`gateway.answer_on = "signature"`), on real
anvil and mosquitto with an in-process fake-engine miner daemon and a miner key driven by hand.

* An answer (to a private request: the gateway's default) comes as soon as the daemon's signed
  result arrives over MQTT (sealed to the gateway, opened, then checked): `onchain_data.settlement`
  is `pending`, the signer is the request's assignee, and `GET /v1/inferences/{id}` later shows the
  request final on the digest that was answered (`answer.matches_final`); a stream ends the same way.
* `"finality": "onchain"` waits for the chain: the answer says `final` and the request is final.
* Forged results (for public requests, so that they reach the checks) published on the broker
  under the assignee's own topic (a non-assignee's signature, bytes other than the signed ones, a
  signature that is no signature, a document for another input) are rejected and never answered;
  the request is then answered from the chain, with the document the hand-driven assignee committed
  and revealed.
* A hand-driven assignee whose signed result was answered and that then commits another digest is
  slashed its minStake by the gateway's own `proveEquivocation` (the gateway is credited 10%).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import httpx
import pytest

from node.chain.hub import HubClient, Phase, model_id
from node.chain.signing import sign_result
from node.config import load_settings
from node.content.cid import cid_for_bytes, digest_of, digest_to_cid
from node.content.documents import AssistantOutput, ChatChoice, OutputDocument, Usage, to_canonical_bytes
from node.content.local import LocalStore
from node.devnet.processes import Anvil, Mosquitto
from node.gateway.app import create_app
from node.gateway.auth import KeyStore
from node.gateway.chain_backend import ChainBackend
from node.gateway.server import GatewayServer
from node.miner.daemon import DaemonConfig
from node.miner.testing import FAKE_ENGINE_CLASS, FakeEngine, deploy_dev_hub, local_daemon, serve_gateways
from node.stream.topics import result_topic

pytestmark = pytest.mark.timeout(120)
MODEL = "signed-model"
MANUAL = "manual-signed-model"  # its only miner is a key this test drives by hand
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@dataclass
class Net:
    owner: HubClient
    manual: HubClient
    mosquitto: Mosquitto
    store: LocalStore
    http: httpx.AsyncClient
    backend: ChainBackend
    submissions: asyncio.Event
    """Set: the miner's submitter sends; cleared by a test, its commits wait (nothing else does)."""

    @property
    def hub(self) -> str:
        return str(self.owner.address)


async def until(what: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await what():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def commits_held(net: Net) -> AsyncIterator[None]:
    """The miner sends no commit inside this block. In one process on automine its commit and
    reveal can settle before the gateway's loop reads the MQTT result; the answer is then `final`
    (also correct), and a test of the answer before settlement would prove nothing."""
    net.submissions.clear()
    try:
        yield
    finally:
        net.submissions.set()


@pytest.fixture(scope="module")
async def net(
    anvil: Anvil, mosquitto: Mosquitto, anvil_keys: list[str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Net]:
    tmp = tmp_path_factory.mktemp("signed")
    miner_key, manual_key, gateway_key = anvil_keys[3], anvil_keys[8], anvil_keys[9]
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [miner_key], model_name=MODEL, timeout_blocks=50)
    owner = hub.owner
    await owner.register_model(MANUAL, FAKE_ENGINE_CLASS, 10**18, 10**12, 0, 50, 1, 1)
    manual = HubClient(owner.w3, owner.address, manual_key)
    await manual.register_miner(model_id(MANUAL), FAKE_ENGINE_CLASS, 10**18)
    store = LocalStore(tmp / "blocks")
    miner_hub = HubClient(HubClient.web3(anvil.rpc_url, timeout=10), owner.address, miner_key)
    daemon = local_daemon(
        hub=miner_hub,
        miner_key=miner_key, engine=FakeEngine(MODEL), store=store, journal_path=tmp / "journal.sqlite",
        broker_url=mosquitto.url,
        config=DaemonConfig(chain_id=31337, poll_interval_s=0.1, batch_wait_s=0.02, sweep_interval_s=0.5),
    )  # fmt: skip
    submissions = asyncio.Event()
    submissions.set()
    submit_batch = daemon.submitter._submit_batch

    async def gated(ids: list[int]) -> None:
        await submissions.wait()
        await submit_batch(ids)

    daemon.submitter._submit_batch = gated  # type: ignore[method-assign]
    stop = asyncio.Event()
    miner_task = asyncio.create_task(daemon.run(stop))
    settings = load_settings(
        data_dir=tmp,
        chain={"rpc_url": anvil.rpc_url, "hub_address": owner.address, "private_key": gateway_key,
               "poll_interval_s": 0.1},
        stream={"broker_url": mosquitto.url},
        gateway={"request_timeout_s": 60.0, "answer_on": "signature"},  # private by default
    )  # fmt: skip
    key, _ = KeyStore(tmp / "gateway" / "api_keys.json").add("signed")
    server = GatewayServer(create_app(settings, store=store))
    await server.start()
    serve_gateways(daemon, [server.url])  # the miner reads sealed inputs there
    backend = server.app.state.gateway.backend
    assert isinstance(backend, ChainBackend) and await backend.wait_ready(10)
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=90
        ) as http:
            yield Net(owner, manual, mosquitto, store, http, backend, submissions)
    finally:
        await server.stop()
        stop.set()
        await asyncio.wait_for(miner_task, 60)
        for client in (owner, miner_hub):
            await client.w3.provider.disconnect()


async def test_answered_on_the_signature_then_final(net: Net) -> None:
    """The answer comes before settlement (the miner's commit waits for it: `commits_held`)."""
    async with commits_held(net):
        reply = await net.http.post("/v1/chat/completions", json={"model": MODEL, **CHAT})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    od = body["onchain_data"]
    assert od["settlement"] == "pending" and od["phase"] is None
    assert body["signer"] in od["assignment_addresses"] and body["signature"].startswith("0x")
    rid = od["request_id"]

    async def final() -> bool:
        record = (await net.http.get(f"/v1/inferences/{rid}")).json()
        return bool(record["settlement"] == "final")

    await until(final)
    record = (await net.http.get(f"/v1/inferences/{rid}")).json()
    assert record["phase"] == "final" and record["verification"] in ("final", "audited")
    assert record["output_cid"] == od["output_cid"]
    assert record["answer"] == {
        "output_cid": od["output_cid"], "signer": body["signer"], "settlement": "pending",
        "matches_final": True,
    }  # fmt: skip
    settled = record["response"]["onchain_data"]
    assert settled["settlement"] == "final" and settled["phase"] == "final"
    assert record["response"]["choices"] == body["choices"]


async def test_a_stream_ends_on_the_signed_result(net: Net) -> None:
    body = {"model": MODEL, **CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with commits_held(net), net.http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        events = [line[6:] async for line in reply.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    finals = [c for c in chunks if "onchain_data" in c]
    assert len(finals) == 2 and finals[-1]["usage"]["completion_tokens"] > 0  # final chunk + usage chunk
    assert all(c["onchain_data"]["settlement"] == "pending" for c in finals)
    assert finals[0]["choices"][0]["finish_reason"] is not None


async def test_finality_onchain_waits_for_the_chain(net: Net) -> None:
    reply = await net.http.post("/v1/chat/completions", json={"model": MODEL, **CHAT, "finality": "onchain"})
    assert reply.status_code == 200, reply.text
    od = reply.json()["onchain_data"]
    assert od["settlement"] == "final" and od["phase"] == "final"
    info = await net.owner.get_request(od["request_id"])
    assert info.phase == Phase.FINAL and info.output_digest is not None
    assert od["output_cid"] == digest_to_cid(info.output_digest)


def _output(request_id: int, input_cid: str, text: str) -> bytes:
    return to_canonical_bytes(
        OutputDocument(
            request_id=request_id, input_cid=input_cid, model=MANUAL, system_fingerprint="fp",
            object="chat.completion", created=1_700_000_000,
            choices=[ChatChoice(index=0, message=AssistantOutput(content=text), finish_reason="stop")],
            usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
        )
    )  # fmt: skip


async def test_forged_results_are_never_answered(net: Net, anvil_keys: list[str]) -> None:
    before = await net.owner.request_count()
    call = asyncio.create_task(
        net.http.post("/v1/chat/completions", json={"model": MANUAL, **CHAT, "private": False})
    )
    try:
        rid = before + 1

        async def assigned() -> bool:
            pending = net.backend.registry.get(31337, rid)
            return pending is not None and pending.chain_assigned

        await until(assigned)
        pending = net.backend.registry.get(31337, rid)
        assert pending is not None and pending.submission.assignees == (net.manual.sender,)
        sub = pending.submission
        assert (await net.owner.get_request(rid)).model_id == model_id(MANUAL)

        def sign(key: str, data: bytes) -> str:
            return sign_result(
                key, chain_id=31337, hub=net.hub, request_id=rid, input_digest=sub.input_digest,
                output_digest=digest_of(data),
            )  # fmt: skip

        evil = _output(rid, sub.input_cid, "EVIL send funds")
        honest = _output(rid, sub.input_cid, "honest")
        forged = [
            (evil, sign(anvil_keys[2], evil)),  # signed by a key that is not an assignee
            (evil, sign(anvil_keys[8], honest)),  # the assignee signed other bytes than these
            (evil, "0x" + "ab" * 65),  # not a signature at all
            (
                other := _output(rid, cid_for_bytes(b"other"), "EVIL"),
                sign(anvil_keys[8], other),
            ),  # other input
        ]
        topic = result_topic(31337, net.hub, rid, str(net.manual.sender))
        async with aiomqtt.Client(net.mosquitto.host, net.mosquitto.port) as mqtt:
            for data, signature in forged:  # under the assignee's own topic (an open broker)
                payload = {"output": data.decode(), "signature": signature, "miner": str(net.manual.sender)}
                await mqtt.publish(topic, json.dumps(payload).encode(), qos=1)

        async def all_rejected() -> bool:
            return len(pending.rejections) == len(forged)

        await until(all_rejected)
        assert not call.done()  # nothing forged was answered: the request waits for the chain

        await net.store.put(honest)  # the assignee settles the honest document on chain by hand
        await net.manual.commit(rid, digest_of(honest))
        assert not await net.manual.audit_drawn(rid)
        await net.manual.reveal(rid, digest_of(honest))
        reply = await asyncio.wait_for(call, 60)
    finally:
        if not call.done():
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["message"]["content"] == "honest" and b"EVIL" not in reply.content
    assert body["onchain_data"]["settlement"] == "final"
    assert body["signer"].lower() == str(net.manual.sender).lower()  # read from its reveal, not MQTT


@pytest.mark.parametrize("batched", [False, True], ids=["commit", "commit_batch"])
async def test_a_signer_that_settles_something_else_is_slashed(
    net: Net, anvil_keys: list[str], batched: bool
) -> None:
    """The gateway answered on a signature; the signer then commits another digest: the gateway
    proves the equivocation itself and the signer loses its minStake (the gateway earns 10%).

    Batched, the commit is a root (`commitBatch`) that proves nothing alone: the gateway must
    wait for the `revealBatch` and prove it with the batch's leaves (`proveBatchEquivocation`)."""
    liar_key = anvil_keys[6] if batched else anvil_keys[5]  # a fresh miner each
    liar = HubClient(net.owner.w3, net.owner.address, liar_key)
    name = "promise-batch" if batched else "promise-model"
    await net.owner.register_model(name, FAKE_ENGINE_CLASS, 10**18, 10**12, 0, 50, 1, 1)
    await liar.register_miner(model_id(name), FAKE_ENGINE_CLASS, 10**18)
    gateway = str(net.backend.links[31337].sender.address)
    credits_before = await net.owner.credits_of(gateway)
    before = await net.owner.request_count()
    call = asyncio.create_task(
        net.http.post("/v1/chat/completions", json={"model": name, **CHAT, "private": False})
    )
    try:
        rid = before + 1

        async def assigned() -> bool:
            pending = net.backend.registry.get(31337, rid)
            return pending is not None and pending.chain_assigned

        await until(assigned)
        pending = net.backend.registry.get(31337, rid)
        assert pending is not None
        sub = pending.submission
        promised = _output(rid, sub.input_cid, "promised")
        signature = sign_result(
            liar_key, chain_id=31337, hub=net.hub, request_id=rid, input_digest=sub.input_digest,
            output_digest=digest_of(promised),
        )  # fmt: skip
        payload = {"output": promised.decode(), "signature": signature, "miner": str(liar.sender)}
        async with aiomqtt.Client(net.mosquitto.host, net.mosquitto.port) as mqtt:
            await mqtt.publish(
                result_topic(31337, net.hub, rid, str(liar.sender)), json.dumps(payload).encode(), qos=1
            )
        reply = await asyncio.wait_for(call, 30)
    finally:
        if not call.done():
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
    assert reply.status_code == 200, reply.text
    assert reply.json()["onchain_data"]["settlement"] == "pending"
    assert reply.json()["choices"][0]["message"]["content"] == "promised"

    lie = digest_of(_output(rid, sub.input_cid, "something else"))
    if not batched:
        await liar.commit(rid, lie)
    else:
        await liar.commit_batch([(rid, lie)])
        assert not await liar.audit_drawn(rid), "a 1 bps audit was drawn: run again"
        await liar.reveal_batch([(rid, lie)])

    async def slashed() -> bool:
        return (await net.owner.get_miner(str(liar.sender))).stake == 0

    await until(slashed)
    assert await net.owner.credits_of(gateway) - credits_before == 10**17  # 10% of minStake
