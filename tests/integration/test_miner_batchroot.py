"""r = 1 results under one commitment root, end to end: the real daemon (fake engine) on a real anvil.

* one root: 16 r = 1 requests (auditBps 5000, so about half are drawn for audit) are committed by
  ONE `commitBatch` and revealed by ONE `revealBatch` whose mask withholds exactly the drawn entries
  (read from the calldata and the receipt: `ResultCommitted` carries the root for each id,
  `ResultRevealed` only for the shown ones, `BatchRevealed` rebuilds the root). Each withheld entry
  then goes the single path: `openAudit`, the second miner's daemon audits it, the assignee reveals
  it with a single reveal, and it ends final and audited with the same digest. Every request was
  committed once and revealed once (broadcasts counted from the blocks); nothing else was sent.
* a crash in the new window: `inferd miner run --fake-engine` behind a JSON-RPC relay that, on the
  miner's `commitBatch` broadcast, lets anvil mine it and SIGKILLs the miner (its process group)
  before the answer reaches it. After a restart every request is final, committed and revealed once
  each, every nonce the miner used is one mined transaction, and its journal is all finalized.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils.crypto import keccak

from node.chain.events import (
    AuditOpened,
    BatchRevealed,
    InferenceAssigned,
    ResultCommitted,
    ResultRevealed,
    decode_logs,
)
from node.chain.hub import HubClient, Phase, RequestFlag, batch_root, commitment
from node.content.cid import digest_of
from node.content.documents import ChatInputDocument, ChatParams, UserMessage, to_canonical_bytes
from node.content.local import LocalStore
from node.devnet.processes import REPO_ROOT, Anvil, Mosquitto, free_port
from node.miner.daemon import DaemonConfig
from node.miner.journal import TERMINAL
from node.miner.pipeline import declared_tokens
from node.miner.testing import FAKE_ENGINE_CLASS, FakeEngine, deploy_dev_hub, local_daemon
from tests.integration.chain_audit import commits_per_request, reveals_per_request, sent_by

pytestmark = pytest.mark.timeout(300)


def doc(i: int) -> bytes:
    return to_canonical_bytes(
        ChatInputDocument(
            model="fake-model",
            messages=[UserMessage(role="user", content=f"root question {i}")],
            params=ChatParams(max_tokens=4, seed=i),
        )
    )


async def request_many(requester: HubClient, model: bytes, store: LocalStore, n: int, tag: int) -> list[int]:
    """`n` requests in one `requestInferences`, then `assign` them (one InferenceAssigned each)."""
    docs = [doc(tag + i) for i in range(n)]
    for d in docs:
        await store.put(d)
    from node.content.documents import parse_input_document

    made = await requester.request_inferences(
        model, [(digest_of(d), declared_tokens(parse_input_document(d))) for d in docs]
    )
    tx = await requester.assign(n)
    assert len(tx.of(InferenceAssigned)) == n
    return [r.id for r in made]


def _config() -> DaemonConfig:
    return DaemonConfig(
        chain_id=31337, poll_interval_s=0.1, batch_wait_s=3.0, batch_max=32, sweep_interval_s=0.3,
        recheck_s=0.5,
    )  # fmt: skip


async def test_one_commit_batch_one_reveal_batch_drawn_entries_audited(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path
) -> None:
    assignee_key, auditor_key = anvil_keys[3], anvil_keys[7]
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], [assignee_key], timeout_blocks=60, audit_bps=5000
    )
    owner, w3 = hub.owner, hub.owner.w3
    store = LocalStore(data_dir / "blocks")
    requester = HubClient(w3, owner.address, anvil_keys[8])
    ids = await request_many(requester, hub.model, store, 16, tag=0)  # every seat is the assignee's
    # The auditor joins after the assignment (not a candidate for it) and before the commit block
    # (a candidate for the audits).
    await HubClient(w3, owner.address, auditor_key).register_miner(hub.model, FAKE_ENGINE_CLASS, 10**18)
    first = int(await w3.eth.block_number) + 1
    daemons = [
        local_daemon(
            hub=HubClient(HubClient.web3(anvil.rpc_url), owner.address, key),
            miner_key=key,
            engine=FakeEngine(),
            store=store,
            journal_path=data_dir / f"j{n}.sqlite",
            broker_url=None,
            config=_config(),
        )
        for n, key in enumerate((assignee_key, auditor_key))
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(stop)) for d in daemons]
    try:
        async with asyncio.timeout(180):
            while True:
                for t in tasks:
                    assert not t.done(), t.exception() if not t.cancelled() else "cancelled"
                infos = [await owner.get_request(i) for i in ids]
                jobs = [j for d in daemons for i in ids if (j := d.journal.get(i)) is not None]
                if all(i.phase == Phase.FINAL for i in infos) and all(j.state in TERMINAL for j in jobs):
                    break
                await owner.mine(1)
                await asyncio.sleep(0.3)
    finally:
        stop.set()
        for t in tasks:
            await t
    assignee = daemons[0].address
    sent = await sent_by(w3, owner.contract, assignee, first)
    assert all(tx.ok for tx in sent), [tx for tx in sent if not tx.ok]
    commit_txs = [tx for tx in sent if tx.commits]
    assert [tx.function for tx in commit_txs] == ["commitBatch"], "ONE commitBatch for the 16 results"
    assert sorted(rid for rid, _ in commit_txs[0].commits) == ids
    batch_reveals = [tx for tx in sent if tx.function == "revealBatch"]
    assert len(batch_reveals) == 1, "ONE revealBatch for the root"
    reveal = batch_reveals[0]
    withheld = sorted(rid for rid, _ in reveal.withheld)
    shown = sorted(rid for rid, _ in reveal.reveals)
    assert sorted(withheld + shown) == ids
    assert withheld and shown, f"auditBps 5000 over 16 entries drew {len(withheld)}: rerun (p = 2^-15)"
    # The root on chain is the one the calldata rebuilds: ResultCommitted carries it for every id.
    receipt = await w3.eth.get_transaction_receipt(commit_txs[0].hash)  # type: ignore[arg-type]
    committed = [e for e in decode_logs(receipt["logs"]) if isinstance(e, ResultCommitted)]
    root = commit_txs[0].commits[0][1]
    assert {e.id for e in committed} == set(ids) and {e.commitment for e in committed} == {root}
    journal = daemons[0].journal
    digests = {i: journal.get(i).output_digest or b"" for i in ids}  # type: ignore[union-attr]
    assert root == batch_root(ids, [commitment(digests[i], assignee, i) for i in ids])
    receipt = await w3.eth.get_transaction_receipt(reveal.hash)  # type: ignore[arg-type]
    events = decode_logs(receipt["logs"])
    assert sorted(e.id for e in events if isinstance(e, ResultRevealed)) == shown
    rebuilt = [e for e in events if isinstance(e, BatchRevealed)]
    assert len(rebuilt) == 1 and rebuilt[0].miner == assignee and rebuilt[0].root == root
    assert batch_root(rebuilt[0].ids, rebuilt[0].leaves) == root  # a prover rebuilds it from one log
    for rid, leaf in reveal.withheld:  # the leaf, never the digest, before the auditor committed
        assert leaf == commitment(digests[rid], assignee, rid)
    # Each withheld entry: openAudit, audited by the second daemon, revealed by a single reveal.
    opened = [e for e in decode_logs(await w3.eth.get_logs({"address": owner.address, "fromBlock": first}))
              if isinstance(e, AuditOpened)]  # fmt: skip
    assert sorted(e.id for e in opened) == withheld and {e.auditor for e in opened} == {daemons[1].address}
    assert sum(tx.function == "openAudit" for tx in sent) == len(withheld), "one openAudit per drawn entry"
    assert commits_per_request(sent) == dict.fromkeys(ids, 1)
    assert reveals_per_request(sent) == dict.fromkeys(ids, 1), "each result revealed once"
    later = [tx for tx in sent if tx.reveals and tx.function in ("reveal", "revealMany")]
    assert sorted(rid for tx in later for rid, _ in tx.reveals) == withheld
    assert all(tx.block > reveal.block for tx in later)
    for rid in ids:
        info = await owner.get_request(rid)
        assert info.phase == Phase.FINAL
        assert (RequestFlag.AUDITED in info.flags) == (rid in withheld), rid
        if rid in withheld:
            assert info.digests[0] == info.digests[1] == digests[rid]  # audited: the auditor agreed
    others = {tx.function for tx in sent} - {
        "commitBatch",
        "revealBatch",
        "openAudit",
        "reveal",
        "revealMany",
    }
    assert not others, f"unexpected transactions from the assignee: {others}"
    print(
        f"\nroot: 16 results, 1 commitBatch ({commit_txs[0].hash[:10]}), 1 revealBatch with {len(withheld)} "
        f"withheld, {len(later)} single reveal tx(s) after audit, {len(sent)} txs in all"
    )


class KillOnBroadcast:
    """A JSON-RPC relay (raw TCP, 127.0.0.1) in front of anvil that, the first time a request
    carrying `marker` (the commitBatch selector inside an eth_sendRawTransaction) goes through, lets
    anvil answer it (automine: the transaction is mined) and calls `kill` instead of relaying the
    answer: the miner dies after its broadcast and before it learns anything of it."""

    def __init__(self, target_port: int, marker: bytes, kill: Callable[[], None]) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.marker = marker
        self.kill = kill
        self.fired = False
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        hit = asyncio.Event()

        async def upstream() -> None:
            seen = b""
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    seen = (seen + data)[-(1 << 20) :]
                    if not self.fired and b"eth_sendRawTransaction" in seen and self.marker in seen.lower():
                        self.fired = True
                        hit.set()
                    up_w.write(data)
                    await up_w.drain()
            up_w.close()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await up_r.read(65536):
                    if hit.is_set():  # anvil answered the broadcast: it is mined. Power cut.
                        self.kill()
                        break
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(upstream(), downstream())


async def test_sigkill_after_commit_batch_broadcast(
    anvil: Anvil, mosquitto: Mosquitto, anvil_keys: list[str], data_dir: Path
) -> None:
    miner_key, requester_key = anvil_keys[9], anvil_keys[2]
    miner_addr = Account.from_key(miner_key).address
    w3_probe = HubClient.web3(anvil.rpc_url)
    start_block = int(await w3_probe.eth.block_number) + 1
    start_nonce = int(await w3_probe.eth.get_transaction_count(miner_addr, "latest"))
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [miner_key], timeout_blocks=60)
    owner, w3 = hub.owner, hub.owner.w3
    store = LocalStore(data_dir / "blocks")
    requester = HubClient(w3, owner.address, requester_key)
    log_path = data_dir / "miner.log"
    proc: subprocess.Popen[bytes] | None = None

    killed = asyncio.Event()

    def kill() -> None:
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        killed.set()

    selector = keccak(text="commitBatch(uint256[],bytes32)")[:4].hex().encode()
    relay = KillOnBroadcast(anvil.port, selector, kill)
    await relay.start()
    env = {
        **os.environ,
        "INFERD_DATA_DIR": str(data_dir),
        "INFERD_LOG_FORMAT": "json",
        "INFERD_CHAIN__HUB_ADDRESS": owner.address,
        "INFERD_CHAIN__PRIVATE_KEY": miner_key,
        "INFERD_CHAIN__POLL_INTERVAL_S": "0.2",
        "INFERD_STREAM__BROKER_URL": mosquitto.url,
        "INFERD_MINER__METRICS_PORT": "0",
        "INFERD_MINER__BATCH_WAIT_S": "2.0",
    }
    env.pop("INFERD_CONFIG", None)

    def spawn(rpc_url: str) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "node.miner", "run", "--fake-engine"],
                env={**env, "INFERD_CHAIN__RPC_URL": rpc_url}, stdout=log, stderr=subprocess.STDOUT,
                cwd=REPO_ROOT, start_new_session=True,
            )  # fmt: skip

    async def start(rpc_url: str, starts: int) -> subprocess.Popen[bytes]:
        p = spawn(rpc_url)
        async with asyncio.timeout(120):
            while log_path.read_text(errors="replace").count('"miner_started"') < starts:
                assert p.poll() is None, log_path.read_text(errors="replace")[-3000:]
                await asyncio.sleep(0.2)
        return p

    try:
        proc = await start(relay.url, 1)
        ids = await request_many(requester, hub.model, store, 8, tag=1000)
        async with asyncio.timeout(60):
            await killed.wait()  # by the relay, on the miner's commitBatch broadcast
        assert relay.fired and proc.wait(10) == -signal.SIGKILL
        infos = [await owner.get_request(i) for i in ids]
        assert any(i.committed for i in infos), "the broadcast commitBatch was mined before the kill"
        proc = await start(anvil.rpc_url, 2)
        async with asyncio.timeout(120):
            while not all(info.phase == Phase.FINAL for info in [await owner.get_request(i) for i in ids]):
                assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
                await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        await relay.close()
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    sent = await sent_by(w3, owner.contract, miner_addr, start_block)
    assert commits_per_request(sent) == dict.fromkeys(ids, 1), "each result committed by one broadcast"
    assert reveals_per_request(sent) == dict.fromkeys(ids, 1), "each result revealed by one broadcast"
    assert all(tx.ok for tx in sent), [tx for tx in sent if not tx.ok]
    assert {tx.function for tx in sent if tx.commits} == {"commitBatch"}
    assert {tx.function for tx in sent if tx.reveals} == {"revealBatch"}
    nonce = await w3.eth.get_transaction_count(miner_addr, "latest")
    assert [tx.nonce for tx in sent] == list(range(start_nonce, nonce)), "every nonce it used is a mined tx"
    assert await w3.eth.get_transaction_count(miner_addr, "pending") == nonce, "nothing left pending"
    db = sqlite3.connect(data_dir / "journal.sqlite")
    states = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    db.close()
    assert states == {"finalized": len(ids)}, states
    print(f"\ncrash after commitBatch broadcast: {len(sent)} txs, {len(ids)} requests, nonce {nonce}")
