"""Ops around the daemon: the CLI against anvil, /metrics and /healthz, keys from env or keystore."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from pydantic import SecretStr
from typer.testing import CliRunner

from node.chain.hub import HubClient
from node.cli.miner import app
from node.config import ChainSettings
from node.devnet.processes import Anvil
from node.miner.keys import MinerKeyError, load_account
from node.miner.metrics import MinerMetrics, OpsServer
from node.miner.testing import FAKE_ENGINE_CLASS, deploy_dev_hub

pytestmark = pytest.mark.timeout(120)


def test_key_from_env_setting_and_keystore(tmp_path: Path) -> None:
    key = "0x" + "42" * 32
    acct = Account.from_key(key)
    assert load_account(ChainSettings(private_key=SecretStr(key))).address == acct.address
    store = tmp_path / "key.json"
    store.write_text(json.dumps(Account.encrypt(bytes.fromhex(key[2:]), "pw")))
    got = load_account(ChainSettings(keystore_path=store, keystore_password=SecretStr("pw")))
    assert got.address == acct.address
    with pytest.raises(MinerKeyError, match="wrong password"):
        load_account(ChainSettings(keystore_path=store, keystore_password=SecretStr("nope")))
    with pytest.raises(MinerKeyError, match="INFERD_CHAIN__PRIVATE_KEY"):
        load_account(ChainSettings())


async def test_metrics_and_healthz() -> None:
    metrics = MinerMetrics()
    metrics.tokens.inc(5)
    health = {"ok": True}
    server = OpsServer(metrics, lambda: health, "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            r = await client.get("/metrics")
            assert r.status_code == 200 and "inferd_miner_output_tokens_total 5.0" in r.text
            assert (await client.get("/healthz")).json() == {"ok": True}
            health["ok"] = False
            assert (await client.get("/healthz")).status_code == 503
            assert (await client.get("/nope")).status_code == 404
    finally:
        await server.stop()


async def test_cli_register_status_exit_withdraw(
    anvil: Anvil, anvil_keys: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [], model_name="cli-model", timeout_blocks=2)
    key = anvil_keys[9]
    for name, value in {
        "INFERD_CHAIN__RPC_URL": anvil.rpc_url,
        "INFERD_CHAIN__HUB_ADDRESS": hub.owner.address,
        "INFERD_CHAIN__PRIVATE_KEY": key,
        "INFERD_ENGINE__MODEL": "cli-model",
        "INFERD_DATA_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    ec = "0x" + FAKE_ENGINE_CLASS.hex()
    await asyncio.to_thread(invoke, "register", "--engine-class", ec, "--yes")
    out = await asyncio.to_thread(invoke, "status")
    assert "stake" in out and "1 ETH" in out and key.removeprefix("0x") not in out
    await asyncio.to_thread(invoke, "exit", "--yes")
    await hub.owner.mine(12 * 2 + 1)  # EXIT_COOLDOWN_TIMEOUTS x timeoutBlocks
    await asyncio.to_thread(invoke, "withdraw", "--stake", "--yes")
    info = await HubClient(hub.owner.w3, hub.owner.address).get_miner(Account.from_key(key).address)
    assert info.stake == 0
    failed = await asyncio.to_thread(runner.invoke, app, ["withdraw", "--yes"])  # no credits: a clear error
    assert failed.exit_code == 1 and "NothingToWithdraw" in failed.output
