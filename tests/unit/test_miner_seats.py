"""Several miner daemons on one real anvil (fake engine): the protocol v2 seats end to end.

- every result audited (auditBps 10000): the assignee's daemon opens the audit instead of revealing,
  the auditor's daemon runs the same input (from `AuditOpened`), commits, and both reveal after
  `RevealOpened`; every request ends final and audited, with the honest digest;
- one lying miner among five: wherever it sits (assignee, auditor or committee member) the
  committee's daemons (from `CommitteeOpened`) outvote it, the provisional outcome's escalation
  window passes, and the honest daemons' sweeper calls `timeout` to finalize what they are owed;
- r = 3: three daemons commit, reveal when the window opens, and agree;
- an escalation: two daemons without a seat re-execute the input, vote (commit, reveal), overturn a
  wrong majority and claim their share;
- an honest seat's daemon outvoted by two (scripted) lying seats escalates on its own, three voter
  daemons overturn the outcome, the liars lose minStake and the honest seat gets its bond back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account

from node.chain.events import (
    Credited,
    CreditReason,
    EscalationOpened,
    InferenceResolved,
    LogRef,
    Slashed,
    SlashReason,
    decode_logs,
)
from node.chain.hub import UNAVAILABLE, HubClient, Phase, RequestFlag, RequestInfo
from node.content.documents import (
    ChatInputDocument,
    ChatParams,
    InputDocument,
    UserMessage,
    to_canonical_bytes,
)
from node.content.local import LocalStore
from node.devnet.processes import Anvil
from node.miner.daemon import DaemonConfig, MinerDaemon, MinerStartError
from node.miner.hubview import HubView
from node.miner.journal import TERMINAL, EscalationState, JobState, Journal, Role
from node.miner.pipeline import Pipeline
from node.miner.testing import FakeEngine, deploy_dev_hub, dev_request

pytestmark = pytest.mark.timeout(240)


def chat_doc(i: int) -> bytes:
    doc = ChatInputDocument(
        model="fake-model",
        messages=[UserMessage(role="user", content=f"seat question {i}")],
        params=ChatParams(max_tokens=4, seed=i),
    )
    return to_canonical_bytes(doc)


@dataclass
class _JobIn:
    request_id: int
    input_digest: bytes
    created: int
    max_tokens: int | None


class LyingEngine(FakeEngine):
    """Answers with other words than every honest miner."""

    def _words(self, input_doc: InputDocument) -> list[str]:
        return ["lie"] * 4


def _daemon(
    anvil: Anvil, hub_address: str, key: str, store: LocalStore, path: Path, engine: FakeEngine
) -> MinerDaemon:
    account = Account.from_key(key)
    hub = HubClient(HubClient.web3(anvil.rpc_url), hub_address, key)
    config = DaemonConfig(
        chain_id=31337, poll_interval_s=0.1, batch_wait_s=0.1, sweep_interval_s=0.3, recheck_s=0.5,
        unavailable_margin_blocks=0,
    )  # fmt: skip
    journal = Journal(
        path / f"journal-{account.address}.sqlite", scope=f"31337:{hub.address}:{account.address}"
    )
    return MinerDaemon(config=config, hub=hub, account=account, engine=engine, store=store, journal=journal)


class Miners:
    def __init__(self, daemons: list[MinerDaemon]) -> None:
        self.daemons = daemons
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(d.run(self.stop)) for d in daemons]

    async def close(self) -> None:
        self.stop.set()
        for t in self.tasks:
            await t

    async def until_final(self, owner: HubClient, ids: list[int], timeout: float = 120) -> None:  # noqa: ASYNC109
        """Wait for every request to be final and every daemon's job on it settled, mining a block
        now and then (windows end by height)."""
        infos: list[RequestInfo] = []
        try:
            await self._until_final(owner, ids, timeout, infos)
        except TimeoutError:
            stuck = [(i.id, i.phase.name, i.flags, i.seats) for i in infos if i.phase != Phase.FINAL]
            jobs = [
                (d.address[:8], d.journal.get(i.id))
                for i in infos
                if i.phase != Phase.FINAL
                for d in self.daemons
            ]
            raise AssertionError(
                f"not final: {stuck}; jobs: {[(a, j.state, j.role) for a, j in jobs if j]}"
            ) from None

    async def _until_final(
        self,
        owner: HubClient,
        ids: list[int],
        limit_s: float,
        infos: list[RequestInfo],
    ) -> None:
        async with asyncio.timeout(limit_s):
            while True:
                for t in self.tasks:
                    assert not t.done(), t.exception() if not t.cancelled() else "cancelled"
                infos[:] = [await owner.get_request(i) for i in ids]
                jobs = [j for d in self.daemons for i in ids if (j := d.journal.get(i)) is not None]
                settled = all(j.state in TERMINAL for j in jobs)  # the daemons saw the outcome too
                if all(i.phase == Phase.FINAL for i in infos) and settled:
                    return
                await owner.mine(1)
                await asyncio.sleep(0.3)


@pytest.fixture()
async def store(data_dir: Path) -> AsyncIterator[LocalStore]:
    yield LocalStore(data_dir / "blocks")


async def test_every_result_audited(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path, store: LocalStore
) -> None:
    keys = anvil_keys[1:4]
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], keys, timeout_blocks=30, audit_bps=10_000)
    requester = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[8])
    miners = Miners([_daemon(anvil, hub.owner.address, k, store, data_dir, FakeEngine()) for k in keys])
    try:
        ids = []
        for i in range(3):
            data = chat_doc(i)
            await store.put(data)
            ids.append(await dev_request(requester, hub.model, data))
        await miners.until_final(hub.owner, ids)
    finally:
        await miners.close()
    roles: dict[str, int] = {}
    for rid in ids:
        info = await hub.owner.get_request(rid)
        assert RequestFlag.AUDITED in info.flags and RequestFlag.DISPUTED not in info.flags
        assert info.revealed == 0b11 and info.digests[0] == info.digests[1] == info.output_digest
        for d in miners.daemons:
            job = d.journal.get(rid)
            if job is not None:
                assert job.state == JobState.FINALIZED and job.output_digest == info.output_digest
                roles[job.role.value] = roles.get(job.role.value, 0) + 1
    assert roles == {"assignee": 3, "auditor": 3}


async def test_a_liar_is_outvoted_by_the_committee(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path, store: LocalStore
) -> None:
    keys = anvil_keys[1:6]
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], keys, timeout_blocks=20, audit_bps=10_000)
    requester = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[8])
    engines = [LyingEngine()] + [FakeEngine() for _ in keys[1:]]
    liar = Account.from_key(keys[0]).address
    miners = Miners(
        [_daemon(anvil, hub.owner.address, k, store, data_dir, e) for k, e in zip(keys, engines, strict=True)]
    )
    try:
        ids = []
        for i in range(6):
            data = chat_doc(100 + i)
            await store.put(data)
            ids.append(await dev_request(requester, hub.model, data))
        await miners.until_final(hub.owner, ids, timeout=180)
    finally:
        await miners.close()
    disputed = 0
    for rid in ids:
        info = await hub.owner.get_request(rid)
        honest = {j.output_digest for d in miners.daemons[1:] if (j := d.journal.get(rid)) is not None}
        assert honest == {info.output_digest}, "the outcome is what every honest seat computed"
        if liar in info.seats[:2]:  # assignee or auditor: the two disagreed, a committee decided
            assert RequestFlag.DISPUTED in info.flags and info.revealed_digest(liar) != info.output_digest
            disputed += 1
        for d in miners.daemons[1:]:
            job = d.journal.get(rid)
            assert job is None or job.state == JobState.FINALIZED
    logs = await hub.owner.w3.eth.get_logs({"address": hub.owner.address, "fromBlock": 0})
    fraud = {e.miner for e in decode_logs(logs) if isinstance(e, Slashed) and e.reason == SlashReason.FRAUD}
    assert fraud == ({liar} if disputed else set())
    print(f"\n{disputed} of {len(ids)} requests had the liar as assignee or auditor")


async def test_r3_three_daemons_agree(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path, store: LocalStore
) -> None:
    keys = anvil_keys[1:4]
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], keys, timeout_blocks=30, redundancy=3, audit_bps=0
    )
    requester = HubClient(hub.owner.w3, hub.owner.address, anvil_keys[8])
    miners = Miners([_daemon(anvil, hub.owner.address, k, store, data_dir, FakeEngine()) for k in keys])
    try:
        ids = []
        for i in range(3):
            data = chat_doc(200 + i)
            await store.put(data)
            ids.append(await dev_request(requester, hub.model, data))
        await miners.until_final(hub.owner, ids)
    finally:
        await miners.close()
    for rid in ids:
        info = await hub.owner.get_request(rid)
        assert info.revealed == 0b111 and len(set(info.digests)) == 1
        for d in miners.daemons:
            job = d.journal.get(rid)
            assert job is not None and job.state == JobState.FINALIZED


async def test_daemons_vote_on_an_escalation(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path, store: LocalStore
) -> None:
    """Two of three seats reveal a wrong digest; the honest seat escalates; two daemons that hold no
    seat re-execute the input, vote for the honest digest, overturn the outcome and claim their share."""
    seat_keys, voter_keys = anvil_keys[1:4], anvil_keys[4:6]
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], seat_keys, timeout_blocks=20, redundancy=3, audit_bps=0
    )
    owner = hub.owner
    requester = HubClient(owner.w3, owner.address, anvil_keys[8])
    data = chat_doc(300)
    await store.put(data)
    rid = await dev_request(requester, hub.model, data)
    voters = [HubClient(owner.w3, owner.address, k) for k in voter_keys]
    for v in voters:  # active after the request was drawn, before the escalation: voters, not seats
        await v.register_miner(hub.model, hub.engine_class, 10**18)
    # What an honest engine answers (the daemons' own pipeline, on the fake engine).
    requested = await HubView(owner).requested(rid)
    assert requested is not None
    created = int((await owner.w3.eth.get_block(requested.log.block_number))["timestamp"])
    job = _JobIn(rid, requested.input_digest, created, requested.max_tokens)
    pipe = Pipeline(
        engine=FakeEngine(), store=store, private_key=anvil_keys[7], chain_id=31337, hub=owner.address
    )
    good = (await pipe.produce(job)).output_digest
    bad = b"\xba" * 32
    seats = {str(c.sender): c for c in (HubClient(owner.w3, owner.address, k) for k in seat_keys)}
    info = await owner.get_request(rid)
    liars, honest = [seats[a] for a in info.seats[:2]], seats[info.seats[2]]
    for c in liars:
        await c.commit(rid, bad)
    await honest.commit(rid, good)
    for c in liars:
        await c.reveal(rid, bad)
    assert (await honest.reveal(rid, good)).of(InferenceResolved)[0].output_digest == bad
    miners = Miners([_daemon(anvil, owner.address, k, store, data_dir, FakeEngine()) for k in voter_keys])
    try:
        await asyncio.sleep(0.5)
        await honest.escalate(rid)
        await miners.until_final(owner, [rid], timeout=90)
        info = await owner.get_request(rid)
        assert info.output_digest == good, "the vote overturned the provisional outcome"
        async with asyncio.timeout(30):  # the voters claim once final
            for _ in iter(int, 1):
                jobs = [d.journal.get(rid) for d in miners.daemons]
                if all(j is not None and j.state == JobState.FINALIZED for j in jobs):
                    break
                await asyncio.sleep(0.2)
    finally:
        await miners.close()
    esc = await owner.get_escalation(rid)
    assert esc.overturned and esc.votes_against == 2 and esc.voter_share > 0
    logs = await owner.w3.eth.get_logs({"address": owner.address, "fromBlock": 0})
    events = decode_logs(logs)
    paid = {e.account for e in events if isinstance(e, Credited) and e.reason == CreditReason.VOTE}
    assert paid == {v.sender for v in voters}
    fraud = {e.miner for e in events if isinstance(e, Slashed) and e.reason == SlashReason.FRAUD}
    assert fraud == {c.sender for c in liars}


async def _until(check: Callable[[], Awaitable[bool]], what: str, limit_s: float = 30) -> None:
    """Poll `check()` (async, no blocks mined) until it is true."""
    try:
        async with asyncio.timeout(limit_s):
            while not await check():  # noqa: ASYNC110 - polling the chain (no event to wait on)
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_an_outvoted_honest_seat_escalates(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path, store: LocalStore
) -> None:
    """r = 3: two seats (scripted) reveal a lie, the third is an honest daemon. Outvoted, it escalates
    with a minStake bond before the window ends; three voter daemons overturn the outcome; the liars
    lose minStake, the honest seat gets its bond back and is not slashed."""
    seat_keys, voter_keys = anvil_keys[1:4], anvil_keys[4:7]
    min_stake = 10**18
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], seat_keys, timeout_blocks=10, redundancy=3, audit_bps=0,
        min_stake=min_stake,
    )  # fmt: skip
    owner = hub.owner
    requester = HubClient(owner.w3, owner.address, anvil_keys[8])
    data = chat_doc(400)
    await store.put(data)
    rid = await dev_request(requester, hub.model, data)
    for k in voter_keys:  # active after the request was drawn, before the escalation: voters, not seats
        await HubClient(owner.w3, owner.address, k).register_miner(hub.model, hub.engine_class, min_stake)
    by_address = {str(Account.from_key(k).address): k for k in seat_keys}
    clients = {a: (k, HubClient(owner.w3, owner.address, k)) for a, k in by_address.items()}
    info = await owner.get_request(rid)
    liars = [clients[a][1] for a in info.seats[:2]]
    honest_key, honest = clients[info.seats[2]]
    bad = b"\xba" * 32
    for c in liars:
        await c.commit(rid, bad)
    seat = _daemon(anvil, owner.address, honest_key, store, data_dir, FakeEngine())
    miners = Miners(
        [seat] + [_daemon(anvil, owner.address, k, store, data_dir, FakeEngine()) for k in voter_keys]
    )
    try:

        async def all_committed() -> bool:
            return (await owner.get_request(rid)).committed == 0b111

        await _until(all_committed, "the honest seat's commit")
        for c in liars:
            await c.reveal(rid, bad)

        async def escalated() -> bool:
            return (await owner.get_request(rid)).phase == Phase.VOTE

        await _until(escalated, "the honest seat's escalation")  # no block mined: inside the window
        await miners.until_final(owner, [rid], timeout=60)
    finally:
        await miners.close()
    info = await owner.get_request(rid)
    good = seat.journal.get(rid)
    assert good is not None and good.state == JobState.FINALIZED
    assert info.output_digest == good.output_digest != bad, "the vote overturned the provisional outcome"
    esc = await owner.get_escalation(rid)
    assert esc.challenger == honest.sender and esc.overturned and esc.votes_against == 3
    assert esc.bond == min_stake
    record = seat.journal.escalation(rid)
    assert record is not None and record.state == EscalationState.SENT and len(record.txs) == 1
    assert seat.metrics.escalations.labels("sent")._value.get() == 1
    events = decode_logs(await owner.w3.eth.get_logs({"address": owner.address, "fromBlock": 0}))
    assert [e.challenger for e in events if isinstance(e, EscalationOpened)] == [honest.sender]
    slashed = {(e.miner, e.amount, e.reason) for e in events if isinstance(e, Slashed) and e.id == rid}
    assert slashed == {(c.sender, min_stake, SlashReason.FRAUD) for c in liars}
    bond = [e.amount for e in events if isinstance(e, Credited) and e.reason == CreditReason.BOND]
    assert bond == [min_stake]
    credited = {e.account for e in events if isinstance(e, Credited) and e.id == rid}
    assert honest.sender in credited
    assert (await owner.get_miner(str(honest.sender))).stake == min_stake, "the honest seat keeps its stake"

    # A restart after signing (journaled `sending`): the chain says the escalation is ours, none is sent.
    seat.journal.mark_escalation(rid, EscalationState.SENDING, tx_hash="0x" + "ab" * 32)
    seat.disputes.resume()
    await asyncio.gather(*seat.disputes._tasks)
    record = seat.journal.escalation(rid)
    assert record is not None and record.state == EscalationState.SENT
    assert seat.metrics.escalations.labels("sent")._value.get() == 1


async def test_no_escalation_when_switched_off_or_unavailable(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path, store: LocalStore
) -> None:
    """`miner.escalate = false`, a voter job, or our own UNAVAILABLE: a lost outcome is left alone."""
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[1]])
    d = _daemon(anvil, hub.owner.address, anvil_keys[1], store, data_dir, FakeEngine())
    ref = LogRef(block_number=1, block_hash="0x00", tx_hash="0x00", log_index=0, address=hub.owner.address)
    resolved = InferenceResolved(id=1, output_digest=b"\x02" * 32, escalation_end=10, log=ref)
    for rid, role, digest, on in [
        (1, Role.ASSIGNEE, b"\x01" * 32, False),
        (2, Role.VOTER, b"\x01" * 32, True),
        (3, Role.ASSIGNEE, UNAVAILABLE, True),
        (4, Role.ASSIGNEE, b"\x02" * 32, True),  # we won
    ]:
        d.config.escalate = on
        d.journal.assign(
            rid, input_digest=b"\x03" * 32, deadline=9, block_number=1, block_hash="0x00", role=role
        )
        d.journal.mark_uploaded(rid, digest, "0xsig")
        ev = InferenceResolved(id=rid, output_digest=resolved.output_digest, escalation_end=10, log=ref)
        assert d.disputes.on_event(ev, d.journal.get(rid))
        assert not d.disputes._tasks and d.journal.escalation(rid) is None


async def test_start_refuses_another_engine_class_or_an_unregistered_key(
    anvil: Anvil, anvil_keys: list[str], data_dir: Path, store: LocalStore
) -> None:
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[1]], engine_class=b"\x01" * 32)
    other = _daemon(anvil, hub.owner.address, anvil_keys[1], store, data_dir, FakeEngine())
    with pytest.raises(MinerStartError, match="engine class") as err:
        await other.run(asyncio.Event())
    assert "0x" + "01" * 32 in str(err.value)
    stranger = _daemon(anvil, hub.owner.address, anvil_keys[2], store, data_dir, FakeEngine())
    with pytest.raises(MinerStartError, match="not registered"):
        await stranger.run(asyncio.Event())
