"""The devnet supervisor keeps parts up, and the fake engine stays on the devnet's chain.

- `RestartTracker`: backoff doubling per recent crash, capped; more than 5 crashes in 60 s gives
  the part up; crashes older than the window are forgotten (the clock is passed in);
- `Watchdog.check_service` on real child processes: one SIGKILLed is restarted (new pid, restart
  counted, `signal SIGKILL` recorded in run.json); one that crash-loops is given up, said so;
- `--fake-engine` on another chain id: refused by `devnet up` and by the miner, with typed errors.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from node.config import ChainSettings, Settings
from node.devnet.groups import pid_alive
from node.devnet.layout import read_json
from node.devnet.options import FakeEngineChainError, UpOptions
from node.devnet.processes import anvil_process
from node.devnet.service import Service
from node.devnet.up import Devnet
from node.devnet.watchdog import GAVE_UP, RESTARTING, RUNNING, RestartPolicy, RestartTracker, describe_exit
from node.miner.run import FakeEngineRefused, build_daemon, check_fake_engine_chain, run_miner
from node.miner.testing import FakeEngine

pytestmark = pytest.mark.timeout(120)


def test_backoff_doubles_is_capped_and_a_crash_loop_is_given_up() -> None:
    t = RestartTracker("miner-0", RestartPolicy(backoff_s=1, max_backoff_s=8, window_s=60, max_restarts=5))
    delays = []
    for i in range(5):
        delays.append(t.crashed(-9, now=100.0 + i))
        assert t.state == RESTARTING and not t.due(100.0 + i) and t.due(200.0)
        t.restarted()
        assert t.state == RUNNING
    assert delays == [1, 2, 4, 8, 8]
    assert t.as_dict() == {"state": "running", "restarts": 5, "last_exit": "signal SIGKILL"}
    assert t.crashed(1, now=106.0) is None  # the 6th crash within 60 s
    assert t.state == GAVE_UP and not t.due(1e9) and t.as_dict()["last_exit"] == "code 1"


def test_crashes_older_than_the_window_are_forgotten() -> None:
    t = RestartTracker("gateway", RestartPolicy(backoff_s=1, window_s=60, max_restarts=5))
    for i in range(5):
        t.crashed(1, now=i * 10.0)
        t.restarted()
    assert t.crashed(1, now=1000.0) == 1  # an hour later: a fresh start, not a crash loop
    assert t.state == RESTARTING


def test_describe_exit() -> None:
    assert describe_exit(None) == "running"
    assert describe_exit(0) == "code 0"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"


def _devnet(tmp_path: Path, argv: list[str], said: list[str]) -> tuple[Devnet, Service]:
    dev = Devnet(UpOptions(data_dir=tmp_path / "devnet"), say=said.append)
    dev.layout.logs.mkdir(parents=True)
    dev.watchdog.policy = RestartPolicy(backoff_s=0.0, max_backoff_s=0.0, window_s=3600, max_restarts=3)
    svc = Service(name="miner-0", argv=argv, log_path=dev.layout.log_path("miner-0"))
    dev.services = [svc]
    return dev, svc


def _until(dev: Devnet, svc: Service, done: object) -> None:
    """Tick the supervisor's check (as its watch loop does) until `done()` holds."""
    assert callable(done)
    while not done():
        if dev.watchdog.check_service(svc):
            dev._write_run("ready")
        dev._stop.wait(0.05)


def test_a_killed_part_is_restarted_and_recorded(tmp_path: Path) -> None:
    said: list[str] = []
    dev, svc = _devnet(tmp_path, [sys.executable, "-c", "import time; time.sleep(120)"], said)
    svc.launch()
    first = svc.pid
    assert first is not None
    try:
        os.kill(first, signal.SIGKILL)
        restarts = dev.watchdog.restarts
        _until(dev, svc, lambda: restarts.get("miner-0") is not None and restarts["miner-0"].restarts)
        assert svc.pid != first and svc.exited() is None and not pid_alive(first)
        part = (read_json(dev.layout.run_json) or {})["parts"]["miner-0"]
        assert part["pid"] == svc.pid
        assert part["restarts"] == 1 and part["last_exit"] == "signal SIGKILL" and part["state"] == "running"
        assert any("miner-0 exited (signal SIGKILL); restarting it" in line for line in said)
    finally:
        svc.stop(5.0)


def test_a_crash_looping_part_is_given_up(tmp_path: Path) -> None:
    said: list[str] = []
    dev, svc = _devnet(tmp_path, [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"], said)
    svc.launch()
    restarts = dev.watchdog.restarts
    _until(dev, svc, lambda: "miner-0" in restarts and restarts["miner-0"].state == GAVE_UP)
    tracker = restarts["miner-0"]
    assert tracker.restarts == 3 and tracker.last_exit == 3
    assert any("giving up on it: more than 3 restarts" in line for line in said)
    assert any("bad config" in line for line in said)  # the part's last log lines are shown
    assert dev.watchdog.check_service(svc) is False  # given up: left alone


def test_fake_engine_refuses_another_chain(tmp_path: Path) -> None:
    with pytest.raises(FakeEngineChainError, match="31337"):
        UpOptions(data_dir=tmp_path, fake_engine=True, chain_id=1).validate()
    UpOptions(data_dir=tmp_path, fake_engine=True).validate()
    UpOptions(data_dir=tmp_path, chain_id=1).validate()  # a real engine may run anywhere
    check_fake_engine_chain(31337, "devnet")
    with pytest.raises(FakeEngineRefused, match="refuses chain id 1 "):
        check_fake_engine_chain(1, "mainnet")


async def test_fake_engine_miner_refuses_a_chain_that_is_not_the_devnets(tmp_path: Path) -> None:
    key = "0x" + "42" * 32
    # The settings name another chain: refused before anything starts.
    settings = Settings(data_dir=tmp_path, chain=ChainSettings(chain_id=1, private_key=SecretStr(key)))
    with pytest.raises(FakeEngineRefused):
        await run_miner(settings, fake_engine=True)
    # The RPC serves another chain (the settings say nothing): refused when the chain answers.
    node = anvil_process(tmp_path, chain_id=1337)
    node.start()
    try:
        chain = ChainSettings(rpc_url=node.rpc_url, hub_address="0x" + "11" * 20, private_key=SecretStr(key))
        with pytest.raises(FakeEngineRefused, match="1337"):
            await build_daemon(Settings(data_dir=tmp_path, chain=chain), FakeEngine(), fake_engine=True)
    finally:
        node.stop()


def test_anvil_keeps_its_historical_states_in_its_own_folder_and_removes_them(tmp_path: Path) -> None:
    """States an anvil writes to disk live under its log folder, bounded, and go when it stops (not in
    the shared `~/.foundry/anvil/tmp`, where every stopped anvil left gigabytes)."""
    import httpx

    node = anvil_process(tmp_path)
    assert node.state_cache is not None and node.state_cache.parent == tmp_path
    assert "--max-persisted-states" in node.argv
    node.start()
    try:
        mine = {"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": [hex(1500)]}
        assert "result" in httpx.post(node.rpc_url, json=mine, timeout=60).json()
        assert node.state_cache.exists()  # states beyond those kept in memory went here
    finally:
        node.stop()
    assert not node.state_cache.exists()
