"""Several models on one box (`[[miner.models]]`): one runtime, two keys, two engines, two daemons.

On a real anvil with the fake engine: two models registered with their class, one key each; one
`ModelsRuntime` (what `inferd miner run` starts for such a config) from a TOML file answers both
models' requests until they are final, each by its own key and journal; the shared `/metrics`
labels every series with the entry's name and `/healthz` reports each daemon; `inferd miner status
--json` shows each entry's address and stake. The same through one `inferd miner run --fake-engine`
process, stopped by SIGTERM. Plus the config rules (backward compatibility,
unknown engine fields, duplicate names or keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from typer.testing import CliRunner

from node.chain.hub import HubClient, Phase, model_id
from node.cli.main import app as cli
from node.config import ConfigFileError, load_settings, per_model_settings
from node.content.documents import ChatInputDocument, ChatParams, UserMessage, to_canonical_bytes
from node.content.local import LocalStore
from node.devnet.processes import Anvil, free_port
from node.miner.journal import TERMINAL, JobState, Journal
from node.miner.models import ModelsRuntime
from node.miner.run import MinerConfigError
from node.miner.testing import FAKE_ENGINE_CLASS, deploy_dev_hub, dev_request

pytestmark = pytest.mark.timeout(180)


def _doc(model: str, i: int) -> bytes:
    return to_canonical_bytes(
        ChatInputDocument(
            model=model,
            messages=[UserMessage(role="user", content=f"two models question {i}")],
            params=ChatParams(max_tokens=4, seed=i),
        )
    )


def _config(path: Path, data_dir: Path, rpc_url: str, hub: str, key_a: str, key_b_file: Path) -> Path:
    path.write_text(
        f"""
data_dir = "{data_dir}"
[chain]
rpc_url = "{rpc_url}"
hub_address = "{hub}"
chain_id = 31337
poll_interval_s = 0.1
[stream]
enabled = false
[miner]
metrics_port = 0
batch_wait_s = 0.1

[[miner.models]]
name = "alpha"
private_key = "{key_a}"
engine = {{ model = "model-alpha" }}

[[miner.models]]
name = "beta"
private_key_file = "{key_b_file}"
engine = {{ model = "model-beta" }}
"""
    )
    return path


async def _two_models(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path
) -> tuple[HubClient, Path, dict[str, str]]:
    """A hub with model-alpha (key 1, stake 1 ETH) and model-beta (key 2, 2 ETH), fake engine class;
    the config file of one miner serving both; the entries' addresses."""
    key_a, key_b = anvil_keys[1], anvil_keys[2]
    dev = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [key_a], model_name="model-alpha")
    owner = dev.owner
    await owner.register_model("model-beta", FAKE_ENGINE_CLASS, 10**18, 10**12, 0, 100, 1, 1)
    await HubClient(owner.w3, owner.address, key_b).register_miner(
        model_id("model-beta"), FAKE_ENGINE_CLASS, 2 * 10**18
    )
    key_file = data_dir / "beta.key"
    key_file.write_text(key_b + "\n")
    config = _config(data_dir / "inferd.toml", data_dir, anvil.rpc_url, owner.address, key_a, key_file)
    address = {"alpha": Account.from_key(key_a).address, "beta": Account.from_key(key_b).address}
    return owner, config, address


async def _request_both(owner: HubClient, requester_key: str, data_dir: Path) -> dict[str, list[int]]:
    """Two paid requests per model, their inputs in the miner's local store."""
    store = LocalStore(data_dir / "blocks")
    requester = HubClient(owner.w3, owner.address, requester_key)
    ids: dict[str, list[int]] = {"alpha": [], "beta": []}
    for i in range(4):
        name = "alpha" if i % 2 == 0 else "beta"
        data = _doc(f"model-{name}", i)
        await store.put(data)
        ids[name].append(await dev_request(requester, model_id(f"model-{name}"), data))
    return ids


async def test_one_runtime_serves_two_models(anvil: Anvil, anvil_keys: list[str], data_dir: Path) -> None:
    owner, config, address = await _two_models(anvil, anvil_keys, data_dir)
    settings = load_settings(config)

    runtime = await ModelsRuntime.open(settings, fake_engine=True)
    assert {n: d.address for n, d in runtime.daemons.items()} == address
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        for d in runtime.daemons.values():
            await asyncio.wait_for(d.ready.wait(), 60)
        ids = await _request_both(owner, anvil_keys[8], data_dir)
        async with asyncio.timeout(120):
            while True:
                assert not task.done(), task.exception()
                phases = [(await owner.get_request(i)).phase for v in ids.values() for i in v]
                jobs = [runtime.daemons[n].journal.get(i) for n, v in ids.items() for i in v]
                if all(p == Phase.FINAL for p in phases) and all(j and j.state in TERMINAL for j in jobs):
                    break
                await owner.mine(1)
                await asyncio.sleep(0.3)
        for name, rids in ids.items():
            other = runtime.daemons["beta" if name == "alpha" else "alpha"]
            for rid in rids:
                info = await owner.get_request(rid)
                assert info.model_id == model_id(f"model-{name}") and info.seats[0] == address[name]
                job = runtime.daemons[name].journal.get(rid)
                assert job is not None and job.state == JobState.FINALIZED
                assert job.output_digest == info.output_digest
                assert other.journal.get(rid) is None

        assert runtime.ops is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.ops.port}") as http:
            health = (await http.get("/healthz")).json()
            text = (await http.get("/metrics")).text
        assert health["ok"] is True
        assert {n: h["miner"] for n, h in health["models"].items()} == address
        assert all(h["ok"] and h["loops_ok"] for h in health["models"].values())
        finalized = {
            s.labels["model"]: s.value
            for fam in text_string_to_metric_families(text)
            if fam.name == "inferd_miner_job_transitions"
            for s in fam.samples
            if s.name.endswith("_total") and s.labels.get("state") == "finalized"
        }
        assert finalized == {"alpha": 2.0, "beta": 2.0}
        assert text.count("# TYPE inferd_miner_job_transitions_total counter") == 1
    finally:
        stop.set()
        await task
        await runtime.close()

    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["--config", str(config), "miner", "status", "--json"]
    )
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)["models"]
    assert {n: s["chain"]["address"] for n, s in status.items()} == address
    assert {n: s["chain"]["stake"]["wei"] for n, s in status.items()} == {
        "alpha": str(10**18),
        "beta": str(2 * 10**18),
    }
    assert {n: s["journal"]["jobs"]["finalized"] for n, s in status.items()} == {"alpha": 2, "beta": 2}
    assert status["beta"]["journal"]["path"] == str(data_dir / "journal-beta.sqlite")
    table = await asyncio.to_thread(
        CliRunner().invoke, cli, ["--config", str(config), "miner", "status"], env={"COLUMNS": "250"}
    )
    assert table.exit_code == 0, table.output
    for name in ("alpha", "beta"):
        row = next(line for line in table.stdout.splitlines() if f" {name} " in line)
        assert address[name] in row and "finalized 2" in row


async def test_inferd_miner_run_serves_two_models(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path
) -> None:
    """The same through the CLI: one `inferd miner run --fake-engine` process, stopped by SIGTERM."""
    owner, config, address = await _two_models(anvil, anvil_keys, data_dir)
    port = free_port()
    ids: dict[str, list[int]] = {}
    log_file = (data_dir / "miner.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.cli.main", "--config", str(config), "miner", "run", "--fake-engine",
        "--metrics-port", str(port), stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async with asyncio.timeout(60):
                while True:
                    assert proc.returncode is None, (data_dir / "miner.log").read_text()[-2000:]
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.2)
            ids = await _request_both(owner, anvil_keys[8], data_dir)
            async with asyncio.timeout(120):  # final on chain, and each daemon saw it (its journal)
                while not (
                    all([(await owner.get_request(i)).phase == Phase.FINAL for v in ids.values() for i in v])
                    and _journal_states(data_dir, ids) == {n: {JobState.FINALIZED} for n in ids}
                ):
                    await owner.mine(1)
                    await asyncio.sleep(0.3)
            health = (await http.get("/healthz")).json()
        assert {n: h["miner"] for n, h in health["models"].items()} == address
        for name, rids in ids.items():
            for rid in rids:
                assert (await owner.get_request(rid)).seats[0] == address[name]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
        log_file.close()
    assert code == 0, (data_dir / "miner.log").read_text()[-2000:]
    assert _journal_states(data_dir, ids) == {"alpha": {JobState.FINALIZED}, "beta": {JobState.FINALIZED}}


def _journal_states(data_dir: Path, ids: dict[str, list[int]]) -> dict[str, set[JobState | None]]:
    """The states of each entry's jobs, read from its journal file (`journal-<name>.sqlite`)."""
    out: dict[str, set[JobState | None]] = {}
    for name, rids in ids.items():
        journal = Journal(data_dir / f"journal-{name}.sqlite")
        try:
            out[name] = {j.state if (j := journal.get(rid)) else None for rid in rids}
        finally:
            journal.close()
    return out


def test_without_entries_the_settings_are_the_single_model(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    assert per_model_settings(settings) == {settings.engine.model: settings}


def test_entries_override_engine_key_and_journal(tmp_path: Path) -> None:
    key = "0x" + "11" * 32
    settings = load_settings(
        None,
        data_dir=tmp_path,
        engine={"max_model_len": 1024, "vllm_args": {"enforce_eager": True}},
        chain={"private_key": "0x" + "22" * 32},
        stream={"username": "shared", "password": "pw"},
        miner={
            "models": [
                {"name": "a", "private_key": key, "engine": {"model": "m-a"}, "stream_username": "0xA"},
                {"name": "b"},
            ]
        },
    )
    per = per_model_settings(settings)
    assert per["a"].engine.model == "m-a" and per["a"].engine.max_model_len == 1024
    assert per["a"].engine.vllm_args == {"enforce_eager": True}
    assert per["a"].chain.private_key is not None and per["a"].chain.private_key.get_secret_value() == key
    assert per["b"].chain.private_key == settings.chain.private_key  # no key of its own: [chain]'s
    assert per["b"].journal_path() == tmp_path / "journal-b.sqlite"
    assert per["a"].stream.username == "0xA" and per["b"].stream.username == "shared"
    assert per["a"].stream.password is not None and per["a"].stream.password.get_secret_value() == "pw"


def test_bad_entries_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown \\[engine\\] field"):
        load_settings(None, miner={"models": [{"name": "a", "engine": {"modle": "x"}}]})
    with pytest.raises(ValidationError, match="must be unique"):
        load_settings(None, miner={"models": [{"name": "a"}, {"name": "a"}]})
    missing = load_settings(None, miner={"models": [{"name": "a", "private_key_file": str(tmp_path / "no")}]})
    with pytest.raises(ConfigFileError, match="cannot read private_key_file"):
        per_model_settings(missing)


async def test_two_entries_with_one_key_are_refused(tmp_path: Path) -> None:
    key = "0x" + "33" * 32
    settings = load_settings(
        None,
        data_dir=tmp_path,
        chain={"hub_address": "0x" + "44" * 20},
        miner={"models": [{"name": "a", "private_key": key}, {"name": "b", "private_key": key}]},
    )
    with pytest.raises(MinerConfigError, match="same key"):
        await ModelsRuntime.open(settings, fake_engine=True)
