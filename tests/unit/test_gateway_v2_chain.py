"""The gateway's v2 path on real anvil with two in-process fake-engine miners: a model that audits
every single-miner result (auditBps 10000), so each answer goes request -> assign -> commit ->
audit -> reveals -> final, and the gateway says `audited`; the fee is exactly the price of the
declared maxTokens. The request is private (the gateway default): the input is sealed to the assignee,
then again to the drawn auditor, both read it at the gateway's `/envelope` route and, with no broker,
hand their sealed answers in there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.chain.hub import Phase, RequestFlag
from node.devnet.processes import Anvil
from node.miner.testing import deploy_dev_hub
from tests.gateway_on_anvil import gateway_on_anvil

pytestmark = pytest.mark.timeout(120)
MODEL = "audited-model"
BASE_FEE, PER_TOKEN = 10**12, 10**6


async def test_every_answer_is_audited_and_costs_its_price(
    anvil: Anvil, anvil_keys: list[str], tmp_path: Path
) -> None:
    miners = [anvil_keys[3], anvil_keys[4]]
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], miners, model_name=MODEL, timeout_blocks=50, base_fee=BASE_FEE,
        per_token_fee=PER_TOKEN, audit_bps=10_000,
    )  # fmt: skip
    async with gateway_on_anvil(
        anvil.rpc_url, hub.owner.address, model=MODEL, miner_keys=miners, wallet_key=anvil_keys[9],
        tmp_path=tmp_path,
    ) as run:  # fmt: skip
        body: dict[str, Any] = {
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "n": 2,
        }  # fmt: skip
        reply = await run.http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        od = reply.json()["onchain_data"]
        assert od["verification"] == "audited" and od["phase"] == "final"
        assert od["max_tokens"] == 10 and od["fee_wei"] == str(BASE_FEE + 10 * PER_TOKEN)
        info = await hub.owner.get_request(od["request_id"])
        assert info.phase == Phase.FINAL and RequestFlag.AUDITED in info.flags
        assert info.auditor in hub.miners and info.auditor not in od["assignment_addresses"]
        record = (await run.http.get(f"/v1/inferences/{od['request_id']}")).json()
        assert record["verification"] == "audited" and record["output_cid"] == od["output_cid"]
        assert record["revealed_cids"] == [od["output_cid"]] * 2  # assignee and auditor agree
        assert od["output_salt"]  # private: only this gateway could open the answer
