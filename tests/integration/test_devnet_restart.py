"""A devnet keeps itself up: a miner SIGKILLed in the middle of a run comes back by itself.

`inferd devnet up --detach --fake-engine` (real anvil, mosquitto, gateway and miner processes), then
through the openai SDK: a first wave of requests, the miner killed with SIGKILL as soon as the first
answer arrives, a second wave sent while it is down or restarting. The supervisor restarts it, the
restarted miner resumes from its journal and the chain, and every request of the run is answered
and finalized on chain. `inferd devnet status` reports the restart (count, `signal SIGKILL`, state).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.devnet_cli import CLI, devnet, info_of

pytestmark = pytest.mark.timeout(600)


def miner_part(data_dir: Path) -> dict[str, Any]:
    part: dict[str, Any] = json.loads((data_dir / "run.json").read_text())["parts"]["miner-0"]
    return part


def status_of(data_dir: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    out = devnet("status", "--json", "--data-dir", str(data_dir))
    return out.returncode, {p["part"]: p for p in json.loads(out.stdout)["parts"]}


def test_a_killed_miner_comes_back_and_every_request_finalizes(devnet_dir: Path) -> None:
    from openai import OpenAI

    from node.chain.hub import HubClient, Phase

    args = ("up", "--detach", "--fake-engine", "--miners", "1", "--data-dir", str(devnet_dir))
    out = devnet(*args, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    info = info_of(devnet_dir)
    client = OpenAI(base_url=info["openai_base_url"], api_key=info["api_key"], max_retries=0, timeout=300)
    first_pid = int(miner_part(devnet_dir)["pid"])

    def ask(i: int) -> Any:
        return client.chat.completions.create(
            model=info["model"], messages=[{"role": "user", "content": f"restart test {i}"}], max_tokens=4
        )

    with ThreadPoolExecutor(max_workers=12) as pool:
        wave: list[Future[Any]] = [pool.submit(ask, i) for i in range(6)]
        wave[0].result()  # the run is under way: kill the miner now, the others mid-flight
        os.kill(first_pid, signal.SIGKILL)
        wave += [pool.submit(ask, 100 + i) for i in range(6)]
        replies = [f.result() for f in wave]

    ids = [reply.model_extra["onchain_data"]["request_id"] for reply in replies]
    assert len(set(ids)) == len(wave)
    hub = HubClient.connect(info["rpc_url"], info["hub"])

    async def phases() -> list[Phase]:
        return [(await hub.get_request(rid)).phase for rid in ids]

    # Answers come on the assignees' signed results (the shipped `answer_on`); settlement follows.
    deadline = time.monotonic() + 240
    settled = asyncio.run(phases())
    while settled != [Phase.FINAL] * len(ids) and time.monotonic() < deadline:
        time.sleep(1.0)
        settled = asyncio.run(phases())
    assert settled == [Phase.FINAL] * len(ids)

    part = miner_part(devnet_dir)
    assert part["pid"] != first_pid and part["restarts"] == 1 and part["last_exit"] == "signal SIGKILL"
    # Status: the restarted miner is healthy again, and its row says it was restarted.
    code, parts = status_of(devnet_dir)
    deadline = time.monotonic() + 60
    while code != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        code, parts = status_of(devnet_dir)
    assert code == 0, parts
    miner = parts["miner-0"]
    assert miner["restarts"] == 1 and miner["last_exit"] == "signal SIGKILL" and miner["state"] == "running"
    assert miner["pid"] == part["pid"] and miner["healthy"]
    table = subprocess.run(
        [*CLI, "status", "--data-dir", str(devnet_dir)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    assert "1 (last: signal SIGKILL)" in table.stdout, table.stdout
    log = (devnet_dir / "logs" / "devnet.log").read_text()
    assert "miner-0 exited (signal SIGKILL); restarting it" in log and "restarted  miner-0" in log
