"""Crash safety: `inferd miner run` as a separate process, SIGKILLed three times at random moments.

Proves: after three SIGKILLs during a 30-request run (and restarts), every request is finalized and
the miner never broadcast a commit or a reveal twice. The contract refuses a second commit or reveal,
so its events would look the same either way; the test therefore reads what the miner signed: every
transaction from its address in every block (calldata of `commit`/`commitMany`/`commitBatch` and
`reveal`/`revealMany`/`revealBatch` decoded), which must carry each request id exactly once as a
commit and once as a reveal, all succeeded, and account for its whole nonce (nothing sent that was not mined,
nothing pending). No journal entry is left unfinished.

The kill moments come from a seed printed at the start (`INFERD_CRASH_SEED=<seed>` repeats a run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from node.chain.events import ResultRevealed, decode_logs
from node.chain.hub import HubClient, Phase
from node.content.documents import ChatInputDocument, ChatParams, UserMessage, to_canonical_bytes
from node.content.local import LocalStore
from node.devnet.processes import REPO_ROOT, Anvil, Mosquitto
from node.miner.testing import FAKE_ENGINE_CLASS, deploy_dev_hub, dev_request
from tests.integration.chain_audit import commits_per_request, reveals_per_request, sent_by

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(900)]
MODEL = "SmolLM2-135M-Instruct"
MINER_FUNCTIONS = {
    "registerMiner",
    "commit",
    "commitMany",
    "commitBatch",
    "reveal",
    "revealMany",
    "revealBatch",
    "openAudit",
    "timeout",
    "timeoutMany",
}


def engine_class_for(fake_engine: bool) -> bytes:
    """The class of the engine `inferd miner run` starts here (the model is registered with it)."""
    if fake_engine:
        return FAKE_ENGINE_CLASS
    from node.config import EngineSettings
    from node.engine.engine import resolve_model_path
    from node.engine.engine_class import engine_class

    settings = EngineSettings()
    return engine_class(settings, resolve_model_path(settings)).id


def doc(i: int) -> bytes:
    return to_canonical_bytes(
        ChatInputDocument(
            model=MODEL,
            messages=[UserMessage(role="user", content=f"Count to three. ({i})")],
            params=ChatParams(max_tokens=12, temperature=0.0),
        )
    )


class MinerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, fake_engine: bool) -> None:
        self.env = env
        self.log_path = log_path
        self.fake_engine = fake_engine
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        argv = [sys.executable, "-m", "node.miner", "run"] + (["--fake-engine"] if self.fake_engine else [])
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
        )
        log.close()
        self.starts += 1

    async def wait_started(self, timeout: float = 420) -> None:  # noqa: ASYNC109
        """vLLM loads on every start; a busy 2-core box has needed more than 3 minutes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()[-3000:]
            if self.log_path.read_text(errors="replace").count('"miner_started"') >= self.starts:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"miner did not start: {self.log_path.read_text(errors='replace')[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the miner and its vLLM engine-core children (the whole box "loses power")."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


async def test_sigkill_three_times(
    anvil: Anvil, mosquitto: Mosquitto, anvil_keys: list[str], data_dir: Path, fake_engine: bool
) -> None:
    seed = int(os.environ.get("INFERD_CRASH_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\ncrash test seed: INFERD_CRASH_SEED={seed}")
    rng = random.Random(seed)
    miner_key = anvil_keys[5]
    # The session's anvil is shared: earlier tests may have used this key against other hubs. Audit
    # only what it sends from here on, and its nonces from the count it starts with.
    probe = Web3(Web3.HTTPProvider(anvil.rpc_url))
    start_block = int(probe.eth.block_number) + 1
    start_nonce = int(probe.eth.get_transaction_count(Account.from_key(miner_key).address, "latest"))
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], [miner_key], model_name=MODEL, timeout_blocks=200,
        engine_class=engine_class_for(fake_engine),
    )  # fmt: skip
    requester = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[6])
    store = LocalStore(data_dir / "blocks")
    env = {
        **os.environ,
        "INFERD_DATA_DIR": str(data_dir),
        "INFERD_LOG_FORMAT": "json",
        "INFERD_CHAIN__RPC_URL": anvil.rpc_url,
        "INFERD_CHAIN__HUB_ADDRESS": hub.owner.address,
        "INFERD_CHAIN__PRIVATE_KEY": miner_key,
        "INFERD_CHAIN__POLL_INTERVAL_S": "0.2",
        "INFERD_STREAM__BROKER_URL": mosquitto.url,
        "INFERD_MINER__METRICS_PORT": "0",
        "INFERD_MINER__BATCH_WAIT_S": "0.3",
        "INFERD_MINER__BATCH_MAX": "4",
        "INFERD_ENGINE__MAX_NUM_SEQS": "32",
    }
    env.pop("INFERD_CONFIG", None)
    miner = MinerProcess(env, data_dir / "miner.log", fake_engine)
    ids: list[int] = []

    async def send(n: int) -> None:
        for _ in range(n):
            data = doc(len(ids))
            await store.put(data)
            ids.append(await dev_request(requester, hub.model, data))
            await asyncio.sleep(rng.uniform(0.0, 0.15))

    miner.start()
    await miner.wait_started()
    for _ in range(3):
        sender = asyncio.create_task(send(10))
        await asyncio.sleep(rng.uniform(0.5, 3.0))  # somewhere in fetch / infer / upload / submit
        miner.kill()
        await sender
        miner.start()
        await miner.wait_started()
    async with asyncio.timeout(300):
        while True:
            infos = [await hub.owner.get_request(i) for i in ids]
            if all(i.phase == Phase.FINAL for i in infos):
                break
            assert miner.proc is not None and miner.proc.poll() is None
            await asyncio.sleep(0.5)
    try:
        assert miner.terminate() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(miner.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    assert len(ids) == 30

    w3 = hub.owner.w3
    miner_addr = Account.from_key(miner_key).address
    logs = await w3.eth.get_logs({"address": hub.owner.address, "fromBlock": 0})
    revealed = [e for e in decode_logs(logs) if isinstance(e, ResultRevealed) and e.miner == miner_addr]  # type: ignore[arg-type]
    assert sorted(e.id for e in revealed) == sorted(ids), f"one ResultRevealed per request (seed {seed})"
    # What the miner signed and broadcast, from the blocks themselves (automine: broadcast = mined).
    sent = await sent_by(w3, hub.owner.contract, miner_addr, start_block)
    for what, per_request in (("commit", commits_per_request(sent)), ("reveal", reveals_per_request(sent))):
        twice = {rid: n for rid, n in per_request.items() if n != 1}
        assert not twice, f"{what}s broadcast more than once: {twice} (seed {seed})"
        assert sorted(per_request) == sorted(ids), f"a {what} was never broadcast (seed {seed})"
    assert all(tx.ok for tx in sent), f"reverted miner transactions: {[tx for tx in sent if not tx.ok]}"
    assert {tx.function for tx in sent if tx.function} <= MINER_FUNCTIONS
    nonce = await w3.eth.get_transaction_count(miner_addr, "latest")
    assert [tx.nonce for tx in sent] == list(range(start_nonce, nonce)), "every nonce it used is a mined tx"
    assert await w3.eth.get_transaction_count(miner_addr, "pending") == nonce, "nothing left pending"
    commit_txs = sum(1 for tx in sent if tx.commits)
    reveal_txs = sum(1 for tx in sent if tx.reveals)
    print(
        f"miner: {commit_txs} commit + {reveal_txs} reveal txs, {len(ids)} requests, nonce {nonce}, 3 kills"
    )
    db = sqlite3.connect(data_dir / "journal.sqlite")
    states = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    db.close()
    assert states == {"finalized": 30}, states
    text = (data_dir / "miner.log").read_text()
    assert miner_key.removeprefix("0x") not in text, "the private key must never be logged"
