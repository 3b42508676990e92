"""`inferd devnet up|status|down` end to end, as a user runs them: separate CLI processes.

- chain only: starts, writes a private devnet.json, resumes on the saved anvil state (same hub,
  ports and API key), stops on SIGINT, leaves no process;
- three miners with the fake engine: a request through the openai SDK is answered by a quorum
  (redundancy 3, 2 matching results), verified on chain;
- the real thing (engine): one miner on vLLM, an `openai` chat completion with `onchain_data`,
  then `down` and not one process left;
- `inferd devnet bootstrap` (compose's anvil profile) is idempotent and lands the hub where
  deploy/docker-compose.yml expects it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from node.devnet.groups import group_members, pid_alive
from tests.integration.devnet_cli import CLI, devnet, info_of


def processes_of(data_dir: Path) -> set[int]:
    """The supervisor, every part, and everything in the parts' process groups (vLLM workers)."""
    run = json.loads((data_dir / "run.json").read_text())
    pids = {int(run["pid"])}
    for part in run["parts"].values():
        pids.add(int(part["pid"]))
        pids |= set(group_members(int(part["pgid"])))
    return pids


def assert_all_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if pid_alive(p)], "processes left behind"


def test_chain_only_devnet_resumes_and_stops_on_sigint(devnet_dir: Path) -> None:
    out = devnet("up", "--detach", "--chain-only", "--miners", "2", "--data-dir", str(devnet_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    first = info_of(devnet_dir)
    for key in ("gateway_url", "api_key", "rpc_url", "chain_id", "hub", "model", "broker_url"):
        assert first[key], key
    assert stat.S_IMODE((devnet_dir / "devnet.json").stat().st_mode) == 0o600
    assert first["api_key"].startswith("sk-inferd-") and first["redundancy"] == 2
    assert "curl" in out.stdout and "from openai import OpenAI" in out.stdout
    # Every part's settings file exists, private (it holds the part's key).
    config = Path(first["miners"][0]["config"])
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and "[chain]" in config.read_text()

    status = devnet("status", "--json", "--data-dir", str(devnet_dir))
    parts = {p["part"]: p for p in json.loads(status.stdout)["parts"]}
    assert parts["anvil"]["healthy"] and parts["hub"]["healthy"] and parts["mosquitto"]["healthy"]
    assert "2/2 miners active" in parts["hub"]["detail"]
    assert status.returncode == 1  # chain only: no miner or gateway runs

    # A second devnet on the same data dir is refused, and leaves the running one alone.
    again = devnet("up", "--detach", "--chain-only", "--data-dir", str(devnet_dir))
    assert again.returncode == 1 and "already running" in again.stdout
    assert json.loads((devnet_dir / "run.json").read_text())["phase"] == "ready"

    pids = processes_of(devnet_dir)
    down = devnet("down", "--data-dir", str(devnet_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert_all_gone(pids)
    assert not (devnet_dir / "run.json").exists()

    # In the foreground, resuming the saved chain: same hub, ports and key; Ctrl-C stops it all.
    env = {**os.environ}
    proc = subprocess.Popen(
        [*CLI, "up", "--chain-only", "--data-dir", str(devnet_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run = (devnet_dir / "run.json").read_text() if (devnet_dir / "run.json").exists() else ""
            if '"ready"' in run and info_of(devnet_dir)["pid"] == proc.pid:
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        second = info_of(devnet_dir)
        assert second["pid"] == proc.pid
        for key in ("hub", "api_key", "rpc_url", "broker_url", "gateway_url"):
            assert second[key] == first[key], key
        pids = processes_of(devnet_dir)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    assert "reused" in output
    assert_all_gone(pids)


def test_three_fake_miners_answer_through_a_quorum(devnet_dir: Path) -> None:
    from openai import OpenAI

    out = devnet(
        "up", "--detach", "--fake-engine", "--miners", "3", "--data-dir", str(devnet_dir), timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    info = info_of(devnet_dir)
    assert info["redundancy"] == 3
    from node.miner.testing import FAKE_ENGINE_CLASS

    assert info["engine_class"] == "0x" + FAKE_ENGINE_CLASS.hex() and info["audit_bps"] == 500
    client = OpenAI(base_url=info["openai_base_url"], api_key=info["api_key"], max_retries=0, timeout=120)
    reply = client.chat.completions.create(  # the quorum is what is checked: wait for the chain
        model=info["model"],
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        extra_body={"finality": "onchain"},
    )
    onchain = reply.model_extra["onchain_data"] if reply.model_extra else {}
    assert sorted(onchain["assignment_addresses"]) == sorted(m["address"] for m in info["miners"])
    assert onchain["output_salt"]  # private by default: sealed to the three seats, read via envelope_urls

    import asyncio

    from node.chain.hub import HubClient, Phase

    request = asyncio.run(HubClient.connect(info["rpc_url"], info["hub"]).get_request(onchain["request_id"]))
    assert request.phase == Phase.FINAL and onchain["verification"] == "final"
    assert bin(request.revealed).count("1") >= 2  # quorum of 3 is 2 (all committed, then revealed)
    assert request.fee == int(onchain["fee_wei"]) == info["min_fee_wei"] + 4 * info["per_token_fee_wei"]

    pids = processes_of(devnet_dir)
    assert devnet("down", "--data-dir", str(devnet_dir)).returncode == 0
    assert_all_gone(pids)


@pytest.mark.engine
@pytest.mark.timeout(900)
def test_devnet_up_answers_openai_sdk_then_down_leaves_nothing(devnet_dir: Path) -> None:
    from openai import OpenAI

    from node.engine.model_fetch import fetch_default_model

    fetch_default_model()  # `make setup` has normally done it already
    t0 = time.monotonic()
    out = devnet(
        "up", "--detach", "--miners", "1", "--data-dir", str(devnet_dir), "--timeout", "600", timeout=700
    )
    up_s = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"devnet up --detach: healthy after {up_s:.1f} s")
    info = info_of(devnet_dir)

    client = OpenAI(base_url=info["openai_base_url"], api_key=info["api_key"], max_retries=0, timeout=300)
    t1 = time.monotonic()
    reply = client.chat.completions.create(
        model=info["model"],
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
    )
    print(f"first chat completion: {time.monotonic() - t1:.1f} s")
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8
    extra = reply.model_extra or {}
    onchain = extra["onchain_data"]
    assert onchain["chain_id"] == info["chain_id"] and onchain["hub"].lower() == info["hub"].lower()
    assert onchain["assignment_addresses"] == [info["miners"][0]["address"]]
    assert onchain["input_cid"].startswith("bafkrei") and onchain["output_cid"].startswith("bafkrei")
    assert onchain["infer_tx"] and extra["signature"]
    # answered on the miner's verified signed result (the default), before its commit is mined
    assert onchain["settlement"] == "pending" or onchain["submit_tx"]
    assert onchain["output_salt"]  # private by default (the devnet's miners list its gateway)

    status = devnet("status", "--json", "--data-dir", str(devnet_dir))
    assert status.returncode == 0, status.stdout
    assert json.loads(status.stdout)["healthy"] is True

    pids = processes_of(devnet_dir)
    assert len(pids) >= 5  # supervisor, anvil, mosquitto, gateway, miner (+ vLLM's workers)
    t2 = time.monotonic()
    down = devnet("down", "--data-dir", str(devnet_dir), timeout=180)
    print(f"devnet down: {time.monotonic() - t2:.1f} s")
    assert down.returncode == 0, down.stdout + down.stderr
    assert_all_gone(pids)


def test_bootstrap_command_deploys_once_at_the_compose_address(tmp_path: Path) -> None:
    """`inferd devnet bootstrap` (compose's anvil profile): hub at the address compose expects,
    model registered, the settings' key staked; a second run changes nothing."""
    from node.devnet.processes import anvil_process

    node = anvil_process(tmp_path)
    node.start()
    try:
        env = {
            **os.environ,
            "INFERD_CHAIN__RPC_URL": node.rpc_url,
            "INFERD_CHAIN__HUB_ADDRESS": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            # anvil's public dev account 1 (the key deploy/env/miner.env.anvil ships)
            "INFERD_CHAIN__PRIVATE_KEY": "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
            # the model is not on this machine: the class comes from `inferd model class` elsewhere
            "INFERD_ENGINE_CLASS": "0x" + "5e" * 32,
        }
        runs = []
        for _ in range(2):
            out = subprocess.run(
                [*CLI, "bootstrap", "--model", "openai/gpt-oss-120b", "--stake-eth", "2"],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        assert runs[0]["hub"] == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
        assert runs[0]["deployed"] is True and runs[1]["deployed"] is False
        assert runs[0]["miners"] == ["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"]
    finally:
        node.stop()
