"""Adversary bench for protocol v2: scripted attacks against honest seats on a real anvil.

Run: `.venv/bin/python tests/bench/adversary.py` (also from `make bench`). One anvil on loopback,
one hub, one model per attack. Honest seats make the v2 daemon's chain calls with the real miner
`Pipeline` and the fake engine (see adversary_sim.py for why they are scripted); attackers are
policies. Money is wei from wallet balances, stakes and credits, so gas counts. Per attack (last
line of stdout, one JSON object) the expected values per trial:

  attacker_profit_wei  the attackers' wealth change minus the compute their seats spent (priced at
                       the seat's fee share: a seat that skips the work gains its fee), per trial;
  honest_loss_wei      the honest parties' losses (slashed stake, fees withheld, gas nobody paid
                       back, a wrong or refunded answer), a party's gain never offsetting another's;
  trials, honest_loss_probability (share of trials in which some honest party lost).

`ADVERSARY_SCALE=k` multiplies the trials of `sybil_quorum` and `equivocate` by k (rare cases, such
as a coalition whose stake earlier offences already took, show up in longer runs); anvil's block
hashes, and so every draw, differ from run to run. `ADVERSARY_DEBUG=1` prints each trial an honest
party lost, with every transaction of it (sender, gas, price), and each escalation's claims.

The must-show is attacker_profit_wei <= 0 and honest_loss_wei <= 0; each line that is not says why
(a protocol finding), and a few findings the attacks surface are printed as `finding:` lines.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from node.log import configure_logging  # noqa: E402

configure_logging("warning")  # before the miner modules bind their loggers: refusals are expected here

from eth_utils.address import to_checksum_address  # noqa: E402

from node.chain.errors import ChainError, HubError  # noqa: E402
from node.chain.events import InferenceRequested  # noqa: E402
from node.chain.hub import HubClient, ModelInfo, Phase, RequestFlag, RequestInfo  # noqa: E402
from node.chain.signing import sign_result  # noqa: E402
from node.content.cid import digest_of  # noqa: E402
from node.content.documents import ChatInputDocument, ChatParams, UserMessage, to_canonical_bytes  # noqa: E402
from node.content.local import LocalStore  # noqa: E402
from node.devnet.processes import anvil_private_keys, anvil_process  # noqa: E402
from node.miner.daemon import DaemonConfig, MinerDaemon  # noqa: E402
from node.miner.journal import Journal  # noqa: E402
from node.miner.testing import FAKE_ENGINE_CLASS, FakeEngine  # noqa: E402
from tests.bench.adversary_sim import (  # noqa: E402
    Env,
    Outcome,
    Policy,
    Sim,
    account,
    garbage,
    honest_pipeline,
    ledger_from_chain,
)

CLASS = FAKE_ENGINE_CLASS  # the class the fake engine declares: real daemons refuse any other
MODEL = "bench-model"
# >= 3 x a seat's commit + reveal gas at the bench's gas price (about 1 gwei, up to 1.15 gwei in a fresh
# anvil's first blocks); a model with more seats scales it (seat_fee): a seat's pay is fee / r
BASE_FEE = 10**15
PER_TOKEN = 10**9
MIN_STAKE = 10**17
TIMEOUT = 50  # blocks; every transaction mines one (automine)
AUDIT_BPS = 1_000
AUDIT_SEED = 10  # maximum prices the owner puts in a fresh model's audit pool
SCALE = max(1, int(os.environ.get("ADVERSARY_SCALE", "1")))
KEYS = 90
VERBOSE = False
HELPER = ROOT / "contracts" / "out" / "GrindHelper.sol" / "GrindHelper.json"


class Bench:
    """Shared state: anvil env, the hub, the content store, model counter."""

    def __init__(self, env: Env, hub: HubClient, store: LocalStore, chain_id: int, tmp: Path) -> None:
        self.env, self.hub, self.store, self.chain_id, self.tmp = env, hub, store, chain_id, tmp
        self.models = 0
        self.findings: list[str] = []
        self.bounds: list[str] = []
        self.last_failures: list[str] = []

    async def model(
        self,
        r: int,
        audit_bps: int = AUDIT_BPS,
        min_stake: int = MIN_STAKE,
        base_fee: int = BASE_FEE,
        timeout_blocks: int = TIMEOUT,
    ) -> ModelInfo:
        self.models += 1
        # The owner seeds the audit pool with AUDIT_SEED maximum prices. r = 1: the first audits of
        # a fresh model pay their auditor in full (the pool then drifts up by p^2 * fee a request:
        # each fee adds p * fee, an audit, drawn with probability p, takes (1 - p) * fee). Any r: the
        # pool pays an overturning vote's winners baseFee each when the overturned seats' stake is
        # already gone (for r > 1 nothing else refills it)
        seed = AUDIT_SEED * (base_fee + PER_TOKEN * 65_536)
        mid, _ = await self.hub.register_model(
            f"bench-{self.models}", CLASS, min_stake, base_fee, PER_TOKEN, timeout_blocks, r, audit_bps,
            audit_seed=seed,
        )  # fmt: skip
        return await self.hub.get_model(mid)

    async def miners(self, model: ModelInfo, n: int, stake: int | None = None) -> list[HubClient]:
        out = self.env.take(self.hub, n)
        await asyncio.gather(
            *(m.register_miner(model.model_id, CLASS, stake or model.min_stake) for m in out)
        )
        return out

    async def run_daemons(
        self, sim: Sim, miners: list[HubClient], ids: list[int], limit_s: float = 120
    ) -> None:
        """Serve `ids` with real miner daemons (fake engine) for `miners` until every one is final or
        refunded, mining a block every 150 ms (windows end by height; UNAVAILABLE is committed 10 blocks
        before the deadline); their transactions go to the ledger from the chain."""
        first = int(await self.env.w3.eth.block_number) + 1
        await sim.assign(ids)  # the requester (its gateway) materialises its requests, as always
        config = DaemonConfig(
            chain_id=self.chain_id, poll_interval_s=0.1, batch_wait_s=0.1, sweep_interval_s=0.3,
            recheck_s=0.5, unavailable_margin_blocks=10,
        )  # fmt: skip
        daemons = []
        for c in miners:
            acct = c._require_account()
            hub = HubClient(HubClient.web3(self.env.rpc_url), self.hub.address, "0x" + bytes(acct.key).hex())
            journal = Journal(
                self.tmp / f"journal-{acct.address}.sqlite",
                scope=f"{self.chain_id}:{hub.address}:{acct.address}",
            )
            engine = FakeEngine(model_name=MODEL)
            daemons.append(
                MinerDaemon(
                    config=config, hub=hub, account=acct, engine=engine, store=self.store, journal=journal
                )
            )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(d.run(stop)) for d in daemons]
        infos: list[RequestInfo] = []
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    for t in tasks:
                        if t.done():
                            t.result()  # a daemon that died raises here
                    infos[:] = [await self.hub.get_request(i) for i in ids]
                    if all(i.phase in (Phase.FINAL, Phase.REFUNDED) for i in infos):
                        break
                    await self.env.rpc("anvil_mine", ["0x1"])
                    await asyncio.sleep(0.15)
        except TimeoutError:
            stuck = [(i.id, i.phase.name) for i in infos if i.phase not in (Phase.FINAL, Phase.REFUNDED)]
            raise RuntimeError(f"the daemons did not settle within {limit_s:.0f} s: {stuck}") from None
        finally:
            stop.set()
            try:
                async with asyncio.timeout(60):  # a daemon's shutdown is bounded: a hang is a finding
                    for t in tasks:
                        await t
            except TimeoutError:
                dump_tasks()
                raise RuntimeError("a miner daemon did not stop within 60 s of its stop signal") from None
        await ledger_from_chain(sim, [str(c.sender) for c in miners], first)

    def honest(self, c: HubClient) -> Policy:
        return Policy(c, honest_pipeline(c, self.store, self.chain_id, MODEL))

    async def sim(self, model: ModelInfo, policies: list[Policy], keeper: HubClient) -> Sim:
        await self.env.rpc("anvil_mine", ["0x1"])  # miners active before any seed block
        ref = self.honest(self.env.take(self.hub, 1)[0])
        s = Sim(self.env, self.hub, model, policies, keeper, reference=ref)
        self.last_failures = s.failures
        return s

    async def doc(self, text: str, max_tokens: int = 8) -> tuple[bytes, int]:
        """Upload a chat document; (input digest, declared max tokens)."""
        data = to_canonical_bytes(
            ChatInputDocument(
                model=MODEL,
                messages=[UserMessage(role="user", content=text)],
                params=ChatParams(max_tokens=max_tokens),
            )
        )
        await self.store.put(data)
        return digest_of(data), max_tokens


def addrs(*groups: Any) -> list[str]:
    out: list[str] = []
    for g in groups:
        for c in g if isinstance(g, list | tuple) else [g]:
            out.append(c.address if isinstance(c, Policy) else str(c.sender))
    return out


async def measured(
    b: Bench, sim: Sim, who: list[str], run: Callable[[], Awaitable[list[list[int]]]], attackers: list[str]
) -> Outcome:
    before = await b.env.wealth(b.hub, who)
    trials = await run()
    after = await b.env.wealth(b.hub, who)
    return await account(sim, before, after, attackers, trials)


# ------------------------------------------------------------------------------------------------
# Requester attacks
# ------------------------------------------------------------------------------------------------


async def poison_input(b: Bench) -> Outcome:
    """Inputs that make the engine (or the parser) refuse: every seat answers the same error document
    and is paid, so the requester only buys refusals."""
    m = await b.model(1)
    mc = await b.miners(m, 4)
    honest = [b.honest(c) for c in mc]
    attacker, keeper = b.env.take(b.hub, 2)
    sim = await b.sim(m, [], keeper)  # the honest seats are real daemons
    ok = await b.doc("fine", 64)
    poisons: list[tuple[bytes, int]] = [(ok[0], 8)]  # asks for 64 tokens, declares 8
    for raw in (b'{"v":1,"model":', b"[" * 5000 + b"]" * 5000, b'{"model":"x","messages":"no"}', b"\xff\xfe"):
        await b.store.put(raw)
        poisons.append((digest_of(raw), 16))

    async def run() -> list[list[int]]:
        ids = [(await sim.request(attacker, [p]))[0] for p in poisons * 2]
        await b.run_daemons(sim, mc, ids)
        return [[i] for i in ids]

    out = await measured(b, sim, addrs(honest, attacker, keeper), run, addrs(attacker))
    finals = [await b.hub.get_request(i) for i in sim.truth]
    paid = sum(1 for f in finals if f.phase == Phase.FINAL and f.output_digest == sim.truth[f.id])
    out.notes.append(
        f"real daemons: {paid}/{len(finals)} poisoned requests final with the honest error document"
    )
    return out


async def unfetchable_input(b: Bench) -> Outcome:
    """Inputs never published: seats reveal UNAVAILABLE, share the base fee; the rest is refunded."""
    m1, m3 = await b.model(1), await b.model(3, 0)
    c1, c3 = await b.miners(m1, 4), await b.miners(m3, 3)
    h1, h3 = [b.honest(c) for c in c1], [b.honest(c) for c in c3]
    attacker, keeper = b.env.take(b.hub, 2)
    s1, s3 = await b.sim(m1, [], keeper), await b.sim(m3, [], keeper)  # the honest seats are real daemons
    before = await b.env.wealth(b.hub, addrs(h1, h3, attacker, keeper))
    ids1 = [(await s1.request(attacker, [(garbage(k, "never-published"), 256)]))[0] for k in range(6)]
    await b.run_daemons(s1, c1, ids1)
    ids3 = [(await s3.request(attacker, [(garbage(k + 100, "never-published"), 256)]))[0] for k in range(3)]
    await b.run_daemons(s3, c3, ids3)
    after = await b.env.wealth(b.hub, addrs(h1, h3, attacker, keeper))
    o1 = await account(s1, before, after, [str(attacker.sender)], [[i] for i in ids1])
    o3 = await account(s3, before, after, [str(attacker.sender)], [[i] for i in ids3])
    n = o1.trials + o3.trials
    a = str(attacker.sender)
    out = Outcome(
        attacker_profit_wei=(after[a] - before[a]) // n,
        honest_loss_wei=(o1.honest_loss_wei * o1.trials + o3.honest_loss_wei * o3.trials) // n,
        trials=n,
        honest_loss_probability=(
            o1.honest_loss_probability * o1.trials + o3.honest_loss_probability * o3.trials
        )
        / n,
    )  # the two sims' ledger checks are per model; the combined balance check is below
    led = sum(s.ledger.account_total(a) for s in (s1, s3) for a in before)
    if led != sum(after.values()) - sum(before.values()):
        out.notes.append(f"ledger/balance mismatch: {led} vs {sum(after.values()) - sum(before.values())}")
    gas = max(s.ledger.gas_by_account[p.address] for s, pols in ((s1, h1), (s3, h3)) for p in pols)
    out.notes.append(
        f"real daemons; r=1 and r=3; most gas one honest seat spent over all its requests: {gas} wei"
    )
    return out


# ------------------------------------------------------------------------------------------------
# Assignment attacks
# ------------------------------------------------------------------------------------------------


async def seat_of(b: Bench, request_id: int) -> str:
    return (await b.hub.get_request(request_id)).seats[0]


async def pool_probe(
    b: Bench,
    m: ModelInfo,
    fresh: HubClient,
    idle: HubClient,
    trigger: Callable[[], Awaitable[Any]],
    read: Callable[[], Awaitable[str]],
) -> dict[str, str]:
    """The seat `trigger` (assign / timeout) draws after each pool change an attacker can make
    first: register a fresh miner (ineligible itself, but the pool grows), or exit an idle sybil
    (swap-and-pop moves the last miner into its slot). Every probe is reverted."""
    out: dict[str, str] = {}
    changes: dict[str, Callable[[], Awaitable[Any]]] = {
        "register": lambda: fresh.register_miner(m.model_id, CLASS, m.min_stake),
        "exit": lambda: idle.request_exit(),
    }
    for label, change in changes.items():
        snap = await b.env.rpc("evm_snapshot", [])
        await change()
        await trigger()
        out[label] = await read()
        await b.env.rpc("evm_revert", [snap])
    return out


class Silent(Policy):
    """Silent as an assignee (an auditor or committee seat it serves honestly)."""

    attacker = True

    async def answer(self, sim: Sim, info: RequestInfo, seat: int) -> bytes | None:
        return None if seat == 0 else await self.honest(sim, info.id)


async def expire_reroll(b: Bench) -> Outcome:
    """A silent assignee calls timeout at the block of its choice: the reassignment is the same in
    every block (evm_snapshot / evm_revert). Also probes a pool change before the timeout."""
    m = await b.model(1)
    silent_c, sybil_c, idle_c = await b.miners(m, 3)
    honest = [b.honest(c) for c in await b.miners(m, 4)]
    fresh = b.env.take(b.hub, 1)[0]  # an attacker key not yet registered
    silent = Silent(silent_c, honest_pipeline(silent_c, b.store, b.chain_id, MODEL))
    sybil, idle = b.honest(sybil_c), b.honest(idle_c)
    sybil.attacker = idle.attacker = True
    requester = b.env.take(b.hub, 1)[0]
    sim = await b.sim(m, [silent, sybil, idle, *honest], requester)
    probes: list[str] = []

    async def run() -> list[list[int]]:
        mine: list[int] = []
        for k in range(12):
            if len(mine) >= 3:
                break
            ids = await sim.request(requester, [await b.doc(f"reroll {k} {j}") for j in range(8)])
            await sim.assign(ids)
            for i in ids:
                if (await b.hub.get_request(i)).seats[0] == silent.address:
                    mine.append(i)
            others = [i for i in ids if i not in mine]
            await sim.settle(others)
        same, moved, steer = 0, 0, 0
        coalition = {silent.address, sybil.address, idle.address, str(fresh.sender)}
        for i in mine:
            info = await b.hub.get_request(i)
            head = await b.env.w3.eth.block_number
            await b.env.rpc("anvil_mine", [hex(max(1, info.mark - head + 1))])
            seen = set()
            for wait in (0, 1, 2, 3, 5, 8, 13):
                snap = await b.env.rpc("evm_snapshot", [])
                await b.env.rpc("anvil_mine", [hex(wait)]) if wait else None
                await silent_c.timeout(i)
                seen.add((await b.hub.get_request(i)).seats[0])
                await b.env.rpc("evm_revert", [snap])
            same += len(seen) == 1
            # the same timeout after a pool change the attacker can make (not a timing choice)
            base = next(iter(seen))
            variants = await pool_probe(
                b, m, fresh, idle_c, partial(silent_c.timeout, i), partial(seat_of, b, i)
            )
            moved += sum(v != base for v in variants.values())
            steer += base not in coalition and any(v in coalition for v in variants.values())
            probes.append("/".join(f"{k}:{'moved' if v != base else 'same'}" for k, v in variants.items()))

        b.findings.append(
            f"expire_reroll: reassignment identical across 7 timeout blocks for {same}/{len(mine)} requests; "
            f"a pool change made just before timeout (a fresh registration, or a sybil's requestExit) moved "
            f"the reassigned seat in {moved}/{2 * len(mine)} probes ({', '.join(probes)}); it turned an "
            f"honest "
            f"reassignee into an attacker's in {steer}/{len(mine)} requests (_pick runs over the active pool "
            f"as it is at timeout/assign time, so its length and order are the attacker's to set)"
        )
        sim.keeper = silent_c  # the attacker times out its own seat, at a block of its choosing
        await sim.settle(mine)
        return [[i] for i in mine]

    return await measured(
        b, sim, addrs([silent, sybil, idle], honest, requester), run, addrs([silent, sybil, idle])
    )


async def grind_assignment(b: Bench) -> Outcome:
    """A helper contract that reverts unless its own sybils are drawn: it never sees a seat at request
    time, so strict tries all revert and its accepted requests are drawn like anyone's."""
    if not HELPER.exists():  # built by `make contracts`; else build it now
        forge = ["node_modules/.bin/forge", "build", "--offline"]
        await asyncio.to_thread(
            subprocess.run, forge, cwd=ROOT / "contracts", check=True, capture_output=True
        )
    art = json.loads(HELPER.read_text())
    m = await b.model(1)
    syb = [b.honest(c) for c in await b.miners(m, 2)]
    for p in syb:
        p.attacker = True
    honest = [b.honest(c) for c in await b.miners(m, 4)]
    attacker = b.env.take(b.hub, 1)[0]
    factory = b.env.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]["object"])
    tx = await attacker.transact(cast(Any, factory.constructor(b.hub.address)))
    assert tx.receipt is not None and tx.receipt["contractAddress"] is not None
    helper_addr = to_checksum_address(tx.receipt["contractAddress"])
    helper = b.env.w3.eth.contract(address=helper_addr, abi=art["abi"])
    sim = await b.sim(m, [*syb, *honest], attacker)
    sybils = addrs(syb)
    strict_reverts = 0
    n = 60

    strict_gas = 0
    for k in range(8):
        digest, toks = await b.doc(f"grind strict {k}")
        fn = helper.functions.tryRequest(m.model_id, digest, toks, sybils, True)
        bal = int(await b.env.w3.eth.get_balance(attacker.sender))  # type: ignore[arg-type]
        try:
            await attacker.transact(fn, m.base_fee + PER_TOKEN * toks, gas=600_000)
        except ChainError:
            strict_reverts += 1
        strict_gas += bal - int(await b.env.w3.eth.get_balance(attacker.sender))  # type: ignore[arg-type]
        await b.env.rpc("anvil_mine", ["0x1"])

    async def run() -> list[list[int]]:
        ids: list[int] = []
        for k in range(n):
            if k and k % 10 == 0:
                await sim.settle(ids[-10:])
            digest, toks = await b.doc(f"grind {k}")
            fee = m.base_fee + PER_TOKEN * toks
            fn = helper.functions.tryRequest(m.model_id, digest, toks, sybils, False)
            res = await attacker.transact(fn, fee, extra_gas=800_000)
            rid = max(e.id for e in res.of(InferenceRequested))
            sim.ledger.gas_by_account[str(attacker.sender)] += res.fee_paid
            await sim.track(attacker, rid, digest, fee, res.fee_paid, res.block_number, toks)
            ids.append(rid)
        await sim.settle(ids[-10:])
        return [[i] for i in ids]

    who = [*addrs(syb, honest, attacker), helper_addr]
    out = await measured(b, sim, who, run, [*sybils, str(attacker.sender), helper_addr])
    drawn = 0
    for i in sim.truth:
        info = await b.hub.get_request(i)
        drawn += info.seats[0] in sybils
    share, expect = drawn / n, 2 / 6
    se = math.sqrt(expect * (1 - expect) / n)
    # who materialises the draw can first change the pool the draw runs over
    fresh, idle_c = b.env.take(b.hub, 1)[0], syb[1].client
    steer = moved = 0
    for k in range(6):
        digest, toks = await b.doc(f"grind probe {k}")
        r = await attacker.request_inference(m.model_id, digest, toks)
        snap = await b.env.rpc("evm_snapshot", [])
        await attacker.transact(attacker.contract.functions.assign(8), gas=1_500_000)
        base = await seat_of(b, r.id)
        await b.env.rpc("evm_revert", [snap])
        variants = await pool_probe(
            b,
            m,
            fresh,
            idle_c,
            partial(attacker.transact, attacker.contract.functions.assign(8), gas=1_500_000),
            partial(seat_of, b, r.id),
        )
        moved += sum(v != base for v in variants.values())
        steer += base not in sybils and any(v in sybils for v in variants.values())
        await attacker.transact(attacker.contract.functions.assign(8), gas=1_500_000)
    b.findings.append(
        f"grind_assignment: a pool change made in the block between a request and its assign() moved the "
        f"drawn seat in {moved}/12 probes and gave an honest miner's draw to a sybil in {steer}/6 requests "
        f"(the seed is fixed, the pool it indexes is not); fix: draw over the pool as of the seed block"
    )
    out.notes.append(
        f"strict tries reverted {strict_reverts}/8 for {strict_gas} wei of gas (seats visible in the "
        f"request tx: 0); sybils drawn "
        f"{drawn}/{n} = {share:.3f} vs their share 2/6 = {expect:.3f} (1 s.e. {se:.3f})"
    )
    return out


# ------------------------------------------------------------------------------------------------
# Seat attacks
# ------------------------------------------------------------------------------------------------


class Lazy(Policy):
    """r = 3 seat that skips the work: copies another seat's commitment, or commits garbage."""

    attacker = True

    def __init__(self, client: HubClient, copy: set[int]) -> None:
        super().__init__(client)
        self.copy = copy
        self.copy_rejected = 0

    async def answer(self, sim: Sim, info: RequestInfo, seat: int) -> bytes | None:
        if info.id not in self.copy:
            return garbage(info.id)
        others = [s for s in range(info.redundancy) if s != seat and info.committed >> s & 1]
        return garbage(info.id, "copy") if others else None  # wait until someone has committed

    def commitment(self, sim: Sim, info: RequestInfo, seat: int, digest: bytes) -> bytes:
        if info.id not in self.copy:
            return super().commitment(sim, info, seat, digest)
        other = next(s for s in range(info.redundancy) if s != seat and info.committed >> s & 1)
        return info.digests[other]  # the other seat's commitment, byte for byte

    def reveal_digest(self, sim: Sim, info: RequestInfo, seat: int) -> bytes | None:
        if info.id not in self.copy:
            return super().reveal_digest(sim, info, seat)
        shown = [info.digests[s] for s in range(info.redundancy) if info.revealed >> s & 1]
        if not shown:
            return None
        self.copy_rejected += 1  # about to fail: keccak(digest, lazy, id) is not the copied value
        return shown[0]


async def copy_digest(b: Bench) -> Outcome:
    m = await b.model(3, 0)
    lazy_c, *hc = await b.miners(m, 3)
    requester = b.env.take(b.hub, 1)[0]
    honest = [b.honest(c) for c in hc]
    lazy = Lazy(lazy_c, set())
    sim = await b.sim(m, [lazy, *honest], requester)

    async def run() -> list[list[int]]:
        ids = [(await sim.request(requester, [await b.doc(f"copy {k}")]))[0] for k in range(6)]
        lazy.copy.update(ids[::2])
        await sim.settle(ids)
        return [[i] for i in ids]

    out = await measured(b, sim, addrs(lazy, honest, requester), run, addrs(lazy))
    mism = sum("CommitmentMismatch" in f for f in sim.failures)
    out.notes.append(
        f"copied commitments: {len(lazy.copy)}, their reveals rejected (CommitmentMismatch): {mism}; "
        f"the other 3 committed garbage and were outvoted"
    )
    return out


class Sybil(Policy):
    """One coalition; cheats (same wrong digest) whenever it holds a majority of the seats."""

    attacker = True

    def __init__(self, client: HubClient, pipeline: Any, coalition: set[str]) -> None:
        super().__init__(client, pipeline)
        self.coalition = coalition

    def _cheats(self, info: RequestInfo) -> bool:
        return sum(s in self.coalition for s in info.assignees) >= info.redundancy // 2 + 1

    async def answer(self, sim: Sim, info: RequestInfo, seat: int) -> bytes | None:
        return garbage(info.id, "sybil") if self._cheats(info) else await self.honest(sim, info.id)

    def escalates(self, sim: Sim, info: RequestInfo, mine: bytes) -> bool:
        return False

    def vote(self, sim: Sim, info: RequestInfo, challenger_digest: bytes) -> bytes | None:
        return garbage(info.id, "sybil") if self._cheats(info) else sim.truth.get(info.id)


def capture_bound(na: int, nh: int, r: int) -> tuple[float, float, list[str]]:
    """P(an honest party loses) when a coalition of `na` of `na + nh` equal-stake miners cheats on
    every request where it holds a majority of the r seats, under the escalation rule: any seat that
    revealed a digest other than the provisional one may escalate (bond minStake); every active miner
    of the model not seated on the request votes; the challenger wins on strictly more votes. With k
    seats captured an honest seat dissents unless k = r, and the vote is lost only when the
    coalition's unseated miners (na - k) are at least the honest ones (nh - (r - k)). Returns (the
    bench's pool, exactly; a large pool with share s = na / (na + nh): s^r, the honest voters then
    outnumbering the coalition's; the terms)."""
    total = math.comb(na + nh, r)
    p = 0.0
    terms = []
    for k in range(r // 2 + 1, r + 1):
        pk = math.comb(na, k) * math.comb(nh, r - k) / total
        lost = k == r or nh - (r - k) <= na - k
        if pk:
            terms.append(f"P({k} of {r})={pk:.4f}x{int(lost)}")
        p += pk * lost
    return p, (na / (na + nh)) ** r, terms


SYBIL_R = 5  # the redundancy a 1/3 coalition needs for P(honest loss) <= 1% (see capture_bound)


def seat_fee(r: int) -> int:
    """The base fee of an r-seat model: each seat paid what an r = 3 seat is (BASE_FEE / 3). A seat
    can pay for its work alone: a commit of its own (82k gas) and the reveal that settles the request
    (154k at r = 5: the tally and r credits), about 2.6e14 wei at 1.1 gwei. At r = 5 BASE_FEE / 5 =
    2e14 did not cover that (the honest seats of the first requests, committed alone because the
    batch's later requests materialised them, lost ~5e13 each)."""
    return BASE_FEE * r // 3


async def sybil_quorum(b: Bench) -> Outcome:
    # every voter commits on every open escalation in one window
    m = await b.model(SYBIL_R, 0, base_fee=seat_fee(SYBIL_R), timeout_blocks=200)
    na, nh = 3, 6
    stake = 5 * m.min_stake  # every miner the same stake: the coalition holds 1/3 of it
    ac = await b.miners(m, na, stake)
    hc = await b.miners(m, nh, stake)
    coalition = set(addrs(ac))
    att = [Sybil(c, honest_pipeline(c, b.store, b.chain_id, MODEL), coalition) for c in ac]
    honest = [b.honest(c) for c in hc]
    requester = b.env.take(b.hub, 1)[0]
    sim = await b.sim(m, [*att, *honest], requester)
    n = 45 * SCALE

    async def run() -> list[list[int]]:
        ids: list[int] = []
        for k in range(0, n, 15):
            ids += await sim.request(requester, [await b.doc(f"quorum {k + j}") for j in range(15)])
        await sim.settle(ids)
        return [[i] for i in ids]

    out = await measured(b, sim, addrs(att, honest, requester), run, addrs(att))
    r = SYBIL_R
    held = {k: 0 for k in range(r + 1)}
    overturned = floored = unpaid = 0
    for i in sim.truth:
        info = await b.hub.get_request(i)
        k = sum(s in coalition for s in info.assignees)
        held[k] += 1
        overturned += r // 2 + 1 <= k < r and info.output_digest == sim.truth[i]
        if RequestFlag.ESCALATED in info.flags:
            e = await b.hub.get_escalation(i)
            floored += e.overturned and 0 < e.voter_share <= m.base_fee
            unpaid += e.overturned and e.voter_share == 0
    left = [(await b.hub.get_miner(a)).stake // m.min_stake for a in coalition]
    captured = sum(v for k, v in held.items() if k >= r // 2 + 1)
    b.findings.append(
        f"sybil_quorum: {floored} overturned escalations paid their voters from the model's audit pool "
        f"(up to baseFee each), {unpaid} paid nothing (pool empty), the others from the slash; the "
        f"coalition's stake: 5 x minStake each, now {left} (a miner's open seats are not bounded by its "
        f"stake, so later overturns can find it gone: the pool, refilled by earlier slashes, pays then)"
    )
    p, large, terms = capture_bound(na, nh, r)
    p3, large3, terms3 = capture_bound(na, nh, 3)
    out.notes.append(
        f"coalition seats per request {held}; majority captures overturned by the vote: "
        f"{overturned}/{captured}"
    )
    b.bounds.append(
        f"sybil_quorum: P(honest party loses) = P(all {r} seats captured) + P(majority captured and "
        f"coalition voters >= honest voters) = {' + '.join(terms) or '0'} = {p:.4f} for {na} of {na + nh} "
        f"miners, s^{r} = {large:.4f} for a large pool with s = 1/3. Rule: a seat that revealed another "
        f"digest than the provisional one escalates (bond minStake), every unseated active miner votes, "
        f"strictly more votes overturn. At r = 3 no seat dissents when all 3 are captured: "
        f"{p3:.4f} here ({' + '.join(terms3)}), s^3 = {large3:.4f} for a large pool: > 1%"
    )
    return out


class Cheater(Policy):
    """r = 1: commits a digest without running the input; reveals it (audit or not)."""

    attacker = True

    async def answer(self, sim: Sim, info: RequestInfo, seat: int) -> bytes | None:
        return garbage(info.id, "cheat") if seat == 0 else await self.honest(sim, info.id)


async def wrong_output_r1(b: Bench) -> Outcome:
    """A cheating r = 1 miner against the model's real audit draws, at the worst price the model
    allows (maxTokens = 65536 and minStake at the registration bound, margin 2)."""
    max_price = BASE_FEE + PER_TOKEN * 65_536
    bound = -(-2 * (10_000 - AUDIT_BPS) * max_price // AUDIT_BPS)
    m = await b.model(1, AUDIT_BPS, bound)
    cheat_c = (await b.miners(m, 1, 40 * m.min_stake))[0]  # stays active after a few fraud slashes
    honest = [b.honest(c) for c in await b.miners(m, 4)]
    cheater = Cheater(cheat_c, honest_pipeline(cheat_c, b.store, b.chain_id, MODEL))
    requester = b.env.take(b.hub, 1)[0]
    sim = await b.sim(m, [cheater, *honest], requester)
    total = 1024

    async def run() -> list[list[int]]:
        mine: list[int] = []
        for k in range(0, total, 64):
            ids = await sim.request(requester, [((await b.doc(f"r1 {k + j}"))[0], 65_536) for j in range(64)])
            await sim.assign(ids)
            # requests drawn to honest miners do not involve the cheater: left unsettled, for time
            batch = [i for i in ids if (await b.hub.get_request(i)).seats[0] == cheater.address]
            await sim.settle(batch)
            mine += batch
        return [[i] for i in mine]

    who = addrs(cheater, honest, requester)
    before = await b.env.wealth(b.hub, who)
    trials = await run()
    after = await b.env.wealth(b.hub, who)
    # the requester's loss is an expected value over the trials: a wrong answer in the 1 - p that go
    # unaudited, its fee back plus fee * (1 - p) / p of compensation in the p that are caught. The
    # audit draw is a coin of known bias p, so the two outcomes are weighted by p and 1 - p (the mean
    # net of the caught trials, and of the others): the count of catches in one run is sampling
    # noise worth fee / p a catch, which would swamp the p * fee expected gain
    caught = [
        (await b.hub.get_request(t[0])).output_digest == sim.truth[t[0]] for t in trials
    ]  # fmt: skip
    p = AUDIT_BPS / 10_000
    nc = sum(caught)
    weights = (
        [p / nc if c else (1 - p) / (len(trials) - nc) for c in caught] if 0 < nc < len(trials) else None
    )
    out = await account(sim, before, after, addrs(cheater), trials, pooled=addrs(requester), weights=weights)
    audited = 0
    for i in sim.truth:
        info = await b.hub.get_request(i)
        audited += (
            info.phase == Phase.FINAL
            and info.seats[0] == cheater.address
            and info.output_digest == sim.truth[i]
        )
    fee = max_price
    expect = (1 - p) * (fee - fee * p) - p * m.min_stake
    req = (1 - p) * -fee + p * (fee + fee * (1 - p) / p)
    out.notes.append(
        f"requester per request: (1-p)*(-fee) + p*(fee + fee*(1-p)/p) = p*fee = {int(req)} wei >= 0 "
        f"(the compensation is paid in full while p*minStake >= fee*((1-p) + p*(1 + 3*(1-p))): the "
        f"committee's pay and the refund come first from the fraud slash; registerModel's "
        f"p*minStake >= 2*(1-p)*maxPrice implies it for p <= 0.22)"
    )
    out.notes.append(
        f"cheated {out.trials} requests, caught {audited} (p = {p}); analytic E[profit] per cheat before gas "
        f"= (1-p)*work - p*minStake = {int(expect)} wei; minStake {m.min_stake} = bound, fee {fee}"
    )
    return out


class Equivocator(Policy):
    """Commits and reveals the honest digest but hands out a signature over another one."""

    attacker = True

    async def answer(self, sim: Sim, info: RequestInfo, seat: int) -> bytes | None:
        d = await self.honest(sim, info.id)
        key = "0x" + bytes(self.client._require_account().key).hex()
        fake = garbage(info.id, "promised")
        assert self.pipeline is not None
        sig = sign_result(key, chain_id=self.pipeline.chain_id, hub=self.client.address, request_id=info.id,
                          input_digest=info.input_digest, output_digest=fake)  # fmt: skip
        self.signatures[info.id] = (fake, sig)
        return d


async def equivocate(b: Bench) -> Outcome:
    m = await b.model(1)
    eq_c = (await b.miners(m, 1, 5 * m.min_stake))[0]
    honest = [b.honest(c) for c in await b.miners(m, 3)]
    eq = Equivocator(eq_c, honest_pipeline(eq_c, b.store, b.chain_id, MODEL))
    requester, prover = b.env.take(b.hub, 2)
    sim = await b.sim(m, [eq, *honest], requester)
    innocent_refused = 0

    async def run() -> list[list[int]]:
        nonlocal innocent_refused
        ids: list[int] = []
        for k in range(0, 16 * SCALE, 16):
            ids += await sim.request(requester, [await b.doc(f"equivocate {k + j}") for j in range(16)])
        await sim.settle(ids)
        mine = [i for i in ids if (await b.hub.get_request(i)).seats[0] == eq.address]
        for i in mine:
            fake, sig = eq.signatures[i]
            await sim.send(
                prover, "proveEquivocation", [i], prover.prove_equivocation(i, eq.address, fake, sig)
            )
        for i in ids:  # an honest seat's own signature proves nothing
            info = await b.hub.get_request(i)
            pol = next((p for p in honest if p.address == info.seats[0]), None)
            if pol is not None and i in pol.signatures:
                d, sig = pol.signatures[i]
                try:
                    await prover.prove_equivocation(i, pol.address, d, sig)
                except HubError as exc:
                    innocent_refused += "NoEquivocation" in str(exc)
        return [[i] for i in mine]

    out = await measured(b, sim, addrs(eq, honest, requester, prover), run, addrs(eq))
    out.notes.append(
        f"proofs against honest seats' own signatures refused (NoEquivocation): {innocent_refused}"
    )
    return out


class Withholder(Policy):
    """Commits as an assignee and never reveals (an auditor or committee seat it serves honestly)."""

    attacker = True

    def _assignee(self, info: RequestInfo, seat: int) -> bool:
        return seat < info.redundancy

    async def answer(self, sim: Sim, info: RequestInfo, seat: int) -> bytes | None:
        return garbage(info.id, "withheld") if self._assignee(info, seat) else await self.honest(sim, info.id)

    def reveals(self, sim: Sim, info: RequestInfo, seat: int) -> bool:
        return not self._assignee(info, seat)


async def withhold_reveal(b: Bench) -> Outcome:
    m1, m3 = await b.model(1), await b.model(3, 0)
    wc = (await b.miners(m1, 1, 10 * m1.min_stake))[0]
    w1 = Withholder(wc, honest_pipeline(wc, b.store, b.chain_id, MODEL))
    h1 = [b.honest(c) for c in await b.miners(m1, 3)]
    w3 = Withholder((await b.miners(m3, 1, 10 * m3.min_stake))[0])
    h3 = [b.honest(c) for c in await b.miners(m3, 2)]
    requester = b.env.take(b.hub, 1)[0]
    s1, s3 = await b.sim(m1, [w1, *h1], requester), await b.sim(m3, [w3, *h3], requester)
    who = addrs(w1, h1, w3, h3, requester)
    before = await b.env.wealth(b.hub, who)
    ids1 = await s1.request(requester, [await b.doc(f"withhold {k}") for k in range(12)])
    ids3 = [(await s3.request(requester, [await b.doc(f"withhold3 {k}")]))[0] for k in range(3)]
    await s1.settle(ids1)
    await s3.settle(ids3)
    after = await b.env.wealth(b.hub, who)
    mine1 = [i for i in ids1 if w1.address in (await b.hub.get_request(i)).seats[:1] or
             (await b.hub.get_request(i)).reassigned]  # fmt: skip
    o1 = await account(s1, before, after, addrs(w1), [[i] for i in mine1])
    o3 = await account(s3, before, after, addrs(w3), [[i] for i in ids3])
    n = o1.trials + o3.trials
    out = Outcome(
        attacker_profit_wei=(o1.attacker_profit_wei * o1.trials + o3.attacker_profit_wei * o3.trials) // n,
        honest_loss_wei=(o1.honest_loss_wei * o1.trials + o3.honest_loss_wei * o3.trials) // n,
        trials=n,
        honest_loss_probability=(
            o1.honest_loss_probability * o1.trials + o3.honest_loss_probability * o3.trials
        )
        / n,
    )
    out.notes.append(
        f"r=1: {o1.trials} withheld (loss p {o1.honest_loss_probability:.2f}, "
        f"{o1.honest_loss_wei} wei/trial); "
        f"r=3: {o3.trials} withheld (loss p {o3.honest_loss_probability:.2f}, {o3.honest_loss_wei} wei/trial)"
    )
    return out


ATTACKS: dict[str, Callable[[Bench], Awaitable[Outcome]]] = {
    "poison_input": poison_input,
    "unfetchable_input": unfetchable_input,
    "expire_reroll": expire_reroll,
    "grind_assignment": grind_assignment,
    "copy_digest": copy_digest,
    "sybil_quorum": sybil_quorum,
    "wrong_output_r1": wrong_output_r1,
    "equivocate": equivocate,
    "withhold_reveal": withhold_reveal,
}


def dump_tasks() -> None:
    """Every asyncio task's stack, on stderr: what a hang is waiting for (also on SIGUSR1)."""
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


async def run_all(rpc_url: str, keys: list[str], store: LocalStore, only: list[str]) -> dict[str, Outcome]:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    env = Env(rpc_url, keys)
    hub = await env.deploy()
    chain_id = int(await env.w3.eth.chain_id)
    b = Bench(env, hub, store, chain_id, store.root.parent)
    results: dict[str, Outcome] = {}
    for name, attack in ATTACKS.items():
        if only and name not in only:
            continue
        t0 = time.monotonic()
        out = await attack(b)
        results[name] = out
        flag = "" if out.attacker_profit_wei <= 0 and out.honest_loss_wei <= 0 else "  <-- NOT <= 0"
        took = time.monotonic() - t0
        print(
            f"{name:18s} profit {out.attacker_profit_wei:>22,} loss {out.honest_loss_wei:>20,} trials "
            f"{out.trials:4d} p_loss {out.honest_loss_probability:.3f} ({took:.0f}s){flag}"
        )
        for note in out.notes:
            print(f"    {note}")
        if VERBOSE:
            for f in b.last_failures:
                print(f"    failed: {f}")
    for f in b.findings:
        print(f"finding: {f}")
    for f in b.bounds:
        print(f"bound: {f}")
    return results


def main() -> int:
    global VERBOSE
    VERBOSE = "-v" in sys.argv
    only = [a for a in sys.argv[1:] if a != "-v"]
    with tempfile.TemporaryDirectory(prefix="inferd-adversary-") as tmp:
        node = anvil_process(Path(tmp), accounts=KEYS)
        node.start()
        try:
            results = asyncio.run(
                run_all(node.rpc_url, anvil_private_keys(KEYS), LocalStore(Path(tmp) / "content"), only)
            )
        finally:
            node.stop()
    print(json.dumps({"attacks": {k: v.json() for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
