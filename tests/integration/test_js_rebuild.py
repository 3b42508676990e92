"""A JavaScript verifier rebuilds version-3 documents byte for byte, and so their CIDs.

Version-3 documents are RFC 8785 (JCS) bytes so that a verifier in any language can re-encode a
parsed document and hash it. Here that verifier is Node: `tests/js/rebuild_cid.mjs` parses each
stored document, re-canonicalizes it with npm `canonicalize` (the RFC's reference implementation)
and computes the CIDv1 (raw, sha2-256, base32) with `multiformats`; every CID must equal Python's.

The documents come from the code that writes them on the network: input documents from the
gateway's request parser (`parse_chat_request`, `parse_completion_request`), output documents
through the same models and `to_canonical_bytes` the engine and miner use, with what is hard to
encode the same way twice: floats (0.7, logprobs like -0.123456789, the clamped -9999.0, 1e-7),
integral floats, emoji and other non-ASCII text, control characters, U+2028, object keys beyond
U+FFFF (sorted by UTF-16, not by code point), tool calls, nulls inside schemas. One test also runs
the real engine (shared session fixture) for generated logprobs. A version-1 document is the
control: JCS does not rebuild it, which is why each version keeps its own encoder.

Node and the npm packages are installed by `make setup` (`npm ci` in tests/js); this test fails,
never skips, without them.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from node.content.cid import cid_for_bytes
from node.content.documents import (
    AssistantOutput,
    ChatChoice,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    FunctionCall,
    OutputDocument,
    OutputError,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Usage,
    output_version,
    parse_input_document,
    parse_output_document,
    to_canonical_bytes,
)
from node.engine.engine import Engine
from node.gateway.schemas import parse_chat_request, parse_completion_request

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "rebuild_cid.mjs"
MODEL = "SmolLM2-135M-Instruct"
INPUT_CID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
TEXT = 'Grüße, 世界! 😀 ｱ \u2028 tab\there "quoted" back\\slash \x07 é'  # NFC é, then e + U+0301

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "Città 🏙"},
        "celsius": {"type": "number", "minimum": -273.15, "maximum": 1e15, "multipleOf": 0.1},
        "ｱ": {"type": "integer", "default": None},  # U+FF71: after 😀 in UTF-16, before it by code point
        "😀": {"type": "boolean", "default": None},
    },
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Wetter ☀", "parameters": SCHEMA},
}


def js_rebuild(docs: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Each document rebuilt by the Node verifier: {name: {"cid", "same_bytes", "rebuilt"}}."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: `make setup` needs Node.js (tests/js)", pytrace=False)
    for package in ("canonicalize", "multiformats"):
        if not (JS_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(
                f"npm package {package!r} is missing in tests/js/node_modules: run `make setup` "
                "(or `cd tests/js && npm ci`)",
                pytrace=False,
            )
    payload = [{"name": n, "bytes": base64.b64encode(b).decode()} for n, b in docs.items()]
    done = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)}


def assert_js_rebuilds(docs: dict[str, bytes]) -> None:
    results = js_rebuild(docs)
    for name, data in docs.items():
        got = results[name]
        rebuilt = base64.b64decode(got["rebuilt"]).decode()
        assert got["same_bytes"], f"{name}: JS rebuilt\n{rebuilt}\nPython wrote\n{data.decode()}"
        assert got["cid"] == cid_for_bytes(data), name


def gateway_inputs() -> dict[str, bytes]:
    """Input documents as the gateway writes them from OpenAI request bodies."""
    chat = parse_chat_request(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Antworte kurz. 简洁回答。"},
                {"role": "user", "content": [{"type": "text", "text": TEXT}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_ü1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Zürich 🇨🇭"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_ü1", "content": '{"celsius": 21.5}'},
            ],
            "temperature": 0.7,
            "top_p": 1,  # a float field given an int: 1.0 in Python, `1` in JCS
            "seed": 9007199254740991,  # the largest a version-3 document holds
            "presence_penalty": -0.5,
            "frequency_penalty": 1.25,
            "logit_bias": {"15": -100, "7": 0.5},
            "stop": ["\n\n", "😀"],
            "max_completion_tokens": 64,
            "logprobs": True,
            "top_logprobs": 5,
            "tools": [WEATHER],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "reasoning_effort": "low",
            "user": "ユーザー-42",
        }
    )
    structured = parse_chat_request(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Weather in Paris? ☔"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
            },
            "temperature": 0,
        }
    )
    completion = parse_completion_request(
        {"model": MODEL, "prompt": ["Once upon a time 🐉", "Il était une fois"], "n": 2, "best_of": 3,
         "logprobs": 5, "echo": True, "temperature": 1.5, "max_tokens": 16, "seed": -42}
    )  # fmt: skip
    token_ids = parse_completion_request(
        {"model": MODEL, "prompt": [[1, 2, 3], [4294967295]], "max_tokens": 4}
    )
    docs = {
        "chat input": chat.document_bytes,
        "structured chat input": structured.document_bytes,
        "completion input": completion.document_bytes,
        "token-id completion input": token_ids.document_bytes,
    }
    for name, data in docs.items():
        assert json.loads(data)["v"] == 3, name
        assert to_canonical_bytes(parse_input_document(data)) == data, name  # what a miner reads back
    return docs


def chat_output(v: int) -> OutputDocument:
    top = [TopLogprob(token="😀", logprob=-0.123456789, bytes=[240, 159, 152, 128]),
           TopLogprob(token="ｱ", logprob=-9999.0, bytes=[239, 189, 177]),
           TopLogprob(token=" world", logprob=-1e-7, bytes=None)]  # fmt: skip
    tokens = [
        TokenLogprob(token="Hallo", logprob=0.0, bytes=[72, 97, 108, 108, 111], top_logprobs=top),
        TokenLogprob(token="😀", logprob=-0.123456789, bytes=[240, 159, 152, 128], top_logprobs=top[:1]),
        TokenLogprob(token="\u2028", logprob=-9999.0, bytes=[226, 128, 168]),
        TokenLogprob(token="x", logprob=-2.5e-10, bytes=[120]),
    ]
    call = ToolCall(
        id="call_9f8e", function=FunctionCall(name="get_weather", arguments='{"city":"Zürich","x":1.0}')
    )
    return OutputDocument(
        v=output_version(v),
        request_id=9007199254740991,
        input_cid=INPUT_CID,
        model=MODEL,
        system_fingerprint="inferd-0.1_vllm-0.32_w-abc123_cpu-float32-invariant",
        object="chat.completion",
        created=1_764_460_800,
        choices=[
            ChatChoice(
                index=0,
                message=AssistantOutput(content=TEXT, reasoning_content="Denke nach… 🤔"),
                finish_reason="stop",
                logprobs=ChatLogprobs(content=tokens),
            ),
            ChatChoice(
                index=1, message=AssistantOutput(content=None, tool_calls=[call]), finish_reason="tool_calls"
            ),
        ],
        usage=Usage(prompt_tokens=31, completion_tokens=12, total_tokens=43),
    )


def completion_output() -> OutputDocument:
    logprobs = CompletionLogprobs(
        tokens=["Once", " 🐉", "ｱ"],
        token_logprobs=[None, -0.7, -100.0],  # the first echoed prompt token has no logprob
        top_logprobs=[None, {"😀": -1.5, "ｱ": -0.25, " 🐉": -0.7}, {"ｱ": -100.0, "a": -3.0000000000000004}],
        text_offset=[0, 4, 9],
    )
    return OutputDocument(
        v=output_version(3), request_id=12, input_cid=INPUT_CID, model=MODEL, system_fingerprint="f",
        object="text_completion", created=1_764_460_800,
        choices=[CompletionChoice(index=0, text="Once 🐉ｱ", finish_reason="length", logprobs=logprobs)],
        usage=Usage(prompt_tokens=2, completion_tokens=2, total_tokens=4),
    )  # fmt: skip


def test_a_javascript_verifier_rebuilds_version_3_documents_and_their_cids() -> None:
    docs = gateway_inputs()
    error = OutputDocument.for_error(
        request_id=5, input_cid=INPUT_CID, model=MODEL, system_fingerprint="f", created=0,
        error=OutputError(code="invalid_request", message="params.seed: must be within ±9007199254740991 ✗"),
        v=output_version(None),
    )  # fmt: skip
    for name, out in {
        "chat output": chat_output(3),
        "completion output": completion_output(),
        "error": error,
    }.items():
        data = to_canonical_bytes(out)
        assert to_canonical_bytes(parse_output_document(data)) == data, name  # what the gateway reads back
        docs[name] = data
    assert b"-9999," in docs["chat output"] and b'"temperature":0.7' in docs["chat input"]
    assert_js_rebuilds(docs)


def test_version_1_documents_keep_their_own_bytes_which_jcs_does_not_rebuild() -> None:
    v1 = to_canonical_bytes(chat_output(1))
    assert json.loads(v1)["v"] == 1 and b"-9999.0" in v1  # Python's float form: v1 bytes never change
    got = js_rebuild({"v1": v1})["v1"]
    assert not got["same_bytes"] and got["cid"] != cid_for_bytes(v1)


@pytest.mark.engine
async def test_a_javascript_verifier_rebuilds_what_the_real_engine_wrote(engine: Engine) -> None:
    chat = parse_chat_request(
        {"model": MODEL, "messages": [{"role": "user", "content": "Say hi in German 🇩🇪"}], "temperature": 0.7,
         "max_tokens": 6, "logprobs": True, "top_logprobs": 3, "seed": 7}
    )  # fmt: skip
    completion = parse_completion_request(
        {
            "model": MODEL,
            "prompt": "Grüße aus 😀",
            "max_tokens": 4,
            "logprobs": 2,
            "echo": True,
            "temperature": 0.7,
        }
    )
    docs = {"engine chat input": chat.document_bytes, "engine completion input": completion.document_bytes}
    for i, parsed in enumerate((chat, completion)):
        out = await engine.generate(
            parsed.document_bytes, request_id=100 + i, input_cid=cid_for_bytes(parsed.document_bytes),
            created=1_764_460_800,
        )  # fmt: skip
        assert out.error is None and out.v == 3, out.error
        docs[f"engine output {i}"] = to_canonical_bytes(out)
        assert b'"logprob' in docs[f"engine output {i}"]  # generated floats, not just text
    assert_js_rebuilds(docs)


@pytest.mark.engine
async def test_the_real_engine_answers_in_the_output_version_of_its_input(engine: Engine) -> None:
    v1 = parse_chat_request(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    )
    legacy = json.loads(v1.document_bytes) | {"v": 1}
    for raw, want in ((v1.document_bytes, 3), (json.dumps(legacy).encode(), 1), (b'{"v":1,"type":', 3)):
        out = await engine.generate(raw, request_id=1, input_cid=cid_for_bytes(raw), created=0)
        assert out.v == want, (raw[:40], out.error)
        assert to_canonical_bytes(parse_output_document(to_canonical_bytes(out))) == to_canonical_bytes(out)
