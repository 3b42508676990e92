"""The devnet's building blocks, without starting a devnet: settings files, env hygiene, ports,
process-group cleanup, the printed examples."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from node.config import load_settings
from node.devnet.banner import banner, examples
from node.devnet.groups import group_members, pid_alive, stop_group
from node.devnet.layout import Layout, dump_toml, read_json, write_json
from node.devnet.options import DevnetError, UpOptions, pick_port
from node.devnet.service import child_env, env_names, inferd_command


def test_dump_toml_round_trips_through_load_settings(tmp_path: Path) -> None:
    data = {
        "data_dir": str(tmp_path / "miner-0"),
        "chain": {
            "rpc_url": "http://127.0.0.1:8545",
            "chain_id": 31337,
            "confirmations": 0,
            "poll_interval_s": 0.25,
        },
        "content": {"backend": "local", "path": str(tmp_path / 'blocks "quoted"')},
        "stream": {"enabled": True, "broker_url": "mqtt://127.0.0.1:1883"},
        "miner": {"metrics_port": 9999},
    }
    text = dump_toml(data)
    assert tomllib.loads(text) == data
    path = tmp_path / "inferd.toml"
    path.write_text(text)
    settings = load_settings(path)
    assert settings.chain.chain_id == 31337 and settings.chain.poll_interval_s == 0.25
    assert settings.content.path == tmp_path / 'blocks "quoted"'
    assert settings.miner.metrics_port == 9999


def test_child_env_drops_only_what_the_settings_file_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    names = env_names({"chain": {"rpc_url": "x", "private_key": "y"}, "data_dir": "z"})
    assert names == {"INFERD_CHAIN__RPC_URL", "INFERD_CHAIN__PRIVATE_KEY", "INFERD_DATA_DIR"}
    monkeypatch.setenv("INFERD_CHAIN__RPC_URL", "http://elsewhere")  # would beat the file
    monkeypatch.setenv("INFERD_CONFIG", "/some/other.toml")
    monkeypatch.setenv("INFERD_ENGINE__DTYPE", "bfloat16")  # a user's tuning passes through
    env = child_env(names)
    assert "INFERD_CHAIN__RPC_URL" not in env and "INFERD_CONFIG" not in env
    assert env["INFERD_ENGINE__DTYPE"] == "bfloat16" and env["PATH"] == os.environ["PATH"]


def test_inferd_command_honours_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_DEVNET_INFERD", "python3 /tmp/my inferd.py")
    assert inferd_command() == ["python3", "/tmp/my", "inferd.py"]
    monkeypatch.setenv("INFERD_DEVNET_INFERD", shlex.join(["python3", "/tmp/my inferd.py"]))
    assert inferd_command() == ["python3", "/tmp/my inferd.py"]
    monkeypatch.delenv("INFERD_DEVNET_INFERD")
    assert (
        inferd_command()[0].endswith(("inferd", "python", "python3", "python3.11"))
        or "-m" in inferd_command()
    )


def test_pick_port_prefers_flag_then_previous_then_free() -> None:
    taken: set[int] = set()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        with pytest.raises(DevnetError, match="already in use"):
            pick_port(busy_port, None, taken)
        fresh = pick_port(0, busy_port, taken)  # the previous port is busy: any free one
        assert fresh != busy_port
    again = pick_port(0, busy_port, taken)  # now free again: reused
    assert again == busy_port
    assert pick_port(0, busy_port, taken) not in {fresh, busy_port}  # never handed out twice


def test_options_validate_and_default_redundancy() -> None:
    assert UpOptions(Path("x"), miners=1).effective_redundancy == 1
    assert UpOptions(Path("x"), miners=5).effective_redundancy == 3
    with pytest.raises(DevnetError):
        UpOptions(Path("x"), miners=2, redundancy=3).validate()
    with pytest.raises(DevnetError):
        UpOptions(Path("x"), miners=0).validate()


def test_examples_are_ready_to_paste() -> None:
    info = {
        "gateway_url": "http://127.0.0.1:1234",
        "api_key": "sk-inferd-abc",
        "model": "SmolLM2-135M-Instruct",
        "data_dir": "/d",
        "rpc_url": "http://127.0.0.1:8545",
        "chain_id": 31337,
        "hub": "0xabc",
        "redundancy": 1,
        "broker_url": "mqtt://127.0.0.1:1883",
        "logs": "/d/logs",
        "miners": [
            {"name": "miner-0", "address": "0x1", "metrics_url": "u", "config": "/d/miner-0/inferd.toml"}
        ],
    }
    text = examples(info)
    body = text.split("-d '", 1)[1].split("'", 1)[0]
    assert json.loads(body)["model"] == "SmolLM2-135M-Instruct"
    assert 'base_url="http://127.0.0.1:1234/v1"' in text and "onchain_data" in text
    script = text.split("<<'EOF'\n", 1)[1].split("\nEOF", 1)[0]
    compile(script, "example.py", "exec")  # valid Python
    assert "sk-inferd-abc" in banner(info)


def test_private_json_files(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_json(layout.devnet_json, {"api_key": "sk"})
    assert (layout.devnet_json.stat().st_mode & 0o777) == 0o600
    assert read_json(layout.devnet_json) == {"api_key": "sk"}
    layout.run_json.write_text("{half")
    assert read_json(layout.run_json) is None


def test_stop_group_takes_grandchildren_down() -> None:
    """A part that ignores SIGTERM and has a child of its own (like vLLM's workers) still goes."""
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    assert set(group_members(proc.pid)) >= {proc.pid, grandchild}
    t0 = time.monotonic()
    clean = stop_group(proc.pid, proc.pid, term_timeout_s=1.0, proc=proc)
    assert not clean  # it needed SIGKILL
    assert time.monotonic() - t0 < 15
    assert not pid_alive(proc.pid) and not pid_alive(grandchild)
    assert group_members(proc.pid) == []
