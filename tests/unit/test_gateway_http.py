"""The gateway's HTTP layer without a chain: auth, key hashing, rate limits, error envelopes,
request validation, timeouts, and the rule that an unverifiable output is never returned.

A `FakeBackend` plays chain and miner, but the pending registry and the EIP-712 signature check
are the real ones. The official `openai` SDK (strict response validation on) talks to the app over
an in-process ASGI transport.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from node.config import Settings, load_settings
from node.content.local import LocalStore
from node.gateway.app import create_app
from node.gateway.auth import KeyStore, hash_key
from node.gateway.ratelimit import RateLimiter
from node.gateway.testing import FakeBackend

MODEL = "SmolLM2-135M-Instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gateway:
    """An app, its fake backend, a key, and an httpx client over ASGI."""

    def __init__(self, tmp: Path, **gateway: Any) -> None:
        self.settings: Settings = load_settings(data_dir=tmp, gateway=gateway)
        self.keys = KeyStore(tmp / "keys.json")
        self.key, self.record = self.keys.add("tests")
        self.backend = FakeBackend()
        self.clock = FakeClock()
        self.store = LocalStore(tmp / "blocks")
        self.app = create_app(
            self.settings,
            backend=self.backend,
            store=self.store,
            keys=self.keys,
            limiter=RateLimiter(clock=self.clock),
        )
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {self.key}"},
        )

    def sdk(self, key: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key or self.key,
            base_url="http://gateway/v1",
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app)),
            _strict_response_validation=True,
            max_retries=0,
        )


@pytest.fixture()
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    g = Gateway(tmp_path, request_timeout_s=2.0)
    async with g.app.router.lifespan_context(g.app):
        yield g
    await g.http.aclose()


def assert_envelope(reply: httpx.Response, status: int, *, param: str | None = None, code: str | None = None):
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


# ------------------------------------------------------------------ auth


async def test_missing_key_is_401(gw: Gateway) -> None:
    reply = await gw.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": ""})
    err = assert_envelope(reply, 401, code="missing_api_key")
    assert err["type"] == "invalid_request_error"


async def test_unknown_key_is_401(gw: Gateway) -> None:
    reply = await gw.http.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-inferd-nope"}
    )
    assert_envelope(reply, 401, code="invalid_api_key")


async def test_x_api_key_header_is_accepted(gw: Gateway) -> None:
    reply = await gw.http.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": "", "X-API-Key": gw.key}
    )
    assert reply.status_code == 200, reply.text


async def test_revoked_key_is_401_and_takes_effect_without_restart(gw: Gateway) -> None:
    key, record = gw.keys.add("short-lived")
    ok = await gw.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
    KeyStore(gw.keys.path).revoke(record.id)  # another process (the CLI) revokes it
    reply = await gw.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert_envelope(reply, 401, code="invalid_api_key")


def test_keys_are_stored_hashed_never_in_clear(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key, record = store.add("alice")
    raw = (tmp_path / "keys.json").read_text()
    assert key not in raw and key[len("sk-inferd-") :] not in raw
    assert record.hash == hash_key(key) in raw
    assert oct((tmp_path / "keys.json").stat().st_mode & 0o777) == "0o600"
    assert store.lookup(key) is not None and store.lookup(key + "x") is None
    listed = KeyStore(tmp_path / "keys.json").list()
    assert [r.id for r in listed] == [record.id] and listed[0].prefix == key[:14]


def test_keys_revoke_unknown_id_raises(tmp_path: Path) -> None:
    from node.gateway.auth import UnknownKey

    with pytest.raises(UnknownKey):
        KeyStore(tmp_path / "keys.json").revoke("key_missing")


async def test_api_key_never_logged(gw: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    from node.log import configure_logging

    configure_logging("debug", "json")
    try:
        await gw.http.post("/v1/chat/completions", json=CHAT)
        await gw.http.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-inferd-bad"}
        )
        captured = capsys.readouterr()
    finally:  # capsys closes its stream after the test: later tests must not log into it
        configure_logging("info", "json", stream=sys.__stderr__)
    assert gw.key not in captured.out + captured.err


async def test_no_auth_mode_allows_anonymous(tmp_path: Path) -> None:
    g = Gateway(tmp_path, require_auth=False)
    async with g.app.router.lifespan_context(g.app):
        reply = await g.http.get("/v1/models", headers={"Authorization": ""})
    assert reply.status_code == 200


# ------------------------------------------------------------------ rate limit


async def test_rate_limit_429_with_retry_after_then_recovers(tmp_path: Path) -> None:
    g = Gateway(tmp_path, rate_limit_per_minute=2)
    async with g.app.router.lifespan_context(g.app):
        assert (await g.http.get("/v1/models")).status_code == 200
        assert (await g.http.get("/v1/models")).status_code == 200
        reply = await g.http.get("/v1/models")
        err = assert_envelope(reply, 429, code="rate_limit_exceeded")
        assert err["type"] == "rate_limit_error"
        assert int(reply.headers["Retry-After"]) == 30  # one token per 30 s at 2/min
        # another key has its own bucket
        other, _ = g.keys.add("other")
        assert (
            await g.http.get("/v1/models", headers={"Authorization": f"Bearer {other}"})
        ).status_code == 200
        g.clock.now += 30
        assert (await g.http.get("/v1/models")).status_code == 200


async def test_per_key_rate_limit_overrides_default(tmp_path: Path) -> None:
    g = Gateway(tmp_path, rate_limit_per_minute=100)
    key, _ = g.keys.add("tight", rate_limit_per_minute=1)
    async with g.app.router.lifespan_context(g.app):
        h = {"Authorization": f"Bearer {key}"}
        assert (await g.http.get("/v1/models", headers=h)).status_code == 200
        reply = await g.http.get("/v1/models", headers=h)
        assert reply.status_code == 429 and reply.headers["Retry-After"] == "60"


async def test_sdk_sees_rate_limit_error(tmp_path: Path) -> None:
    g = Gateway(tmp_path, rate_limit_per_minute=1)
    async with g.app.router.lifespan_context(g.app):
        client = g.sdk()
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}])
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}])
        assert info.value.response.headers["Retry-After"] == "60"


# ------------------------------------------------------------------ validation -> 400 with param


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({**CHAT, "temperature": 3}, "temperature", None),
        ({**CHAT, "top_p": -1}, "top_p", None),
        ({**CHAT, "n": 0}, "n", None),
        ({**CHAT, "max_tokens": 0}, "max_tokens", None),
        ({**CHAT, "max_completion_tokens": 0, "max_tokens": None}, "max_completion_tokens", None),
        ({**CHAT, "frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({**CHAT, "messages": []}, "messages", None),
        ({**CHAT, "messages": [{"role": "user"}]}, "messages[0].content", None),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0]", None),
        ({k: v for k, v in CHAT.items() if k != "messages"}, "messages", "missing_required_parameter"),
        ({k: v for k, v in CHAT.items() if k != "model"}, "model", "missing_required_parameter"),
        ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options", None),
        ({**CHAT, "stream": "yes"}, "stream", None),
        ({**CHAT, "chain_id": 999}, "chain_id", None),
        ({**CHAT, "top_logprobs": 3}, "top_logprobs", None),
        ({**CHAT, "tool_choice": "auto"}, "tool_choice", None),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
        ({**CHAT, "logit_bias": {"abc": 1}}, "logit_bias.abc", None),
    ],
)
async def test_chat_validation_400_names_param(
    gw: Gateway, body: dict[str, Any], param: str, code: str | None
):
    body = {k: v for k, v in body.items() if v is not None}
    reply = await gw.http.post("/v1/chat/completions", json=body)
    err = assert_envelope(reply, 400, param=param, code=code)
    assert err["type"] == "invalid_request_error"
    assert gw.backend.submitted == []  # nothing reached the chain


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": []}, "prompt"),
        ({"model": MODEL, "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": MODEL, "prompt": "x", "best_of": 1, "n": 2}, "best_of"),
        ({"model": MODEL, "prompt": "x", "messages": []}, "messages"),
    ],
)
async def test_completion_validation_400_names_param(gw: Gateway, body: dict[str, Any], param: str) -> None:
    assert_envelope(await gw.http.post("/v1/completions", json=body), 400, param=param)


async def test_invalid_json_is_400(gw: Gateway) -> None:
    reply = await gw.http.post(
        "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_envelope(reply, 400, code="invalid_json")
    reply = await gw.http.post("/v1/chat/completions", json=[1, 2])
    assert_envelope(reply, 400, code="invalid_json")


async def test_too_large_input_is_400(gw: Gateway) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    assert_envelope(await gw.http.post("/v1/chat/completions", json=body), 400, code="request_too_large")


async def test_sdk_raises_bad_request_with_param(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await gw.sdk().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert info.value.param == "temperature"


# ------------------------------------------------------------------ 404s


async def test_unknown_model_is_404_model_not_found(gw: Gateway) -> None:
    reply = await gw.http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
    err = assert_envelope(reply, 404, param="model", code="model_not_found")
    assert "gpt-9" in err["message"]
    with pytest.raises(openai.NotFoundError):
        await gw.sdk().completions.create(model="gpt-9", prompt="x")


async def test_unknown_route_and_inference_are_404_envelopes(gw: Gateway) -> None:
    assert_envelope(await gw.http.get("/v1/nope"), 404)
    assert_envelope(await gw.http.get("/v1/inferences/12345"), 404)
    assert_envelope(await gw.http.get("/v1/inferences/abc"), 400, param="request_id")


async def test_no_active_miner_is_503(gw: Gateway) -> None:
    from dataclasses import replace

    gw.backend.models[MODEL] = replace(gw.backend.models[MODEL], active_miners=0)
    assert_envelope(await gw.http.post("/v1/chat/completions", json=CHAT), 503, code="no_miners")


# ------------------------------------------------------------------ results


async def test_chat_completion_strictly_valid_with_onchain_data(gw: Gateway) -> None:
    reply = await gw.http.post("/v1/chat/completions", json={**CHAT, "finality": "onchain"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    ChatCompletion.model_validate(body, strict=True)
    od = body["onchain_data"]
    assert set(od) == {
        "chain_id", "hub", "request_id", "infer_tx", "submit_tx",
        "assignment_addresses", "input_cid", "output_cid", "document_version",
        "verification", "phase", "settlement", "max_tokens", "fee_wei", "engine_class",
    }  # fmt: skip
    assert od["verification"] == "final" and od["phase"] == "final" and od["settlement"] == "final"
    assert od["assignment_addresses"] == [gw.backend.miner.address]
    assert od["input_cid"].startswith("bafkrei") and od["output_cid"].startswith("bafkrei")
    assert body["signature"].startswith("0x") and len(body["signature"]) == 132
    assert reply.headers["X-Inferd-Request-Id"] == str(od["request_id"])
    assert body["usage"]["total_tokens"] == 9


async def test_sdk_chat_and_completions_typed(gw: Gateway) -> None:
    client = gw.sdk()
    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2, seed=7
    )
    assert isinstance(chat, ChatCompletion) and len(chat.choices) == 2
    assert chat.choices[0].message.content and "seed 7" in chat.choices[0].message.content
    extra = chat.model_extra or {}
    assert extra["onchain_data"]["request_id"] >= 1
    comp = await client.completions.create(model=MODEL, prompt="Once upon", max_tokens=8)
    assert isinstance(comp, Completion) and comp.choices[0].finish_reason == "length"
    Completion.model_validate(comp.model_dump(), strict=True)


async def test_models_lists_registry_with_miner_counts(gw: Gateway) -> None:
    page = await gw.sdk().models.list()
    ids = [m.id for m in page.data]
    assert ids == [MODEL]
    assert (page.data[0].model_extra or {})["active_miners"] == 1
    one = await gw.sdk().models.retrieve(MODEL)
    assert one.id == MODEL


async def test_inference_lookup_after_answer(gw: Gateway) -> None:
    body = (await gw.http.post("/v1/chat/completions", json=CHAT)).json()
    rid = body["onchain_data"]["request_id"]
    record = (await gw.http.get(f"/v1/inferences/{rid}")).json()
    assert record["status"] == "finalized" and record["output_cid"] == body["onchain_data"]["output_cid"]


async def test_no_result_is_504_with_request_id(gw: Gateway) -> None:
    gw.backend.mode = "silent"
    gw.settings.gateway.request_timeout_s = 0.3
    reply = await gw.http.post("/v1/chat/completions", json=CHAT)
    err = assert_envelope(reply, 504, code="timeout")
    assert err["request_id"] == reply.headers["X-Inferd-Request-Id"] == "1"
    assert "/v1/inferences/1" in err["message"]
    with pytest.raises(openai.APIStatusError) as info:
        await gw.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 504


async def test_refunded_request_is_502_with_request_id(gw: Gateway) -> None:
    gw.backend.mode = "expire"
    err = assert_envelope(await gw.http.post("/v1/chat/completions", json=CHAT), 502)
    assert err["request_id"] == "1"


async def test_error_output_document_is_502(gw: Gateway) -> None:
    gw.backend.mode = "error"
    err = assert_envelope(await gw.http.post("/v1/chat/completions", json=CHAT), 502, code="engine_error")
    assert "fake engine failed" in err["message"]


@pytest.mark.parametrize("mode", ["bad_digest", "bad_signature"])
async def test_tampered_output_is_never_returned(gw: Gateway, mode: str) -> None:
    gw.backend.mode = mode  # type: ignore[assignment]
    gw.settings.gateway.request_timeout_s = 0.5
    # bad_digest: the assignee SIGNS the altered bytes but settles others (an equivocation, answered
    # pending by default and then proven); an answer that waits for the chain must never return them
    body = {**CHAT, "finality": "onchain"} if mode == "bad_digest" else CHAT
    reply = await gw.http.post("/v1/chat/completions", json=body)
    assert reply.status_code in (502, 504)
    assert "Hallo" not in reply.text and "choices" not in reply.json()
    metrics = (await gw.http.get("/metrics")).text
    assert "inferd_gateway_rejected_outputs_total 1.0" in metrics


# ------------------------------------------------------------------ streaming


def sse_events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_stream_relays_deltas_then_verified_final_chunk(gw: Gateway) -> None:
    reply = await gw.http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = sse_events(reply.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(chunks) > 3  # relayed word by word
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["onchain_data"]["output_cid"].startswith("bafkrei")
    nonstream = gw.backend.responder(gw.backend.submitted[0], 0)
    assert text == nonstream
    assert "usage" not in final


async def test_sdk_stream_with_include_usage(gw: Gateway) -> None:
    stream = await gw.sdk().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        n=2,
    )
    texts = {0: "", 1: ""}
    usage = None
    finishes = {}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
    assert finishes == {0: "stop", 1: "stop"}
    assert usage is not None and usage.total_tokens == 13
    assert texts[0] and texts[1] and texts[0] != texts[1]


async def test_stream_without_deltas_sends_one_content_chunk(gw: Gateway) -> None:
    gw.backend.stream_deltas = False  # no broker
    reply = await gw.http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
    events = sse_events(reply.text)
    assert events[-1] == "[DONE]"
    content = [e for e in events[:-1] if e["choices"] and e["choices"][0]["text"]]
    assert len(content) == 1 and content[0]["object"] == "text_completion"
    assert events[-2]["choices"][0]["finish_reason"] == "length"


async def test_lying_stream_ends_in_error_not_done(gw: Gateway) -> None:
    gw.backend.mode = "lying_stream"
    reply = await gw.http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = sse_events(reply.text)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "output_verification_failed"
    assert not any(e.get("onchain_data") for e in events if isinstance(e, dict))
    stream = await gw.sdk().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_stream_timeout_is_error_event_with_request_id(gw: Gateway) -> None:
    gw.backend.mode = "silent"
    gw.settings.gateway.request_timeout_s = 0.3
    reply = await gw.http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = sse_events(reply.text)
    assert events[-1]["error"]["code"] == "timeout" and events[-1]["error"]["request_id"] == "1"


# ------------------------------------------------------------------ ops routes


async def test_healthz_metrics_and_trustless_route(gw: Gateway) -> None:
    assert (await gw.http.get("/healthz")).json()["status"] == "ok"
    await gw.http.post("/v1/chat/completions", json=CHAT)
    metrics = (await gw.http.get("/metrics")).text
    assert 'inferd_gateway_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in metrics
    assert 'inferd_gateway_inferences_total{outcome="ok"} 1.0' in metrics
    cid = await gw.store.put(b'{"hello":"world"}')
    block = await gw.http.get(f"/ipfs/{cid}?format=raw")
    assert block.status_code == 200 and block.content == b'{"hello":"world"}'
