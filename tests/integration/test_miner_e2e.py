"""The miner on real anvil + mosquitto + local content store + the real CPU engine (SmolLM2).

What each test proves:
* e2e: 50 on-chain requests (protocol v2: assigned in a later block, committed, then revealed) all
  finalize; each was committed once and revealed once by the miner (its own transactions, decoded);
  every output document is fetchable by the CID derived from the on-chain digest, hashes to it, and
  carries an EIP-712 signature recovering to the miner; the MQTT result topic carries the same
  signed document.
* bad inputs: malformed JSON, an oversized document and a document asking for more tokens than its
  request declared on chain each get an error output document (`max_tokens_exceeds_declared` for the
  last), and the daemon keeps serving a good request afterwards; an unknown CID and a tampered block
  get no answer until the real bytes can be read (then a normal one); an input still unfetchable
  near its deadline is committed and revealed as UNAVAILABLE.
* reorg: an `anvil_reorg` back to the block of the latest requests, whose transactions are re-mined
  in one block with the miner's first, so its commits and reveals land before the requests they
  answer and revert: each reverted reveal (by tx hash) is sent again by a later transaction carrying
  the same request, no request is lost, and there is exactly one ResultRevealed per request.
* outages: the RPC (a TCP proxy in front of anvil) unreachable for 10 s and the broker stopped for
  10 s during a run; every request still finalizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from eth_account import Account
from eth_typing import HexStr

from node.chain.events import ResultRevealed, decode_logs
from node.chain.hub import UNAVAILABLE, HubClient, Phase
from node.chain.signing import recover_result_signer
from node.content.cid import cid_for_bytes, digest_of, digest_to_cid
from node.content.documents import (
    ChatInputDocument,
    ChatParams,
    CompletionInputDocument,
    CompletionParams,
    UserMessage,
    parse_input_document,
    parse_output_document,
    to_canonical_bytes,
)
from node.content.local import LocalStore
from node.devnet.processes import Anvil, Mosquitto, free_port
from node.miner.daemon import DaemonConfig, MinerDaemon, engine_class_id
from node.miner.journal import UNFINISHED, Journal
from node.miner.pipeline import MAX_TOKENS_EXCEEDS_DECLARED, declared_tokens
from node.miner.testing import DevHub, deploy_dev_hub
from node.stream.publisher import StreamPublisher
from tests.integration.chain_audit import commits_per_request, reveals_per_request, sent_by
from tests.waiting import until

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]
MODEL = "SmolLM2-135M-Instruct"


def chat_doc(i: int, max_tokens: int = 8) -> bytes:
    doc = ChatInputDocument(
        model=MODEL,
        messages=[UserMessage(role="user", content=f"Name a colour. ({i})")],
        params=ChatParams(max_tokens=max_tokens, temperature=0.0),
    )
    return to_canonical_bytes(doc)


def completion_doc(i: int, max_tokens: int = 8) -> bytes:
    doc = CompletionInputDocument(
        model=MODEL, prompt=f"Once upon a time, number {i},", params=CompletionParams(max_tokens=max_tokens)
    )
    return to_canonical_bytes(doc)


class PausableProxy:
    """A TCP proxy in front of anvil; `pause()` refuses and cuts connections (an RPC outage)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def pause(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._conns):
            w.close()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        self._conns.update({w, uw})
        try:
            await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        finally:
            self._conns.discard(w)
            self._conns.discard(uw)


@dataclass
class Net:
    anvil: Anvil
    mosquitto: Mosquitto
    hub: DevHub
    miner_key: str
    requester: HubClient
    store: LocalStore
    data_dir: Path
    daemon: MinerDaemon | None = None
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def request(self, data: bytes, *, store: bool = True, max_tokens: int | None = None) -> int:
        """Pay for `data` declaring its `declared_tokens` (as the gateway does), then assign it."""
        if store:
            await self.store.put(data)
        if max_tokens is None:
            try:
                max_tokens = declared_tokens(parse_input_document(data))
            except Exception:
                max_tokens = 16  # not a document: any declaration
        rid = (await self.requester.request_inference(self.hub.model, digest_of(data), max_tokens)).id
        await self.requester.assign(4)  # seats are drawn from the request block's hash, in a later block
        return rid

    def start(self, engine: Any, rpc_url: str | None = None, **cfg: Any) -> MinerDaemon:
        config = DaemonConfig(chain_id=31337, poll_interval_s=0.2, batch_wait_s=0.3, sweep_interval_s=0.5,
                              stuck_after_s=5.0, metrics_port=0, grace_s=10.0)  # fmt: skip
        for k, v in cfg.items():
            setattr(config, k, v)
        account = Account.from_key(self.miner_key)
        hub = HubClient(HubClient.web3(rpc_url or self.anvil.rpc_url, timeout=5), self.hub.owner.address,
                        self.miner_key)  # fmt: skip
        journal = Journal(self.data_dir / "journal.sqlite", scope=f"31337:{hub.address}:{account.address}")
        publisher = StreamPublisher(
            self.mosquitto.url, chain_id=31337, hub=hub.address, miner=str(account.address),
            heartbeat=dict, heartbeat_s=1.0,
        )  # fmt: skip
        self.daemon = MinerDaemon(config=config, hub=hub, account=account, engine=engine, store=self.store,
                                  journal=journal, publisher=publisher)  # fmt: skip
        publisher.heartbeat = self.daemon.heartbeat
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.daemon.run(self.stop))
        return self.daemon

    async def wait_final(self, ids: list[int], timeout: float) -> None:  # noqa: ASYNC109
        hub = self.hub.owner
        async with asyncio.timeout(timeout):
            while True:
                if self.task is not None and self.task.done():
                    self.task.result()
                    raise AssertionError("miner stopped early")
                infos = [await hub.get_request(i) for i in ids]
                if all(i.phase == Phase.FINAL for i in infos):
                    return
                await asyncio.sleep(0.5)

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task

    async def submissions(self) -> list[ResultRevealed]:
        logs = await self.hub.owner.w3.eth.get_logs({"address": self.hub.owner.address, "fromBlock": 0})
        return [e for e in decode_logs(logs) if isinstance(e, ResultRevealed)]  # type: ignore[arg-type]


@pytest.fixture()
async def net(
    anvil: Anvil, mosquitto: Mosquitto, anvil_keys: list[str], data_dir: Path, miner_engine: Any
) -> AsyncIterator[Net]:
    async with _net(anvil, mosquitto, anvil_keys, data_dir, miner_engine) as n:
        yield n


@pytest.fixture()
async def fresh_net(
    own_anvil: Anvil, mosquitto: Mosquitto, anvil_keys: list[str], data_dir: Path, miner_engine: Any
) -> AsyncIterator[Net]:
    """A Net on an anvil of its own: `anvil_reorg` on the session's long-lived anvil (over a thousand
    blocks in a full run) re-mined the reorged transactions on a state where the hub had no code (a
    reveal "succeeded" with 22,790 gas and no logs), which a fresh node does not do."""
    async with _net(own_anvil, mosquitto, anvil_keys, data_dir, miner_engine) as n:
        yield n


@contextlib.asynccontextmanager
async def _net(
    anvil: Anvil, mosquitto: Mosquitto, anvil_keys: list[str], data_dir: Path, miner_engine: Any
) -> AsyncIterator[Net]:
    ec = engine_class_id(miner_engine)
    assert ec is not None
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], [anvil_keys[3]], model_name=MODEL, timeout_blocks=200, engine_class=ec
    )
    requester = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[4])
    n = Net(anvil, mosquitto, hub, anvil_keys[3], requester, LocalStore(data_dir / "blocks"), data_dir)
    try:
        yield n
    finally:
        if n.task is not None and not n.task.done():
            await n.shutdown()


async def check_outputs(net: Net, ids: list[int]) -> None:
    hub = net.hub.owner
    assert net.daemon is not None
    for rid in ids:
        info = await hub.get_request(rid)
        assert info.phase == Phase.FINAL and info.output_digest is not None
        data = await net.store.get(digest_to_cid(info.output_digest))
        assert digest_of(data) == info.output_digest
        doc = parse_output_document(data)
        assert doc.request_id == rid
        job = net.daemon.journal.get(rid)
        assert job is not None and job.signature is not None and job.output_digest == info.output_digest
        signer = recover_result_signer(
            job.signature, chain_id=31337, hub=hub.address, request_id=rid,
            input_digest=info.input_digest, output_digest=info.output_digest,
        )  # fmt: skip
        assert signer == net.daemon.address


async def test_e2e_50_requests(net: Net, miner_engine: Any) -> None:
    results: dict[int, dict[str, Any]] = {}

    async def listen() -> None:
        async with aiomqtt.Client(net.mosquitto.host, net.mosquitto.port) as client:
            await client.subscribe(f"inferd/v1/31337/{net.hub.owner.address}/req/+/+/result", qos=1)
            async for msg in client.messages:
                rid = int(str(msg.topic).split("/")[-3])
                results[rid] = json.loads(bytes(msg.payload))  # type: ignore[arg-type]

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = int(await net.hub.owner.w3.eth.block_number)  # the shared anvil saw this key in other tests
    daemon = net.start(miner_engine)
    ids = [await net.request(chat_doc(i) if i % 2 else completion_doc(i)) for i in range(50)]
    await net.wait_final(ids, timeout=300)
    elapsed = loop.time() - started
    print(f"\ne2e: 50 requests finalized in {elapsed:.1f}s")
    await check_outputs(net, ids)
    subs = await net.submissions()
    assert sorted(s.id for s in subs) == ids
    sent = await sent_by(net.hub.owner.w3, net.hub.owner.contract, daemon.address, first)
    assert commits_per_request(sent) == dict.fromkeys(ids, 1), "one commit broadcast per request"
    assert reveals_per_request(sent) == dict.fromkeys(ids, 1), "one reveal broadcast per request"
    assert all(tx.ok for tx in sent)
    await asyncio.sleep(0.5)
    listener.cancel()
    with contextlib.suppress(BaseException):
        await listener
    assert len(results) >= 45  # QoS 1 results while connected (all, barring a reconnect)
    for rid, msg in results.items():
        assert msg["miner"] == daemon.address
        assert cid_for_bytes(msg["output"].encode()) == digest_to_cid(
            (await net.hub.owner.get_request(rid)).output_digest or b""
        )
    await net.shutdown()
    assert not [j for j in daemon.journal.jobs(UNFINISHED)]


async def test_bad_inputs_get_error_documents(net: Net, miner_engine: Any) -> None:
    net.start(miner_engine)
    store = net.store
    tampered = chat_doc(7)
    await store.put(tampered)
    path = store.path_for(cid_for_bytes(tampered))
    path.chmod(0o644)
    path.write_bytes(tampered.replace(b"colour", b"COLOUR"))
    big = b'{"v":1,"type":"completion","model":"m","prompt":"' + b"x" * (1 << 20) + b'"}'
    big_path = store.path_for(cid_for_bytes(big))
    big_path.parent.mkdir(parents=True, exist_ok=True)
    big_path.write_bytes(big)
    unfetchable = [await net.request(chat_doc(1000), store=False), await net.request(tampered, store=False)]
    ids = {
        "malformed": await net.request(b'{"v":1,"type":"chat",', store=True),
        "oversized": await net.request(big, store=False),
        "over_declared": await net.request(chat_doc(5, max_tokens=8), max_tokens=7),
    }
    await net.wait_final(list(ids.values()), timeout=120)
    good = await net.request(chat_doc(1))
    await net.wait_final([good], timeout=120)
    assert net.task is not None and not net.task.done()
    codes = {}
    for name, rid in ids.items():
        info = await net.hub.owner.get_request(rid)
        doc = parse_output_document(await store.get(digest_to_cid(info.output_digest or b"")))
        codes[name] = doc.error.code if doc.error else None
    assert codes == {
        "malformed": "invalid_request",
        "oversized": "input_too_large",
        "over_declared": MAX_TOKENS_EXCEEDS_DECLARED,
    }
    info = await net.hub.owner.get_request(good)
    assert parse_output_document(await store.get(digest_to_cid(info.output_digest or b""))).error is None
    # An input that cannot be fetched (unknown, or bytes not matching the CID) is never answered
    # with an error: it is retried, and answered once it can be read.
    for rid in unfetchable:
        info = await net.hub.owner.get_request(rid)
        assert info.phase == Phase.ASSIGNED and info.committed == 0
    await store.put(chat_doc(1000))
    await store.put(tampered)
    await net.wait_final(unfetchable, timeout=120)
    # Still unfetchable close to the commit deadline: UNAVAILABLE, committed and revealed (not silence).
    lost = await net.request(chat_doc(2000), store=False)
    info = await net.hub.owner.get_request(lost)
    assert info.phase == Phase.ASSIGNED
    await net.hub.owner.mine(info.mark - int(await net.hub.owner.w3.eth.block_number) - 2)
    await net.wait_final([lost], timeout=60)
    assert (await net.hub.owner.get_request(lost)).output_digest == UNAVAILABLE


async def _raw_txs(w3: Any, block: int) -> list[tuple[str, str]]:
    """(sender, raw tx) of every transaction in `block`, in block order."""
    b = await w3.eth.get_block(block, full_transactions=True)
    out = []
    for tx in b["transactions"]:
        raw = await w3.provider.make_request("eth_getRawTransactionByHash", ["0x" + bytes(tx["hash"]).hex()])
        out.append((str(tx["from"]), raw["result"]))
    return out


async def test_reorg_reverts_submissions_then_the_miner_resubmits(fresh_net: Net, miner_engine: Any) -> None:
    """The miner's submissions are reverted by a reorg, and it submits results for them again.

    Checked on the chain itself, not only through events: each of those transactions (by hash) was
    in a block and succeeded before the reorg, is reverted (or in no block) after it, and a later
    transaction from the miner (a higher nonce) carried a result for the same request id. The digest
    may differ: the request is re-mined in a new block, whose timestamp is the output's `created`;
    `check_outputs` proves the new digest is the right one.
    """
    net = fresh_net
    daemon = net.start(miner_engine, batch_wait_s=0.05)
    w3 = net.hub.owner.w3
    hub = net.hub.owner.contract
    ids = [await net.request(chat_doc(i, 4)) for i in range(3)]
    await net.wait_final(ids, timeout=120)
    fork_block = int(await w3.eth.block_number) + 1  # the next requests and their answers start here
    ids += [await net.request(chat_doc(i, 4)) for i in range(3, 6)]
    await net.wait_final(ids, timeout=120)
    # Reorg back to `fork_block` and re-mine its transactions in one block, the miner's first (each
    # sender keeps its nonce order, as a node re-injects them): the submissions now come before the
    # requests they answer, and revert.
    head = int(await w3.eth.block_number)
    before = [tx for tx in await sent_by(w3, hub, daemon.address, fork_block, head) if tx.results]
    assert sorted(rid for tx in before for rid, _ in tx.results) == ids[3:], before
    assert all(tx.ok for tx in before), "before the reorg, the miner's submissions succeeded"
    txs: list[tuple[str, str]] = []
    for n in range(fork_block, head + 1):
        txs += await _raw_txs(w3, n)
    ordered = [raw for sender, raw in txs if sender == daemon.address]
    ordered += [raw for sender, raw in txs if sender != daemon.address]
    pairs = [[raw, 0] for raw in ordered]
    reply = await w3.provider.make_request("anvil_reorg", [head - fork_block + 1, pairs])
    assert "error" not in reply, reply
    # Read at once (the miner may already be resubmitting), from the canonical blocks themselves: a
    # node may keep answering a receipt for a transaction the reorg dropped from every block.
    canonical: dict[str, int] = {}
    for n in range(fork_block, int(await w3.eth.block_number) + 1):
        for h in (await w3.eth.get_block(n))["transactions"]:
            canonical["0x" + bytes(h).hex()] = n  # type: ignore[arg-type]
    for tx in before:
        if tx.hash in canonical:
            receipt = await w3.eth.get_transaction_receipt(HexStr(tx.hash))
            assert receipt["status"] == 0, f"{tx.hash} still succeeds after the reorg: {receipt}"
    more = [await net.request(chat_doc(100 + i, 4)) for i in range(4)]
    await net.wait_final(ids + more, timeout=180)
    assert daemon.follower is not None and daemon.follower.stats.reorgs >= 1
    subs = await net.submissions()
    ours = sorted(s.id for s in subs if s.miner == daemon.address)
    assert ours == sorted(ids + more), "one ResultRevealed per request on the canonical chain"
    after = await sent_by(w3, hub, daemon.address)
    for tx in before:
        for rid, _ in tx.results:
            again = (later for later in after if later.ok and later.nonce > tx.nonce)
            assert any(rid in {r for r, _ in later.results} for later in again), (
                f"request {rid}: reverted by the reorg in {tx.hash} "
                f"({'status 0' if tx.hash in canonical else 'in no block'}) and never resubmitted"
            )
    ok_per_request = Counter(rid for tx in after if tx.ok for rid, _ in tx.results)
    assert all(ok_per_request[rid] == 1 for rid in ids + more), ok_per_request
    await check_outputs(net, ids + more)


async def test_rpc_and_broker_outages(net: Net, miner_engine: Any) -> None:
    proxy = PausableProxy(net.anvil.port)
    await proxy.start()
    net.start(miner_engine, rpc_url=proxy.url)
    ids = [await net.request(chat_doc(200 + i, 8)) for i in range(10)]
    await asyncio.sleep(1.0)
    await proxy.pause()  # the miner's RPC is gone for 10 s; requests keep arriving on chain
    ids += [await net.request(chat_doc(300 + i, 8)) for i in range(5)]
    await asyncio.sleep(10)
    await proxy.start()
    net.mosquitto.stop()  # then the broker for 10 s
    ids += [await net.request(chat_doc(400 + i, 8)) for i in range(5)]
    await asyncio.sleep(10)
    net.mosquitto.start()
    ids += [await net.request(chat_doc(500 + i, 8)) for i in range(5)]
    await net.wait_final(ids, timeout=240)
    await check_outputs(net, ids)
    assert net.daemon is not None and net.daemon.publisher is not None
    publisher = net.daemon.publisher

    def reconnected() -> bool:
        return publisher.stats.connects >= 2 and publisher.stats.connected

    # The publisher retries with a backoff of up to 5 s, so it may still be waiting when the last
    # answers are final (they go on chain without the broker): wait for the reconnect itself.
    await until(reconnected, "reconnected to the broker", timeout=30)
    await proxy.pause()
