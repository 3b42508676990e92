"""The official `openai` SDK against the gateway on a real devnet: anvil, mosquitto, a miner daemon
with the real CPU engine (SmolLM2), the gateway under uvicorn. Strict response validation is on.

What each test proves:
* chat / completions / n=2 / logprobs / tools (auto and named) / seed reproducibility: typed SDK
  objects that also pass `model_validate(strict=True)`, with `onchain_data` tying them to a
  finalized request whose on-chain digest is the sha256 of the answered output document.
* streaming: MQTT deltas are relayed live (several content chunks), the final chunk carries
  `finish_reason` and `onchain_data`, the streamed text equals the non-streamed answer for the same
  input; `include_usage` adds a usage chunk; without a broker one content chunk arrives.
* errors: 400 with `param`, 401, 404 model_not_found, 429 with Retry-After, 504 and 502 carrying the
  request id (a silent miner; an expired and refunded request).
* tampering (a hand-driven miner): a valid-signature MQTT result whose bytes differ from the
  on-chain digest is rejected and the honest document (fetched by CID) is answered; a result with
  a non-assignee signature and no fetchable document is never answered (504).
* `inferd verify` accepts a real response and rejects it after one changed character (and a
  forged signature); `--request-id` checks a request by id through the gateway's /ipfs route.
* replay: re-running a finalized request on the local engine reproduces the on-chain digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx2
import openai
import pytest
from eth_account import Account
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from node.chain.hub import HubClient, Phase, model_id
from node.chain.signing import sign_result
from node.config import Settings, load_settings
from node.content.cid import digest_of, digest_to_cid
from node.content.documents import (
    AssistantOutput,
    ChatChoice,
    OutputDocument,
    Usage,
    to_canonical_bytes,
)
from node.content.local import LocalStore
from node.devnet.processes import REPO_ROOT, Anvil, Mosquitto
from node.gateway.app import create_app
from node.gateway.auth import KeyStore
from node.gateway.replay import replay_request
from node.gateway.server import GatewayServer
from node.gateway.verify import output_document_from_response
from node.miner.daemon import DaemonConfig, MinerDaemon, engine_class_id
from node.miner.testing import FAKE_ENGINE_CLASS, deploy_dev_hub, local_daemon, serve_gateways
from node.stream.topics import result_topic

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

MODEL = "SmolLM2-135M-Instruct"
MANUAL = "manual-model"  # served by a miner key the tests drive by hand
PUBLIC: dict[str, Any] = {"extra_body": {"private": False}}
"""The opt-out of the gateway's private default (issue 16), for tests about public documents: the
hand-driven miner's plaintext results, a block read by CID, a replay or a verify by request id."""
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@dataclass
class Devnet:
    anvil: Anvil
    mosquitto: Mosquitto
    owner: HubClient
    manual: HubClient  # the hand-driven miner of MANUAL
    settings: Settings
    server: GatewayServer
    store: LocalStore
    key: str
    keys: KeyStore
    data_dir: Path
    daemon: MinerDaemon

    @property
    def hub(self) -> str:
        return str(self.owner.address)

    def client(self, key: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key or self.key,
            base_url=self.server.url + "/v1",
            _strict_response_validation=True,
            max_retries=0,
            timeout=120,
        )

    async def metrics(self) -> str:
        async with httpx2.AsyncClient() as http:
            return (await http.get(self.server.url + "/metrics")).text


@contextlib.asynccontextmanager
async def open_devnet(
    anvil: Anvil, mosquitto: Mosquitto, anvil_keys: list[str], engine: Any, data_dir: Path
) -> AsyncIterator[Devnet]:
    """A fresh hub with the real-engine miner daemon and the gateway (also used by the workflow and
    framework tests, which start their own on the session's anvil, broker and engine)."""
    owner_key, miner_key, gateway_key, manual_key = anvil_keys[0], anvil_keys[6], anvil_keys[7], anvil_keys[8]
    real_class = engine_class_id(engine)  # the model is registered for the real engine's class
    assert real_class is not None
    hub = await deploy_dev_hub(
        anvil.rpc_url, owner_key, [miner_key], model_name=MODEL, timeout_blocks=200, engine_class=real_class
    )
    owner = hub.owner
    await owner.register_model(MANUAL, FAKE_ENGINE_CLASS, 10**18, 10**12, 0, 3, 1, 1)
    manual = HubClient(owner.w3, owner.address, manual_key)
    await manual.register_miner(model_id(MANUAL), FAKE_ENGINE_CLASS, 10**18)

    # the miner daemon (real engine), sharing the gateway's block store like a one-box devnet
    store = LocalStore(data_dir / "blocks")
    daemon = local_daemon(
        hub=HubClient(HubClient.web3(anvil.rpc_url, timeout=10), owner.address, miner_key),
        miner_key=miner_key,
        engine=engine,
        store=store,
        journal_path=data_dir / "journal.sqlite",
        broker_url=mosquitto.url,
        config=DaemonConfig(chain_id=31337, poll_interval_s=0.1, batch_wait_s=0.02, sweep_interval_s=0.5),
    )
    stop = asyncio.Event()
    miner_task = asyncio.create_task(daemon.run(stop))

    settings = load_settings(
        data_dir=data_dir,
        chain={"rpc_url": anvil.rpc_url, "hub_address": owner.address, "private_key": gateway_key,
               "poll_interval_s": 0.1},
        stream={"broker_url": mosquitto.url},
        # answers checked against the final chain state (`assert_matches_chain`, verify, replay, a
        # forged signed result): the chain's finality, not the shipped `signature` default, which
        # test_gateway_signed.py covers
        gateway={"request_timeout_s": 120.0, "rate_limit_per_minute": 1000, "answer_on": "chain"},
    )  # fmt: skip
    keys = KeyStore(data_dir / "gateway" / "api_keys.json")
    key, _ = keys.add("sdk-tests")
    server = GatewayServer(create_app(settings))
    await server.start()
    serve_gateways(daemon, [server.url])  # private by default: the miner reads sealed inputs there
    backend = server.app.state.gateway.backend
    assert await backend.wait_ready(10)
    try:
        yield Devnet(anvil, mosquitto, owner, manual, settings, server, store, key, keys, data_dir, daemon)
    finally:
        await server.stop()
        stop.set()
        await asyncio.wait_for(miner_task, 60)


@pytest.fixture(scope="module")
async def devnet(
    anvil: Anvil,
    mosquitto: Mosquitto,
    anvil_keys: list[str],
    engine: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Devnet]:
    data_dir = tmp_path_factory.mktemp("gateway-devnet")
    async with open_devnet(anvil, mosquitto, anvil_keys, engine, data_dir) as net:
        yield net


def raw_json(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.http_response.text)
    return body


async def assert_matches_chain(net: Devnet, body: dict[str, Any]) -> None:
    od = body["onchain_data"]
    assert od["chain_id"] == 31337 and od["hub"] == net.hub
    info = await net.owner.get_request(od["request_id"])
    assert info.phase == Phase.FINAL and info.output_digest is not None
    assert od["verification"] in ("final", "audited") and od["fee_wei"] == str(info.fee)
    assert digest_to_cid(info.output_digest) == od["output_cid"]
    assert digest_to_cid(info.input_digest) == od["input_cid"]
    assert od["assignment_addresses"] == list(info.assignees)
    assert od["infer_tx"].startswith("0x") and od["submit_tx"].startswith("0x")
    assert body["signature"].startswith("0x")
    rebuilt = to_canonical_bytes(output_document_from_response(body))  # what `inferd verify` checks
    assert digest_of(rebuilt) == info.output_digest
    if od.get("output_salt") is None:  # public: the document itself is stored under its CID
        assert await net.store.get(od["output_cid"]) == rebuilt


# ------------------------------------------------------------------ happy paths


async def test_chat_completion_strict(devnet: Devnet) -> None:
    client = devnet.client()
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, max_tokens=8, temperature=0
    )
    chat = raw.parse()
    assert isinstance(chat, ChatCompletion) and chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 8
    assert chat.system_fingerprint and chat.model == MODEL
    body = raw_json(raw)
    ChatCompletion.model_validate(body, strict=True)
    await assert_matches_chain(devnet, body)
    assert raw.http_response.headers["X-Inferd-Request-Id"] == str(body["onchain_data"]["request_id"])


async def test_completions_with_logprobs(devnet: Devnet) -> None:
    raw = await devnet.client().completions.with_raw_response.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, logprobs=2, temperature=0
    )
    comp = raw.parse()
    assert isinstance(comp, Completion) and comp.object == "text_completion"
    lp = comp.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == comp.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(t) <= 2 for t in lp.top_logprobs if t)
    Completion.model_validate(raw_json(raw), strict=True)
    await assert_matches_chain(devnet, raw_json(raw))


async def test_chat_logprobs(devnet: Devnet) -> None:
    chat = await devnet.client().chat.completions.create(
        model=MODEL, messages=USER, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    logprobs = chat.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert chat.usage is not None and len(logprobs.content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in logprobs.content)
    ChatCompletion.model_validate(chat.model_dump(), strict=True)


async def test_chat_n2(devnet: Devnet) -> None:
    chat = await devnet.client().chat.completions.create(
        model=MODEL, messages=USER, max_tokens=6, n=2, temperature=1.0, seed=3
    )
    assert [c.index for c in chat.choices] == [0, 1]
    assert all(c.message.content for c in chat.choices)
    ChatCompletion.model_validate(chat.model_dump(), strict=True)


async def test_seed_reproducibility(devnet: Devnet) -> None:
    client = devnet.client()
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": USER,
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 1234,
    }
    a, b = await asyncio.gather(
        client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    )
    ea, eb = a.model_extra or {}, b.model_extra or {}
    assert ea["onchain_data"]["request_id"] != eb["onchain_data"]["request_id"]
    # private by default: each document has its own salt, so the same ask is not linkable on chain
    assert ea["onchain_data"]["output_salt"] and eb["onchain_data"]["output_salt"]
    assert ea["onchain_data"]["input_cid"] != eb["onchain_data"]["input_cid"]
    assert a.choices[0].message.content == b.choices[0].message.content
    other = await client.chat.completions.create(**{**kwargs, "seed": 99})
    assert other.choices[0].message.content  # a different seed is a different, valid answer


async def test_tools_named_and_auto(devnet: Devnet) -> None:
    client = devnet.client()
    named = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
        temperature=0,
    )
    ChatCompletion.model_validate(named.model_dump(), strict=True)
    calls = named.choices[0].message.tool_calls
    assert calls, named.choices[0]
    assert calls[0].type == "function" and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
    auto = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS,
        tool_choice="auto",
        max_tokens=48,
        temperature=0,
    )
    ChatCompletion.model_validate(auto.model_dump(), strict=True)
    choice = auto.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    for call in choice.message.tool_calls or []:
        assert call.function.name == "get_weather"  # type: ignore[union-attr]


async def test_models_inferences_healthz_ipfs(devnet: Devnet) -> None:
    client = devnet.client()
    models = {m.id: m.model_extra or {} for m in (await client.models.list()).data}
    assert models[MODEL]["active_miners"] == 1 and models[MANUAL]["active_miners"] == 1
    chat = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4)
    od = (chat.model_extra or {})["onchain_data"]
    async with httpx2.AsyncClient(base_url=devnet.server.url, headers={"X-API-Key": devnet.key}) as http:
        record = (await http.get(f"/v1/inferences/{od['request_id']}")).json()
        assert record["status"] == "finalized" and record["output_cid"] == od["output_cid"]
        assert record["response"]["choices"][0]["message"]["content"] == chat.choices[0].message.content
        health = (await http.get("/healthz")).json()
        assert health["status"] == "ok" and health["mqtt"]["connected"] is True
        # private (the default): the plaintext input exists in no block; public: anyone reads it
        assert (await http.get(f"/ipfs/{od['input_cid']}?format=raw")).status_code == 404
        public = await client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=4, extra_body={"private": False}
        )
        public_cid = (public.model_extra or {})["onchain_data"]["input_cid"]
        block = await http.get(f"/ipfs/{public_cid}?format=raw")
        assert block.status_code == 200 and digest_to_cid(digest_of(block.content)) == public_cid


# ------------------------------------------------------------------ streaming


async def test_stream_chat_relays_deltas_and_matches_nonstream(devnet: Devnet) -> None:
    client = devnet.client()
    kwargs: dict[str, Any] = {"model": MODEL, "messages": USER, "max_tokens": 12, "temperature": 0, "seed": 5}
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=12, temperature=0, seed=5, stream=True
    )
    chunks: list[ChatCompletionChunk] = [c async for c in stream]
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    final = chunks[-1]
    assert final.choices[0].finish_reason in ("stop", "length")
    assert (final.model_extra or {})["onchain_data"]["output_cid"].startswith("bafkrei")
    assert all(c.usage is None for c in chunks)
    assert len(content_chunks) > 1, "deltas were not relayed live from MQTT"
    whole = await client.chat.completions.create(**kwargs)
    assert whole.choices[0].message.content == text
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.model_dump(), strict=True)


async def test_stream_include_usage_and_completions(devnet: Devnet) -> None:
    client = devnet.client()
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks[:-1])
    # Legacy completion chunks carry `finish_reason: null` until the last one, exactly as OpenAI
    # sends them; the SDK's `Completion` type declares it non-nullable (openai-openapi PR #100),
    # so strict validation would reject OpenAI's own stream: read this one without it.
    lenient = openai.AsyncOpenAI(api_key=devnet.key, base_url=devnet.server.url + "/v1", max_retries=0)
    cstream = await lenient.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True
    )
    parts = [c async for c in cstream]
    assert all(p.object == "text_completion" for p in parts)
    assert parts[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(p.choices[0].text for p in parts if p.choices)


async def test_stream_without_broker_sends_one_chunk(devnet: Devnet) -> None:
    settings = devnet.settings.model_copy(
        update={"stream": devnet.settings.stream.model_copy(update={"enabled": False})}
    )
    # A second gateway: the miner reads its sealed inputs from it and, with no broker, hands its
    # sealed answers in there (`POST /envelope/output`), as a miner listing both gateways would.
    server = GatewayServer(create_app(settings, store=devnet.store, keys=devnet.keys))
    await server.start()
    serve_gateways(devnet.daemon, [devnet.server.url, server.url])
    try:
        client = openai.AsyncOpenAI(
            api_key=devnet.key,
            base_url=server.url + "/v1",
            http_client=httpx2.AsyncClient(timeout=120),
            _strict_response_validation=True,
            max_retries=0,
        )
        stream = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8, stream=True)
        chunks = [c async for c in stream]
    finally:
        serve_gateways(devnet.daemon, [devnet.server.url])
        await server.stop()
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 1
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert (chunks[-1].model_extra or {})["signature"] is None  # no broker: evidence is the chain


# ------------------------------------------------------------------ errors


async def test_error_statuses_400_401_404_429(devnet: Devnet) -> None:
    client = devnet.client()
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model=MODEL, messages=USER, temperature=7)
    assert bad.value.param == "temperature" and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad2:
        await client.chat.completions.create(model=MODEL, messages=USER, extra_body={"chain_id": 5})
    assert bad2.value.param == "chain_id"
    with pytest.raises(openai.AuthenticationError):
        await devnet.client("sk-inferd-not-a-key").chat.completions.create(model=MODEL, messages=USER)
    with pytest.raises(openai.NotFoundError) as nf:
        await client.completions.create(model="no-such-model", prompt="x")
    assert nf.value.code == "model_not_found"
    limited, _ = devnet.keys.add("limited", rate_limit_per_minute=1)
    await devnet.client(limited).models.list()
    with pytest.raises(openai.RateLimitError) as rl:
        await devnet.client(limited).models.list()
    assert int(rl.value.response.headers["Retry-After"]) >= 1


async def test_private_input_too_large_to_seal_is_400_before_it_is_paid(devnet: Devnet) -> None:
    before = await devnet.owner.request_count()
    big: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 800_000}]  # < 1 MiB
    with pytest.raises(openai.BadRequestError) as refused:
        await devnet.client().chat.completions.create(model=MODEL, messages=big, max_tokens=4)
    assert refused.value.code == "request_too_large" and refused.value.param == "messages"
    assert '"private": false' in refused.value.message and "774902" in refused.value.message
    assert await devnet.owner.request_count() == before  # refused up front: nothing on chain


async def _next_request_id(net: Devnet, before: int) -> int:
    async with asyncio.timeout(30):
        while (count := await net.owner.request_count()) <= before:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return count


async def _commit_reveal(net: Devnet, rid: int, digest: bytes) -> None:
    """The manual miner's r = 1 result: commit, then reveal in a later block (no auditor exists for
    MANUAL, so a drawn audit only needs opening to be waived)."""
    await net.manual.commit(rid, digest)
    if await net.manual.audit_drawn(rid):
        await net.manual.open_audit(rid)
    await net.manual.reveal(rid, digest)


async def _manual_output(net: Devnet, rid: int, content: str) -> tuple[bytes, Any]:
    async with asyncio.timeout(30):  # the gateway assigns its request right after it is mined
        while (info := await net.owner.get_request(rid)).phase == Phase.PENDING:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    block = await net.owner.w3.eth.get_block("latest")
    doc = OutputDocument(
        request_id=rid,
        input_cid=digest_to_cid(info.input_digest),
        model=MANUAL,
        system_fingerprint="inferd-manual",
        object="chat.completion",
        created=int(block["timestamp"]),
        choices=[ChatChoice(index=0, message=AssistantOutput(content=content), finish_reason="stop")],
        usage=Usage(prompt_tokens=3, completion_tokens=3, total_tokens=6),
    )
    return to_canonical_bytes(doc), info


async def _publish_result(net: Devnet, rid: int, output: bytes, signature: str, miner: str) -> None:
    async with aiomqtt.Client(net.mosquitto.host, net.mosquitto.port) as mqtt:
        payload = json.dumps({"output": output.decode(), "signature": signature, "miner": miner})
        await mqtt.publish(result_topic(31337, net.hub, rid, miner), payload.encode(), qos=1)


async def test_tampered_mqtt_result_is_rejected_honest_one_answered(devnet: Devnet) -> None:
    before_metrics = await devnet.metrics()
    assert "inferd_gateway_rejected_outputs_total 0.0" in before_metrics
    before = await devnet.owner.request_count()
    call = asyncio.create_task(devnet.client().chat.completions.create(model=MANUAL, messages=USER, **PUBLIC))
    rid = await _next_request_id(devnet, before)
    honest, info = await _manual_output(devnet, rid, "The honest answer.")
    tampered = honest.replace(b"honest", b"HACKED")
    miner_key = "0x" + bytes(devnet.manual._require_account().key).hex()
    forged = sign_result(  # a valid assignee signature, over bytes the chain will not finalize
        miner_key, chain_id=31337, hub=devnet.hub, request_id=rid,
        input_digest=info.input_digest, output_digest=digest_of(tampered),
    )  # fmt: skip
    await _publish_result(devnet, rid, tampered, forged, str(devnet.manual.sender))
    await devnet.store.put(honest)
    await asyncio.sleep(0.3)
    await _commit_reveal(devnet, rid, digest_of(honest))
    chat = await asyncio.wait_for(call, 60)
    assert chat.choices[0].message.content == "The honest answer."
    assert "HACKED" not in chat.model_dump_json()
    assert "inferd_gateway_rejected_outputs_total 1.0" in await devnet.metrics()


async def test_bad_signature_and_no_document_is_never_answered_504(devnet: Devnet) -> None:
    devnet.settings.gateway.request_timeout_s = 4.0
    try:
        before = await devnet.owner.request_count()
        call = asyncio.create_task(
            devnet.client().chat.completions.create(model=MANUAL, messages=USER, **PUBLIC)
        )
        rid = await _next_request_id(devnet, before)
        honest, info = await _manual_output(devnet, rid, "Signed by a stranger.")
        stranger = Account.create()
        sig = sign_result(
            stranger.key, chain_id=31337, hub=devnet.hub, request_id=rid,
            input_digest=info.input_digest, output_digest=digest_of(honest),
        )  # fmt: skip
        # On the assignee's own topic (the only one a broker ACL lets it use), a stranger's signature.
        await _publish_result(devnet, rid, honest, sig, str(devnet.manual.sender))
        await _commit_reveal(devnet, rid, digest_of(honest))  # on chain, but never uploaded
        with pytest.raises(openai.APIStatusError) as info_exc:
            await asyncio.wait_for(call, 30)
    finally:
        devnet.settings.gateway.request_timeout_s = 120.0
    assert info_exc.value.status_code == 504
    body: Any = info_exc.value.body
    assert body["request_id"] == str(rid) and f"/v1/inferences/{rid}" in body["message"]
    assert "inferd_gateway_rejected_outputs_total 2.0" in await devnet.metrics()


# ------------------------------------------------------------------ verify and replay


@dataclass(frozen=True)
class _Ran:
    exit_code: int
    output: str  # stdout: what `--json` promises is JSON alone
    stderr: str


def _inferd(*args: str) -> _Ran:
    """`inferd ARGS` in a process of its own, as a user runs it. (typer's CliRunner swaps sys.stdout for
    the whole process, so the in-process miner's log lines landed in the captured `--json` output.)"""
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli.main", *args], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=300, check=False,
    )  # fmt: skip
    return _Ran(proc.returncode, proc.stdout, proc.stderr)


async def test_inferd_verify_accepts_real_and_rejects_changed(devnet: Devnet, tmp_path: Path) -> None:
    raw = await devnet.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, max_tokens=8, temperature=0
    )
    body = raw_json(raw)
    good = tmp_path / "response.json"
    good.write_text(json.dumps(body))
    rpc = ["--rpc-url", devnet.anvil.rpc_url]
    run = _inferd

    ok = await asyncio.to_thread(run, "verify", str(good), *rpc)
    assert ok.exit_code == 0, ok.output + ok.stderr
    assert "VALID" in ok.output and "INVALID" not in ok.output

    changed = json.loads(json.dumps(body))
    content = changed["choices"][0]["message"]["content"]
    changed["choices"][0]["message"]["content"] = content[:-1] + ("X" if content[-1] != "X" else "Y")
    bad = tmp_path / "changed.json"
    bad.write_text(json.dumps(changed))
    rejected = await asyncio.to_thread(run, "verify", str(bad), *rpc, "--json")
    assert rejected.exit_code == 1, rejected.output + rejected.stderr
    verdict = json.loads(rejected.output)
    assert verdict["valid"] is False
    assert {c["name"] for c in verdict["checks"] if c["ok"] is False} >= {"output digest", "output cid"}

    forged = json.loads(json.dumps(body))
    forged["signature"] = sign_result(
        Account.create().key, chain_id=31337, hub=devnet.hub, request_id=body["onchain_data"]["request_id"],
        input_digest=digest_of(b"x"), output_digest=digest_of(b"y"),
    )  # fmt: skip
    sig_file = tmp_path / "forged.json"
    sig_file.write_text(json.dumps(forged))
    assert (await asyncio.to_thread(run, "verify", str(sig_file), *rpc)).exit_code == 1

    # by request id, anyone reads the documents by CID: a public request's (a private one's are sealed)
    public = await devnet.client().chat.completions.create(model=MODEL, messages=USER, max_tokens=4, **PUBLIC)
    rid = str((public.model_extra or {})["onchain_data"]["request_id"])
    by_id = await asyncio.to_thread(
        run, "verify", "--request-id", rid, *rpc, "--hub", devnet.hub, "--gateway", devnet.server.url
    )
    assert by_id.exit_code == 0, by_id.output + by_id.stderr


async def test_replay_reproduces_onchain_digest(devnet: Devnet, engine: Any) -> None:
    chat = await devnet.client().chat.completions.create(  # replay reads the input by CID: public
        model=MODEL, messages=USER, max_tokens=8, temperature=0.7, seed=11, **PUBLIC
    )
    rid = (chat.model_extra or {})["onchain_data"]["request_id"]
    result, output = await replay_request(devnet.owner, devnet.store, engine, rid)
    assert result.match, result
    assert output.choices[0].message.content == chat.choices[0].message.content  # type: ignore[union-attr]


# ------------------------------------------------------------------ last: slashes the manual miner


async def test_expired_request_is_502_with_request_id(devnet: Devnet) -> None:
    before = await devnet.owner.request_count()
    call = asyncio.create_task(devnet.client().chat.completions.create(model=MANUAL, messages=USER))
    rid = await _next_request_id(devnet, before)
    async with asyncio.timeout(30):
        while (await devnet.owner.get_request(rid)).phase == Phase.PENDING:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await devnet.owner.mine(5)  # past the 3-block commit deadline with no result
    await devnet.owner.timeout(rid)  # the silent seat is slashed below the stake: nobody to reassign
    with pytest.raises(openai.APIStatusError) as exc:
        await asyncio.wait_for(call, 30)
    assert exc.value.status_code == 502
    body: Any = exc.value.body
    assert body["code"] == "refunded" and body["request_id"] == str(rid)
    started = time.monotonic()
    info = await devnet.owner.get_request(rid)
    assert info.phase == Phase.REFUNDED and time.monotonic() - started < 5
