"""Gateway parts without HTTP: the pending registry's ordering and verification rules, MQTT message
parsing (tool-call fragments included), streamed tool calls (buffered until verified, then sent so
that a client's reassembly is exactly the document's calls), response -> output document
reconstruction (what `inferd verify` hashes), the token bucket, and the `inferd gateway keys` CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from typer.testing import CliRunner

from node.chain.signing import sign_result
from node.cli.gateway import app as gateway_cli
from node.content.cid import cid_for_bytes, digest_of
from node.content.documents import (
    AssistantOutput,
    ChatChoice,
    ChatLogprobs,
    FunctionCall,
    OutputDocument,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Usage,
    to_canonical_bytes,
)
from node.content.errors import ContentNotFound
from node.gateway.errors import TamperedOutput, UpstreamError, UpstreamTimeout
from node.gateway.mqtt import parse_message, request_topics
from node.gateway.pending import PendingRegistry, ResultMessage
from node.gateway.ratelimit import RateLimiter
from node.gateway.records import Delta, Submission, ToolCallFragment, VerifiedResult
from node.gateway.responses import build_response
from node.gateway.streaming import MAX_BUFFERED_CALL_BYTES, reassemble, stream_events
from node.gateway.verify import ResponseFormatError, output_document_from_response
from node.stream.topics import delta_topic, result_topic

HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
MINER = Account.create()
INPUT = b'{"v":1}'


def submission(request_id: int = 7) -> Submission:
    return Submission(
        chain_id=31337,
        hub=HUB,
        request_id=request_id,
        infer_tx="0x" + "11" * 32,
        assignees=(MINER.address,),
        input_cid=cid_for_bytes(INPUT),
        input_digest=digest_of(INPUT),
        model="m",
    )


def output(sub: Submission, text: str = "hello", logprobs: bool = False) -> bytes:
    lp = None
    if logprobs:
        lp = ChatLogprobs(
            content=[
                TokenLogprob(
                    token="hel",
                    logprob=-0.25,
                    bytes=[104, 101, 108],
                    top_logprobs=[TopLogprob(token="hel", logprob=-0.25)],
                ),
                TokenLogprob(token="lo", logprob=-1.5, top_logprobs=[]),
            ]
        )
    doc = OutputDocument(
        request_id=sub.request_id,
        input_cid=sub.input_cid,
        model=sub.model,
        system_fingerprint="fp",
        object="chat.completion",
        created=1_700_000_000,
        choices=[
            ChatChoice(index=0, message=AssistantOutput(content=text), finish_reason="length", logprobs=lp)
        ],
        usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
    )
    return to_canonical_bytes(doc)


def sign(sub: Submission, data: bytes, key: bytes | None = None) -> str:
    return sign_result(
        key or MINER.key, chain_id=sub.chain_id, hub=sub.hub, request_id=sub.request_id,
        input_digest=sub.input_digest, output_digest=digest_of(data),
    )  # fmt: skip


def check(sub: Submission, digest: bytes, signature: str) -> str:
    from node.chain.signing import SignatureError, recover_result_signer

    try:
        return recover_result_signer(
            signature, chain_id=sub.chain_id, hub=sub.hub, request_id=sub.request_id,
            input_digest=sub.input_digest, output_digest=digest,
        )  # fmt: skip
    except SignatureError as exc:
        raise ValueError(str(exc)) from exc


class Blocks:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, cid: str) -> bytes:
        if cid not in self.data:
            raise ContentNotFound(cid)
        return self.data[cid]


def registry(blocks: Blocks | None = None) -> tuple[PendingRegistry, list[str]]:
    rejected: list[str] = []
    reg = PendingRegistry(check, (blocks or Blocks()).get, grace_s=0.01, fetch_retry_s=0.01)
    reg.add_rejection_listener(rejected.append)
    return reg, rejected


# ------------------------------------------------------------------ pending registry


async def test_events_before_register_are_replayed() -> None:
    reg, _ = registry()
    sub = submission()
    data = output(sub)
    reg.on_delta(31337, 7, Delta(seq=0, choice=0, text="hel", miner=MINER.address))
    reg.on_result_message(31337, 7, ResultMessage(data, sign(sub, data), MINER.address))
    reg.on_submitted(31337, 7, MINER.address, "0xsubmit", digest_of(data))
    reg.on_finalized(31337, 7, digest_of(data), "0xfinal")
    pending = reg.register(sub)
    result = await pending.wait(1)
    assert result.output_bytes == data and result.signer == MINER.address and result.submit_tx == "0xsubmit"
    assert pending.deltas.get_nowait().text == "hel"


async def test_result_waits_for_the_chain() -> None:
    reg, _ = registry()
    sub = submission()
    pending = reg.register(sub)
    data = output(sub)
    reg.on_result_message(31337, 7, ResultMessage(data, sign(sub, data), MINER.address))
    await asyncio.sleep(0.05)
    assert not pending.done()  # a signed result alone is not enough: the chain must finalize it
    reg.on_finalized(31337, 7, digest_of(data), "0xf")
    assert (await pending.wait(1)).output_cid == cid_for_bytes(data)


async def test_wrong_digest_and_foreign_signature_rejected_then_fetch_by_cid() -> None:
    blocks = Blocks()
    reg, rejected = registry(blocks)
    sub = submission()
    pending = reg.register(sub)
    good = output(sub)
    bad = output(sub, "HACKED")
    stranger = Account.create()
    reg.on_finalized(31337, 7, digest_of(good), "0xf")
    reg.on_result_message(31337, 7, ResultMessage(bad, sign(sub, bad), MINER.address))
    reg.on_result_message(31337, 7, ResultMessage(good, sign(sub, good, stranger.key), stranger.address))
    reg.on_result_message(31337, 7, ResultMessage(good, sign(sub, good, stranger.key), MINER.address))
    reg.on_result_message(31337, 7, ResultMessage(good, "0x1234", MINER.address))
    with pytest.raises(UpstreamTimeout) as exc:
        await pending.wait(0.1)  # nothing valid yet, and the store does not have it
    assert exc.value.request_id == 7 and exc.value.status == 504
    assert len(rejected) == 3  # the stranger's own message never got that far: not an assignee
    assert reg.drops["not_assignee"] == 1
    blocks.data[cid_for_bytes(good)] = good
    result = await pending.wait(1)
    assert result.output_bytes == good and result.signature is None


async def test_output_for_another_request_is_tampered() -> None:
    reg, _ = registry()
    sub = submission()
    pending = reg.register(sub)
    other = output(submission(8))
    reg.on_result_message(31337, 7, ResultMessage(other, sign(sub, other), MINER.address))
    reg.on_finalized(31337, 7, digest_of(other), "0xf")
    with pytest.raises(TamperedOutput):
        await pending.wait(1)


async def test_reassignment_accepts_new_assignee_and_failure_propagates() -> None:
    reg, _ = registry()
    sub = submission()
    pending = reg.register(sub)
    newcomer = Account.create()
    reg.on_reassigned(31337, 7, (newcomer.address,))
    data = output(sub)
    reg.on_result_message(31337, 7, ResultMessage(data, sign(sub, data, newcomer.key), newcomer.address))
    reg.on_finalized(31337, 7, digest_of(data), None)
    assert (await pending.wait(1)).signer == newcomer.address
    failing = reg.register(submission(9))
    reg.on_failed(31337, 9, UpstreamError("refunded", request_id=9))
    with pytest.raises(UpstreamError):
        await failing.wait(1)


# ------------------------------------------------------------------ MQTT parsing


def test_mqtt_messages_parse_and_garbage_is_ignored() -> None:
    assert request_topics(31337, HUB.lower()) == [
        f"inferd/v1/31337/{HUB}/req/+/+/delta",
        f"inferd/v1/31337/{HUB}/req/+/+/result",
    ]
    m = MINER.address
    d = parse_message(delta_topic(31337, HUB, 5, m), b'{"seq":3,"choice":1,"delta":{"content":"hi"}}')
    assert d is not None and d.request_id == 5 and d.delta == Delta(seq=3, choice=1, text="hi", miner=m)
    c = parse_message(delta_topic(31337, HUB, 5, m), b'{"seq":0,"choice":0,"delta":{"text":"x"}}')
    assert c is not None and c.delta is not None and c.delta.text == "x"
    r = parse_message(
        result_topic(31337, HUB, 5, m), json.dumps({"output": "{}", "signature": "0x", "miner": m}).encode()
    )
    assert r is not None and r.result == ResultMessage(b"{}", "0x", m) and r.miner == m
    assert parse_message(result_topic(31337, HUB, 5, m), b"not json") is None
    assert parse_message(f"inferd/v1/31337/{HUB}/miner/0xabc", b"{}") is None
    assert parse_message("other/topic", b"{}") is None


def test_mqtt_tool_call_fragments_parse_and_bad_shapes_drop_the_delta() -> None:
    topic = delta_topic(31337, HUB, 5, MINER.address)

    def parsed(calls: object) -> Delta | None:
        payload = {"seq": 0, "choice": 0, "delta": {"content": "x", "tool_calls": calls}}
        routed = parse_message(topic, json.dumps(payload).encode())
        return None if routed is None else routed.delta

    head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    d = parsed([head, {"index": 0, "function": {"arguments": '{"a":'}}])
    assert d is not None and d.tool_calls == (
        ToolCallFragment(0, "call_1", "f", ""),
        ToolCallFragment(0, arguments='{"a":'),
    )
    assert d.nbytes == len("x") + len("call_1") + len("f") + len('{"a":')
    for bad in (
        {**head, "index": 128},
        {**head, "index": -1},
        {**head, "index": "0"},
        {**head, "id": None},  # a name without its id
        {"index": 0, "id": "call_1", "function": {"arguments": ""}},  # an id without a name
        {**head, "type": "code"},
        {**head, "function": {"name": "f", "arguments": {"a": 1}}},
        {**head, "id": "c" * 65},
        {**head, "function": {"name": "", "arguments": ""}},
        "call",
    ):
        assert parsed([bad]) is None, bad
    assert parsed(head) is None and parsed([head] * 129) is None


def test_reassemble_follows_openai_order() -> None:
    head, more = ToolCallFragment(0, "c0", "f", "{"), ToolCallFragment(0, arguments="}")
    assert reassemble([(head,), (more, ToolCallFragment(1, "c1", "g", "{}"))]) == [
        ("c0", "f", "{}"),
        ("c1", "g", "{}"),
    ]
    assert reassemble([(more,)]) is None  # arguments for a call never opened
    assert reassemble([(ToolCallFragment(1, "c1", "g", ""),)]) is None  # an index skipped
    assert reassemble([(head, ToolCallFragment(0, "c0", "f", ""))]) is None  # a call opened twice


# ------------------------------------------------------------------ streamed tool calls

CALLS = [("call_" + "a" * 24, "get_weather", '{"city": "Paris"}'), ("call_" + "b" * 24, "get_time", "{}")]


def tool_output(
    sub: Submission, content: str | None = "Let me check.", reasoning: str | None = None
) -> bytes:
    calls = [ToolCall(id=i, function=FunctionCall(name=n, arguments=a)) for i, n, a in CALLS]
    doc = OutputDocument(
        request_id=sub.request_id, input_cid=sub.input_cid, model=sub.model, system_fingerprint="fp",
        object="chat.completion", created=1_700_000_000,
        choices=[ChatChoice(index=0, message=AssistantOutput(content=content, tool_calls=calls,
                                                             reasoning_content=reasoning),
                            finish_reason="tool_calls")],
        usage=Usage(prompt_tokens=1, completion_tokens=9, total_tokens=10),
    )  # fmt: skip
    return to_canonical_bytes(doc)


async def stream_with(deltas: list[Delta], data: bytes) -> list[dict[str, object]]:
    """The parsed SSE chunks of a stream fed `deltas`, then the verified `data`."""
    reg, _ = registry()
    sub = submission()
    pending = reg.register(sub)
    for delta in deltas:
        reg.on_delta(31337, 7, delta)
    reg.on_result_message(31337, 7, ResultMessage(data, sign(sub, data), MINER.address))
    events = stream_events("chat", pending, model="m", n=1, include_usage=False, relay_live=True, timeout_s=5)
    chunks: list[dict[str, object]] = []
    async for event in events:
        if not chunks and not event.startswith(b"data: {"):
            continue
        if event.startswith(b"data: {"):
            chunks.append(json.loads(event[len(b"data: ") :]))
        if len(chunks) == 1 + sum(1 for d in deltas if d.text):  # live text is out: the chain finalizes
            reg.on_finalized(31337, 7, digest_of(data), "0xf")
    reg.on_finalized(31337, 7, digest_of(data), "0xf")
    assert reg.buffered_bytes == 0
    return chunks


def client_view(chunks: list[dict[str, object]]) -> tuple[str, list[tuple[str, str, str]], list[int]]:
    """What an OpenAI client builds from the chunks: the content, the calls (concatenating arguments
    per index, as the SDK's stream accumulator does), and which chunks carried tool calls."""
    from openai.types.chat import ChatCompletionChunk

    content, calls, carriers = "", dict[int, list[str]](), list[int]()
    for n, raw in enumerate(chunks):
        chunk = ChatCompletionChunk.model_validate(raw, strict=True)
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                carriers.append(n)
                call = calls.setdefault(tc.index, ["", "", ""])
                call[0] += tc.id or ""
                call[1] += tc.function.name or "" if tc.function else ""
                call[2] += tc.function.arguments or "" if tc.function else ""
    return content, [(i, n, a) for i, n, a in (calls[k] for k in sorted(calls))], carriers


def live(seq: int, text: str = "", *fragments: ToolCallFragment) -> Delta:
    return Delta(seq=seq, choice=0, text=text, miner=MINER.address, tool_calls=fragments)


MATCHING = [
    live(0, "Let me "),
    live(1, "check."),
    live(2, "", ToolCallFragment(0, CALLS[0][0], "get_weather", "")),
    live(3, "", ToolCallFragment(0, arguments='{"city": ')),
    live(
        4, "", ToolCallFragment(0, arguments='"Paris"}'), ToolCallFragment(1, CALLS[1][0], "get_time", "{}")
    ),
]


@pytest.mark.parametrize(
    ("deltas", "chunks_with_calls"),
    [
        (MATCHING, 3),  # the miner's own fragments, replayed once verified
        ([*MATCHING[:3], live(3, "", ToolCallFragment(0, arguments='{"city": "Rome"}'))], 4),  # diverged
        (MATCHING[:2], 4),  # no fragments streamed: the document's calls, each head then arguments
        ([], 4),
    ],
    ids=["matching", "diverged", "content-only", "nothing-live"],
)
async def test_streamed_tool_calls_add_up_to_the_document(
    deltas: list[Delta], chunks_with_calls: int
) -> None:
    chunks = await stream_with(deltas, tool_output(submission()))
    content, calls, carriers = client_view(chunks)
    assert content == "Let me check." and calls == CALLS
    assert len(set(carriers)) == chunks_with_calls
    final: Any = chunks[-1]
    assert (
        final["choices"][0]["finish_reason"] == "tool_calls"
        and "tool_calls" not in final["choices"][0]["delta"]
    )
    assert max(carriers) < len(chunks) - 1 and "onchain_data" in final
    if deltas:
        assert content_chunks(chunks)[0] == "Let me "  # text before the calls is still relayed live


def content_chunks(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")]


async def test_verified_reasoning_content_is_streamed() -> None:
    chunks: Any = await stream_with(
        MATCHING[:2], tool_output(submission(), reasoning="Weather: use the tool.")
    )
    reasoning = [c["choices"][0]["delta"].get("reasoning_content") for c in chunks if c["choices"]]
    assert [r for r in reasoning if r] == ["Weather: use the tool."]
    assert client_view(chunks)[:2] == ("Let me check.", CALLS)


async def test_tool_call_buffer_is_bounded() -> None:
    big = "x" * (MAX_BUFFERED_CALL_BYTES // 2)
    deltas = [live(0, "", ToolCallFragment(0, CALLS[0][0], "get_weather", ""))]
    deltas += [live(i, "", ToolCallFragment(0, arguments=big)) for i in (1, 2, 3)]
    chunks = await stream_with(deltas, tool_output(submission(), content=None))
    assert b"xxxx" not in json.dumps(chunks).encode()
    assert client_view(chunks)[1] == CALLS


# ------------------------------------------------------------------ verify's reconstruction


@pytest.mark.parametrize("logprobs", [False, True])
def test_response_rebuilds_the_exact_output_document(logprobs: bool) -> None:
    sub = submission()
    data = output(sub, 'héllo "world"', logprobs=logprobs)
    doc = OutputDocument.model_validate_json(data)
    result = VerifiedResult(sub, doc, data, cid_for_bytes(data), "0xsig", MINER.address, "0xsubmit")
    body = json.loads(json.dumps(build_response("chat", result)))
    assert to_canonical_bytes(output_document_from_response(body)) == data
    body["choices"][0]["message"]["content"] = 'héllo "world!'
    assert digest_of(to_canonical_bytes(output_document_from_response(body))) != digest_of(data)
    with pytest.raises(ResponseFormatError):
        output_document_from_response({"object": "chat.completion"})


# ------------------------------------------------------------------ rate limiter


def test_token_bucket_refills_continuously() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("k", 60) for _ in range(60)] == [0.0] * 60
    assert limiter.take("k", 60) == pytest.approx(1.0)
    now[0] += 0.5
    assert limiter.take("k", 60) == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("k", 60) == 0.0


# ------------------------------------------------------------------ keys CLI


def test_keys_cli_add_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    added = runner.invoke(gateway_cli, ["keys", "add", "--name", "ci", "--rate-limit", "5", "--json"])
    assert added.exit_code == 0, added.output
    info = json.loads(added.output)
    assert info["key"].startswith("sk-inferd-")
    listed = runner.invoke(gateway_cli, ["keys", "list", "--json"])
    assert listed.exit_code == 0 and info["key"] not in listed.output
    (rec,) = json.loads(listed.output)
    assert rec["id"] == info["id"] and rec["rate_limit_per_minute"] == 5 and "hash" not in rec
    assert runner.invoke(gateway_cli, ["keys", "revoke", info["id"]]).exit_code == 0
    assert json.loads(runner.invoke(gateway_cli, ["keys", "list", "--json"]).output)[0]["revoked"] is True
    assert runner.invoke(gateway_cli, ["keys", "revoke", "key_nope"]).exit_code == 1
    stored = (tmp_path / "gateway" / "api_keys.json").read_text()
    assert info["key"] not in stored
