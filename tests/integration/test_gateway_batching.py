"""Batched requests on real anvil: 16 concurrent chat calls through the gateway go out in fewer
request transactions than requests (`requestInferences`), and every caller gets its own request id
and its own answer (two in-process fake-engine miners; the shared content store holds the documents)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from node.chain.events import InferenceRequested, decode_logs, event_topic
from node.content.documents import parse_input_document
from node.devnet.processes import Anvil
from node.miner.testing import FakeEngine, deploy_dev_hub
from tests.gateway_on_anvil import gateway_on_anvil

pytestmark = pytest.mark.timeout(120)
MODEL = "batched-model"
CALLS = 16


async def test_concurrent_calls_share_request_transactions(
    anvil: Anvil, anvil_keys: list[str], tmp_path: Path
) -> None:
    miners = [anvil_keys[5], anvil_keys[6]]
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], miners, model_name=MODEL, timeout_blocks=100)
    start_block = int(await hub.owner.w3.eth.block_number)
    async with gateway_on_anvil(
        anvil.rpc_url, hub.owner.address, model=MODEL, miner_keys=miners, wallet_key=anvil_keys[8],
        tmp_path=tmp_path, gateway={"private_by_default": False},  # the test reads the inputs
    ) as run:  # fmt: skip

        async def chat(i: int) -> dict[str, Any]:
            question = [{"role": "user", "content": f"question {i}"}]
            body = {"model": MODEL, "messages": question, "max_tokens": 4}
            reply = await run.http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            return dict(reply.json())

        replies = await asyncio.gather(*(chat(i) for i in range(CALLS)))
    store = run.store

    # Every caller got its own request, and the answer to its own question.
    ids = [r["onchain_data"]["request_id"] for r in replies]
    assert len(set(ids)) == CALLS
    fake = FakeEngine(MODEL)
    for i, r in enumerate(replies):
        doc = parse_input_document(await store.get(r["onchain_data"]["input_cid"]))
        assert doc.messages[0].content == f"question {i}"  # type: ignore[union-attr]
        assert r["choices"][0]["message"]["content"] == " ".join(fake._words(doc))
        info = await hub.owner.get_request(r["onchain_data"]["request_id"])
        assert info.input_digest.hex() and info.requester == Account.from_key(anvil_keys[8]).address

    # The chain shows fewer request transactions than requests, each request in the tx the caller saw.
    logs = await hub.owner.w3.eth.get_logs({
        "fromBlock": start_block, "toBlock": "latest", "address": hub.owner.address,
        "topics": [event_topic("InferenceRequested")],
    })  # fmt: skip
    requested = [e for e in decode_logs(logs) if isinstance(e, InferenceRequested)]
    assert sorted(e.id for e in requested) == sorted(ids)
    txs = {e.log.tx_hash for e in requested}
    print(f"{len(txs)} request transactions for {CALLS} requests")  # shown with -s
    assert len(txs) < CALLS
    by_id = {e.id: e.log.tx_hash for e in requested}
    assert all(by_id[r["onchain_data"]["request_id"]] == r["onchain_data"]["infer_tx"] for r in replies)
