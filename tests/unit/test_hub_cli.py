"""`inferd hub request` and `inferd hub register-model` on real anvil, requests answered by an
in-process miner with the fake engine.

The CLI runs as its own process, as a requester would run it: its bytes must reach the store and
the chain unchanged, `--json` must be the only thing on stdout, `--wait` must end with the output
document the miner revealed, the fee must be exactly the hub's price for the document's declared
maxTokens, and nothing is paid without `--yes` when there is no terminal to ask on.
`register-model` parses ETH exactly and refuses prices the hub's audit rule would refuse.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from node.chain.hub import HubClient, Phase, model_id
from node.content.cid import cid_for_bytes, digest_of
from node.content.documents import ChatInputDocument, ChatParams, UserMessage, to_canonical_bytes
from node.content.local import LocalStore
from node.devnet.processes import REPO_ROOT, Anvil, anvil_private_keys
from node.miner.daemon import DaemonConfig, MinerDaemon
from node.miner.journal import Journal
from node.miner.testing import DevHub, FakeEngine, deploy_dev_hub

pytestmark = pytest.mark.timeout(180)
BASE_FEE = 10**12
ANVIL_OWNER_KEY = anvil_private_keys(1)[0]  # deploy_dev_hub's owner below (anvil_keys[0])
PER_TOKEN = 10**6


@dataclass
class Env:
    hub: DevHub
    store: LocalStore
    env: dict[str, str]

    async def cli(self, *args: str, command: str = "request") -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "node.cli.main", "hub", command, *args,
            env=self.env, cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return int(proc.returncode or 0), out.decode(), err.decode()


@pytest.fixture()
async def env(anvil: Anvil, anvil_keys: list[str], data_dir: Path) -> AsyncIterator[Env]:
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], [anvil_keys[7]], timeout_blocks=200, base_fee=BASE_FEE,
        per_token_fee=PER_TOKEN,
    )  # fmt: skip
    store = LocalStore(data_dir / "blocks")
    account = Account.from_key(anvil_keys[7])
    client = HubClient(HubClient.web3(anvil.rpc_url), hub.owner.address, anvil_keys[7])
    journal = Journal(data_dir / "journal.sqlite", scope=f"31337:{client.address}:{account.address}")
    config = DaemonConfig(chain_id=31337, poll_interval_s=0.1, batch_wait_s=0.1, sweep_interval_s=0.5)
    daemon = MinerDaemon(
        config=config, hub=client, account=account, engine=FakeEngine(), store=store, journal=journal
    )
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    env = {
        **os.environ,
        "INFERD_DATA_DIR": str(data_dir / "requester"),
        "INFERD_CHAIN__RPC_URL": anvil.rpc_url,
        "INFERD_CHAIN__HUB_ADDRESS": hub.owner.address,
        "INFERD_CHAIN__PRIVATE_KEY": anvil_keys[8],
        "INFERD_CHAIN__POLL_INTERVAL_S": "0.2",
        "INFERD_CONTENT__PATH": str(data_dir / "blocks"),
    }
    env.pop("INFERD_CONFIG", None)
    try:
        yield Env(hub, store, env)
    finally:
        stop.set()
        await task


def chat_doc() -> bytes:
    doc = ChatInputDocument(
        model="fake-model",
        messages=[UserMessage(role="user", content="hello")],
        params=ChatParams(max_tokens=4),
    )
    return to_canonical_bytes(doc)


async def test_request_wait_json_prints_only_the_final_answer(env: Env, tmp_path: Path) -> None:
    data = chat_doc()
    path = tmp_path / "input.json"
    path.write_bytes(data)
    code, out, err = await env.cli(
        str(path), "--model", "fake-model", "--yes", "--wait", "--json", "--timeout", "60"
    )
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)  # stdout is exactly one JSON object
    assert result["status"] == "finalized" and result["input_cid"] == cid_for_bytes(data)
    assert result["output"]["error"] is None and result["output"]["request_id"] == result["request_id"]
    assert result["max_tokens"] == 4 and result["verification"] in ("final", "audited")
    assert result["assignees"] == env.hub.miners
    info = await env.hub.owner.get_request(result["request_id"])
    assert info.input_digest == digest_of(data) and info.fee == BASE_FEE + 4 * PER_TOKEN  # the price


async def test_hostile_bytes_reach_the_chain_unchanged(env: Env, tmp_path: Path) -> None:
    data = b'{"v":1,"type":"chat","model":"\xff",' + b"[" * 1000  # not UTF-8, not JSON
    path = tmp_path / "hostile.bin"
    path.write_bytes(data)
    code, out, err = await env.cli(str(path), "--model", "fake-model", "--yes", "--wait", "--json")
    assert code == 2 and out == "" and "--max-tokens" in err  # no document, no declared work
    code, out, err = await env.cli(
        str(path), "--model", "fake-model", "--max-tokens", "16", "--yes", "--wait", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert await env.store.get(result["input_cid"]) == data
    info = await env.hub.owner.get_request(result["request_id"])
    assert info.input_digest == digest_of(data) and info.fee == BASE_FEE + 16 * PER_TOKEN
    assert result["output"]["error"]["code"] == "invalid_request"


async def test_a_cid_is_requested_without_upload_and_human_output(env: Env) -> None:
    cid = cid_for_bytes(b"never stored")
    before = await env.hub.owner.request_count()
    code, out, err = await env.cli(cid, "--model", "fake-model", "--max-tokens", "8")
    assert code == 2 and "refusing to pay 0.000001000008 ETH" in err and "--yes" in err
    assert await env.hub.owner.request_count() == before  # nothing was sent
    code, out, err = await env.cli(cid, "--model", "fake-model", "--max-tokens", "8", "--yes")
    assert code == 0, err
    assert f"input {cid}" in out and f"assigned to {env.hub.miners[0]}" in out
    rid = int(out.split()[1].rstrip(":"))
    info = await env.hub.owner.get_request(rid)
    assert info.phase not in (Phase.PENDING, Phase.REFUNDED) and info.assignees == tuple(env.hub.miners)
    assert not await env.store.has(cid)


async def test_neither_file_nor_cid_is_a_usage_error(env: Env) -> None:
    code, out, err = await env.cli("no-such-file.json", "--model", "fake-model")
    assert code == 2 and out == "" and "neither a readable file nor a CID" in err


async def test_register_model_parses_eth_exactly_and_checks_the_audit_rule(env: Env) -> None:
    env.env["INFERD_CHAIN__PRIVATE_KEY"] = ANVIL_OWNER_KEY  # the hub's owner registers models
    cls = "0x" + "ab" * 32
    args = ["--engine-class", cls, "--timeout-blocks", "50", "--audit-bps", "500", "--json"]
    code, out, err = await env.cli(
        "cli-model", "--min-stake", "1", "--base-fee", "0.1", "--per-token-fee", "0", *args,
        command="register-model",
    )  # fmt: skip
    assert code == 2 and "underpriced" in err and "0.02631578947368421 ETH" in err
    code, out, err = await env.cli(
        "cli-model", "--min-stake", "1", "--base-fee", "1e-3", "--per-token-fee", "0", *args,
        command="register-model",
    )  # fmt: skip
    assert code == 2 and "exponent" in err
    code, out, err = await env.cli(
        "cli-model", "--min-stake", "1.5", "--base-fee", "0.001", "--per-token-fee", "0.0000001", *args,
        command="register-model",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["model_id"] == "0x" + model_id("cli-model").hex()
    info = await env.hub.owner.get_model(model_id("cli-model"))
    assert (info.min_stake, info.base_fee, info.per_token_fee) == (15 * 10**17, 10**15, 10**11)
    assert info.engine_class.hex() == "ab" * 32 and (info.audit_bps, info.timeout_blocks) == (500, 50)
