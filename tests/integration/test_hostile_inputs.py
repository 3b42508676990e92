"""Hostile inputs on a devnet-like chain, answered by `inferd miner run` with the real engine.

A requester can put any bytes on chain (`inferd hub request`'s code path: stored unchanged, their
digest requested). Each hostile sample below is one request; all go out at once, while the miner
(a separate process, SmolLM2 on the CPU) is still loading, so it also catches up on them. Proves:

* every request is finalized, with an error output document whose code is the expected one (a
  forced tool call whose schema asks for a billion items once OOM-killed the miner) and
  whose text carries nothing of the node (paths, ports, the local `max_model_len`, vLLM's wording);
* a good request sent after them all is answered normally; a request for an input nobody stored
  is retried (logged, no crash) and never answered with an error;
* the miner process is the same one throughout (same pid, still running), no job or loop crashed
  (its log), it exits cleanly on SIGTERM, and its stake is untouched while it earned every fee.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from node.chain.hub import HubClient, Phase
from node.cli.hub import Outcome, read_source, send_request, wait_outcome
from node.config import EngineSettings
from node.content.cid import cid_for_bytes
from node.content.documents import canonical_json
from node.content.local import LocalStore
from node.devnet.processes import REPO_ROOT, Anvil, Mosquitto
from node.engine.engine import resolve_model_path
from node.engine.engine_class import engine_class
from node.miner.testing import deploy_dev_hub

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(900)]
MODEL = "SmolLM2-135M-Instruct"
FEE = 10**12  # deploy_dev_hub's base fee; its per-token fee is 0, so every request pays FEE
DECLARED = 4096  # maxTokens each raw request declares (hostile bytes declare nothing themselves)
T = TypeVar("T")
CRASH_EVENTS = ('"job_crashed"', '"loop_crashed"', '"loop_event_failed"', '"background_task_died"')


def chat(content: Any = "Say hi.", messages: list[Any] | None = None, **params: Any) -> dict[str, Any]:
    msgs = messages if messages is not None else [{"role": "user", "content": content}]
    return {"v": 1, "type": "chat", "model": MODEL, "messages": msgs, "params": {"max_tokens": 4, **params}}


def completion(prompt: Any, **params: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "completion",
        "model": MODEL,
        "prompt": prompt,
        "params": {"max_tokens": 4, **params},
    }


def enc(obj: Any) -> bytes:
    return canonical_json(obj)


def text_doc(body: bytes) -> bytes:
    """A chat document around raw JSON text for the user's content (what canonical_json cannot write)."""
    return (
        b'{"messages":[{"content":'
        + body
        + b',"role":"user"}],"model":"'
        + MODEL.encode()
        + b'","type":"chat","v":1}'
    )


def forced(prop: dict[str, Any]) -> dict[str, Any]:
    """A chat that forces a call to a tool whose parameters schema has `prop` (structured outputs)."""
    parameters = {"type": "object", "properties": {"a": prop}, "required": ["a"]}
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    return chat(tools=tools, tool_choice="required")


TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[" * 300_000}}

# (name, input bytes, expected error code, what the message must start with)
SAMPLES: list[tuple[str, bytes, str, str]] = [
    ("deep-list", b"[" * 200_000, "invalid_request", "document refused: JSON nesting deeper"),
    ("deep-object", b'{"a":' * 40_000 + b"1" + b"}" * 40_000, "invalid_request", "document refused"),
    (
        "huge-int",
        enc(chat()).replace(b'"max_tokens":4', b'"max_tokens":' + b"9" * 5000),
        "invalid_request",
        "",
    ),
    ("huge-float", enc(chat()).replace(b'"max_tokens":4', b'"max_tokens":1e999'), "invalid_request", ""),
    ("lone-surrogate", text_doc(b'"\\ud800"'), "invalid_request", "document is not valid JSON"),
    ("duplicate-keys", text_doc(b'"a"').replace(b'"v":1', b'"v":1,"v":1'), "invalid_request", "document is"),
    ("nan", enc(chat()).replace(b'"max_tokens":4', b'"max_tokens":NaN'), "invalid_request", "document is"),
    ("invalid-utf8", text_doc(b'"\xff\xfe"'), "invalid_request", "document is not UTF-8"),
    ("giant-string", enc(chat("lorem ipsum dolor " * 55_000)), "context_length_exceeded", "messages: "),
    (
        "giant-tool-arguments",
        enc(
            chat(
                messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [TOOL_CALL]}]
            )
        ),
        "context_length_exceeded",
        "messages: ",
    ),
    ("n-over-cap", enc(chat(n=9)), "invalid_request", "params.n: "),
    ("max-tokens-over-cap", enc(chat(max_tokens=40_000)), "invalid_request", "params.max_tokens: "),
    ("total-tokens-over-cap", enc(chat(n=8, max_tokens=8193)), "invalid_request", "params.max_tokens: "),
    ("best-of-over-cap", enc(completion("Once", best_of=9)), "invalid_request", "params.best_of: "),
    ("prompts-over-cap", enc(completion(["Once"] * 17)), "invalid_request", "prompt: "),
    ("sequences-over-cap", enc(completion(["Once"] * 5, n=8)), "invalid_request", "prompt: "),
    (
        "messages-over-cap",
        enc(chat(messages=[{"role": "user", "content": "x"}] * 1025)),
        "invalid_request",
        "messages: ",
    ),
    ("token-ids-over-cap", enc(completion([[1] * 70_000, [2] * 70_000])), "invalid_request", "prompt: "),
    ("token-id-outside-vocab", enc(completion([10**9])), "invalid_request", "prompt: "),
    (
        "echo-logprobs-over-cap",
        enc(completion(["hello world " * 600] * 8, echo=True, logprobs=5)),
        "invalid_request",
        "echo: ",
    ),
    (
        "forced-schema-unbounded",
        enc(forced({"type": "array", "minItems": 10**9})),
        "invalid_request",
        "tools: ",
    ),
    (
        "forced-schema-unsupported",
        enc(forced({"type": "array", "uniqueItems": True})),
        "invalid_request",
        "tools: ",
    ),
]


class Miner:
    """`inferd miner run` as its own process group (vLLM's engine core is a child)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        inferd = Path(sys.executable).parent / "inferd"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(inferd), "miner", "run"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                start_new_session=True,
            )  # fmt: skip
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the miner exited ({self.proc.returncode}):\n{self.log()[-4000:]}"
        assert self.proc.pid == self.pid

    async def watch(self, work: Awaitable[T]) -> T:
        """`await work`, failing at once if the miner process dies meanwhile."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                self.assert_alive()
                await asyncio.wait([task], timeout=1.0)
        finally:
            task.cancel()
        return task.result()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


async def test_hostile_inputs_get_error_documents_and_never_hurt_the_miner(
    anvil: Anvil, mosquitto: Mosquitto, anvil_keys: list[str], data_dir: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    miner_key, requester_key = anvil_keys[5], anvil_keys[6]
    # The model is registered for the class the miner's engine will have (its settings below), as
    # an operator registers it: computed from the model's bytes and the build, without vLLM.
    engine_settings = EngineSettings(max_model_len=2048, max_num_seqs=32, cpu_kvcache_gib=1)
    real_class = engine_class(engine_settings, resolve_model_path(engine_settings)).id
    hub = await deploy_dev_hub(
        anvil.rpc_url,
        anvil_keys[0],
        [miner_key],
        model_name=MODEL,
        timeout_blocks=200,
        engine_class=real_class,
    )
    miner_address = hub.miners[0]
    stake_before = (await hub.owner.get_miner(miner_address)).stake
    env = {
        **os.environ,
        "INFERD_DATA_DIR": str(data_dir),
        "INFERD_LOG_FORMAT": "json",
        "INFERD_CHAIN__RPC_URL": anvil.rpc_url,
        "INFERD_CHAIN__HUB_ADDRESS": hub.owner.address,
        "INFERD_CHAIN__PRIVATE_KEY": miner_key,
        "INFERD_CHAIN__POLL_INTERVAL_S": "0.2",
        "INFERD_CONTENT__PATH": str(data_dir / "blocks"),
        "INFERD_STREAM__BROKER_URL": mosquitto.url,
        "INFERD_MINER__METRICS_PORT": "0",
        "INFERD_MINER__BATCH_WAIT_S": "0.3",
        "INFERD_ENGINE__MAX_MODEL_LEN": "2048",
        "INFERD_ENGINE__MAX_NUM_SEQS": "32",
        "INFERD_ENGINE__CPU_KVCACHE_GIB": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "PYTHONFAULTHANDLER": "1",  # a native crash prints every thread's stack to the log
    }
    env.pop("INFERD_CONFIG", None)
    miner = Miner(env, data_dir / "miner.log")
    try:
        requester = HubClient(hub.owner.w3, hub.owner.address, requester_key)
        store = LocalStore(data_dir / "blocks")
        ids: dict[str, int] = {}
        for name, data, _, _ in SAMPLES:  # the CLI's path: FILE's bytes stored and requested unchanged
            path = tmp_path / f"{name}.bin"
            path.write_bytes(data)
            raw, cid = read_source(str(path))
            assert raw == data
            sent = await send_request(requester, store, raw, cid, MODEL, DECLARED)
            assert (await hub.owner.get_request(sent.request_id)).input_digest.hex() == sent.input_digest[2:]
            ids[name] = sent.request_id
        missing = cid_for_bytes(b"an input nobody ever stored")  # unavailable: retried, never answered
        unavailable = await send_request(requester, store, None, missing, MODEL, DECLARED)
        sent_at = time.monotonic()
        outcomes = await miner.watch(
            asyncio.gather(
                *(wait_outcome(hub.owner, store, rid, timeout_s=400, poll_s=0.5) for rid in ids.values())
            )
        )
        miner.assert_alive()
        done_at = time.monotonic()
        good_data = enc(chat("Name a colour.", temperature=0))
        good = await send_request(requester, store, good_data, cid_for_bytes(good_data), MODEL, DECLARED)
        good_outcome = await miner.watch(
            wait_outcome(hub.owner, store, good.request_id, timeout_s=120, poll_s=0.5)
        )
        miner.assert_alive()
        print(
            f"\nhostile: {len(SAMPLES)} requests finalized {done_at - sent_at:.1f}s after sending "
            f"(miner start included); total {time.monotonic() - started:.1f}s"
        )
        check_outcomes(dict(zip(ids, outcomes, strict=True)), good_outcome, data_dir)
        for rid in [*ids.values(), good.request_id]:  # finalized: submitted before the deadline
            assert (await hub.owner.get_request(rid)).phase == Phase.FINAL
        assert (await hub.owner.get_request(unavailable.request_id)).phase != Phase.FINAL
        info = await hub.owner.get_miner(miner_address)
        assert info.stake == stake_before and info.active
        # paid for every refusal, too: the fee less its audit share (deploy_dev_hub's auditBps is 1)
        assert info.credits == (FEE - FEE * 1 // 10_000) * (len(SAMPLES) + 1)
        log = miner.log()
        assert not [event for event in CRASH_EVENTS if event in log], log[-4000:]
        assert log.count('"miner_started"') == 1 and '"input_unavailable"' in log
        assert miner.stop() == 0
    finally:
        miner.kill()


def check_outcomes(outcomes: dict[str, Outcome], good: Outcome, data_dir: Path) -> None:
    expected = {name: (code, prefix) for name, _, code, prefix in SAMPLES}
    got: dict[str, tuple[str, str]] = {}
    for name, outcome in outcomes.items():
        assert outcome.status == "finalized", name
        assert outcome.output is not None and outcome.output["error"] is not None, name
        assert outcome.output["choices"] == [], name
        error = outcome.output["error"]
        message: str = error["message"]
        for leak in (str(data_dir), "127.0.0.1", "vllm", "2048", "Traceback"):
            assert leak not in message, (name, message)
        got[name] = (error["code"], expected[name][1] if message.startswith(expected[name][1]) else message)
    assert got == expected
    assert good.status == "finalized" and good.output is not None
    assert good.output["error"] is None and good.output["choices"][0]["message"]["content"]
    print(
        json.dumps({n: o.output["error"]["message"][:90] for n, o in outcomes.items() if o.output}, indent=1)
    )
