"""The protocol-v2 driver behind `tests/bench/adversary.py`: seats that follow a policy, on a real anvil.

Why a driver and not the miner daemon: the adversary bench needs honest and dishonest seats side
by side on the same requests, and thousands of them within minutes. So every seat here makes the
chain calls the v2 daemon makes (`HubClient.commit_many`, `audit_drawn` then `reveal_many` or
`open_audit`, the auditor's and committee's commit/reveal, `escalate`, `commit_vote`/`reveal_vote`/
`claim_vote`, `timeout`), batched per miner per round, and an honest seat's answer comes from the
real miner `Pipeline` (fetch by CID from a `LocalStore`, parse, error document or the fake engine's
output, sign) so that poisoned and unfetchable inputs are answered exactly as the daemon would.
A `Policy` decides what a seat commits, reveals, escalates and votes; the default is honest.

Money is measured twice: `wealth()` (wallet + stake + credits, so gas counts) before and after,
and a per-request `Ledger` built from every receipt this driver sends (gas, fees and bonds paid,
`Credited` and `Slashed` events by request id), which splits the totals into trials.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError

from node.chain.errors import HubError, TxFailed, decode_revert
from node.chain.events import Credited, Slashed, decode_logs
from node.chain.hub import (
    UNAVAILABLE,
    HubClient,
    ModelInfo,
    Phase,
    RequestFlag,
    RequestInfo,
    TxResult,
    commitment,
)
from node.content.errors import InputUnavailable
from node.content.store import ContentStore
from node.miner.pipeline import Pipeline
from node.miner.testing import FakeEngine

ROUNDS = 400
GAS_MARGIN = 3.0
DEBUG = bool(os.environ.get("ADVERSARY_DEBUG"))  # print per-trial losses (with their txs) and escalations


@dataclass(frozen=True)
class Job:
    """What the miner `Pipeline` needs of an assignment (the daemon's journal job has the same)."""

    request_id: int
    input_digest: bytes
    created: int
    max_tokens: int | None


def garbage(request_id: int, tag: str = "garbage") -> bytes:
    """A wrong output digest, distinct per request."""
    return hashlib.sha256(f"{tag}:{request_id}".encode()).digest()


class Policy:
    """How one miner plays its seats. The base class is the honest daemon."""

    attacker = False

    def __init__(self, client: HubClient, pipeline: Pipeline | None = None) -> None:
        self.client = client
        self.address = str(client.sender)
        self.pipeline = pipeline
        self.compute_spent = 0  # wei of compute spent, priced at the seat's fee share
        self.signatures: dict[int, tuple[bytes, str]] = {}

    async def honest(self, sim: Sim, request_id: int) -> bytes:
        """The daemon's answer: the pipeline's output digest, or UNAVAILABLE when the input never came."""
        assert self.pipeline is not None, "an honest seat needs a pipeline"
        job = sim.jobs[request_id]
        try:
            produced = await self.pipeline.produce(job, give_up_at=0.0)
        except InputUnavailable:
            digest, signature = self.pipeline.unavailable_result(job)
            self.signatures[request_id] = (digest, signature)
            return digest
        self.signatures[request_id] = (produced.output_digest, produced.signature)
        self.compute_spent += sim.seat_cost(request_id)
        return produced.output_digest

    async def answer(self, sim: Sim, info: RequestInfo, seat: int) -> bytes | None:
        """The digest this seat commits (None: stay silent)."""
        return await self.honest(sim, info.id)

    def commitment(self, sim: Sim, info: RequestInfo, seat: int, digest: bytes) -> bytes:
        return self.client.commitment_for(info.id, digest)

    def reveals(self, sim: Sim, info: RequestInfo, seat: int) -> bool:
        return True

    def reveal_digest(self, sim: Sim, info: RequestInfo, seat: int) -> bytes | None:
        """The digest this seat reveals (None: not now); honest: the one it committed to."""
        return sim.committed.get((info.id, self.address))

    def escalates(self, sim: Sim, info: RequestInfo, mine: bytes) -> bool:
        """Escalate a provisional outcome our revealed digest lost: when ours is the honest answer."""
        return mine == sim.truth.get(info.id)

    def vote(self, sim: Sim, info: RequestInfo, challenger_digest: bytes) -> bytes | None:
        return sim.truth.get(info.id)


@dataclass
class Ledger:
    """Wei per (request id, account): + credits, - slashes, - gas, - value sent (fees, bonds)."""

    by_id: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    gas_by_account: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    txs: int = 0

    def record(
        self, sender: str, ids: Sequence[int], tx: TxResult, values: dict[int, int] | None = None
    ) -> None:
        self.txs += 1
        self.gas_by_account[sender] += tx.fee_paid
        if ids:
            share, rest = divmod(tx.fee_paid, len(ids))
            for k, i in enumerate(ids):
                self.by_id[i][sender] -= share + (rest if k == 0 else 0)
        for i, v in (values or {}).items():
            self.by_id[i][sender] -= v
        for ev in tx.events:
            if isinstance(ev, Credited):
                self.by_id[ev.id][ev.account] += ev.amount
            elif isinstance(ev, Slashed):
                self.by_id[ev.id][ev.miner] -= ev.amount

    def account_total(self, account: str) -> int:
        return sum(row.get(account, 0) for row in self.by_id.values())


class Env:
    """One anvil, funded keys handed out in order, and the hub deployed per attack."""

    def __init__(self, rpc_url: str, keys: list[str]) -> None:
        self.rpc_url = rpc_url
        self.keys = keys
        self._next = 0
        self.w3: AsyncWeb3[Any] = HubClient.web3(rpc_url)

    def take(self, hub: HubClient, n: int) -> list[HubClient]:
        if self._next + n > len(self.keys):
            raise RuntimeError(f"out of anvil keys: need {n} more than the {len(self.keys)} started")
        # margin 3: seats of one request reveal concurrently, and the estimate (on the pending block)
        # of the reveal that lands last leaves out the resolution it triggers (seen: 46k estimated,
        # 92k used by an audited reveal); a bench must not lose seats to that
        keys = self.keys[self._next : self._next + n]
        out = [HubClient(self.w3, hub.address, k, gas_margin=GAS_MARGIN) for k in keys]
        self._next += n
        return out

    async def deploy(self) -> HubClient:
        hub = await HubClient.deploy(self.w3, self.take_key())
        hub.gas_margin = GAS_MARGIN
        return hub

    def take_key(self) -> str:
        self._next += 1
        return self.keys[self._next - 1]

    async def wealth(self, hub: HubClient, addresses: Iterable[str]) -> dict[str, int]:
        """Wallet balance + stake + credits per address (a contract's credits count too)."""

        async def one(a: str) -> tuple[str, int]:
            bal = int(await self.w3.eth.get_balance(cast(Any, a)))
            m = await hub.get_miner(a)
            return a, bal + m.stake + m.credits

        return dict(await asyncio.gather(*(one(a) for a in addresses)))

    async def rpc(self, method: str, params: list[Any]) -> Any:
        resp = await self.w3.provider.make_request(cast(Any, method), params)
        if "error" in resp:
            raise RuntimeError(f"{method}: {resp['error']}")
        return resp["result"]


def honest_pipeline(client: HubClient, store: ContentStore, chain_id: int, model_name: str) -> Pipeline:
    key = "0x" + bytes(client._require_account().key).hex()
    return Pipeline(
        engine=FakeEngine(model_name=model_name), store=store, private_key=key, chain_id=chain_id,
        hub=client.address, first_fetch_s=0.0, fetch_retry_s=0.01,
    )  # fmt: skip


class Sim:
    """Requests of one model, settled by seats that follow their `Policy`."""

    def __init__(
        self,
        env: Env,
        hub: HubClient,
        model: ModelInfo,
        policies: Sequence[Policy],
        keeper: HubClient,
        *,
        reference: Policy,
    ) -> None:
        self.env = env
        self.hub = hub
        self.model = model
        self.policies = {p.address: p for p in policies}
        self.keeper = keeper  # who calls `timeout` (the gateway in production)
        self.reference = reference  # an honest pipeline: the truth of each request
        self.ledger = Ledger()
        self.jobs: dict[int, Job] = {}
        self.fees: dict[int, int] = {}
        self.requester_of: dict[int, HubClient] = {}
        self.request_cost: dict[int, int] = {}  # fee + the gas of the request and of its assign
        self.truth: dict[int, bytes] = {}
        self.committed: dict[tuple[int, str], bytes] = {}
        self.tried: set[tuple[str, int, str]] = set()
        self.votes: dict[int, dict[str, bytes]] = defaultdict(dict)
        self.failures: list[str] = []
        self.txlog: dict[int, list[str]] = defaultdict(list)  # DEBUG: what each request's txs cost whom
        self._chain_id = 0

    def seat_cost(self, request_id: int) -> int:
        """Compute a seat spends on a request, priced (worst case for the protocol) at its fee share."""
        return self.fees[request_id] // self.model.redundancy

    async def track(
        self,
        requester: HubClient,
        request_id: int,
        input_digest: bytes,
        fee: int,
        gas: int,
        block: int,
        max_tokens: int,
    ) -> None:
        """Follow a paid request: its job, fee, requester and honest answer (`truth`)."""
        ts = int((await self.env.w3.eth.get_block(block))["timestamp"])
        self.jobs[request_id] = Job(request_id, input_digest, ts, max_tokens)
        self.fees[request_id] = fee
        self.requester_of[request_id] = requester
        self.request_cost[request_id] = fee + gas
        self.ledger.by_id[request_id][str(requester.sender)] -= fee + gas
        self.truth[request_id] = await self.reference.honest(self, request_id)
        self.reference.compute_spent -= self.seat_cost(request_id)  # the reference is not a seat

    async def request(self, requester: HubClient, items: Sequence[tuple[bytes, int]]) -> list[int]:
        """Pay for requests `(input digest, max tokens)` in one transaction; returns their ids."""
        if len(items) == 1:
            res = [await requester.request_inference(self.model.model_id, items[0][0], items[0][1])]
        else:
            res = await requester.request_inferences(self.model.model_id, list(items))
        tx = res[0].tx
        self.ledger.record(str(requester.sender), [], TxResult(tx.tx_hash, tx.block_number, 0, 0, tx.events))
        self.ledger.gas_by_account[str(requester.sender)] += tx.fee_paid
        share, rest = divmod(tx.fee_paid, len(res))
        for k, ((digest, _), r) in enumerate(zip(items, res, strict=True)):
            gas = share + (rest if k == 0 else 0)
            await self.track(requester, r.id, digest, r.fee, gas, tx.block_number, r.max_tokens)
        return [r.id for r in res]

    async def assign(self, pending: Sequence[int]) -> None:
        """The requester (its gateway) materialises its own requests: part of what it pays to be served."""
        who = self.requester_of[pending[0]]
        n = min(len(pending), 64)  # explicit gas: HubClient.assign adds 400k per slot to a margined estimate
        fn = who.contract.functions.assign(n)
        tx = await self.send(who, "assign", pending, self.fast(who, fn, 200_000 + 150_000 * n))
        if tx is not None:
            share, rest = divmod(tx.fee_paid, len(pending))
            for k, i in enumerate(pending):
                self.request_cost[i] += share + (rest if k == 0 else 0)

    async def fast(self, who: HubClient, fn: Any, gas: int, value: int = 0) -> TxResult:
        """Send with a fixed gas limit and a locally tracked nonce: no estimate (an estimate on the
        pending block misses the resolution a concurrent seat's reveal makes this one trigger, and
        costs a round trip). The sender pays gasUsed x price whatever the limit. A mined revert is
        replayed on the state before it to name the error (`HubError`), its gas recorded first."""
        addr = str(who.sender)
        nonce = int(await self.env.w3.eth.get_transaction_count(cast(Any, addr), "pending"))
        if not self._chain_id:
            self._chain_id = int(await self.env.w3.eth.chain_id)
        params: Any = {
            "from": addr, "gas": min(gas, 25_000_000), "value": value, "nonce": nonce,
            "maxFeePerGas": 50 * 10**9, "maxPriorityFeePerGas": 10**9, "chainId": self._chain_id,
        }  # fmt: skip
        tx = await fn.build_transaction(params)
        tx_hash = await who.send_raw(who.sign(tx))
        receipt = await self.env.w3.eth.wait_for_transaction_receipt(cast(Any, tx_hash), poll_latency=0.01)
        own = [lg for lg in receipt["logs"] if lg["address"] == who.address]
        res = TxResult(tx_hash, int(receipt["blockNumber"]), int(receipt["gasUsed"]),
                       int(receipt["effectiveGasPrice"]), decode_logs(cast(Any, own)), receipt)  # fmt: skip
        if receipt["status"] != 1:
            call = {k: tx[k] for k in ("from", "to", "data", "value")}
            err: Exception = TxFailed(tx_hash, res.block_number)
            try:
                await self.env.w3.eth.call(cast(Any, call), block_identifier=res.block_number - 1)
            except ContractLogicError as exc:
                err = decode_revert(exc.data if isinstance(exc.data, str) else None)
            err.reverted = res  # type: ignore[attr-defined]
            raise err
        return res

    async def send(
        self,
        who: HubClient,
        what: str,
        ids: Sequence[int],
        call: Awaitable[TxResult],
        values: dict[int, int] | None = None,
    ) -> TxResult | None:
        try:
            tx = await call
        except (HubError, TxFailed) as exc:
            self.failures.append(f"{what} {list(ids)[:4]} by {str(who.sender)[:10]}: {exc}")
            reverted = getattr(exc, "reverted", None)
            if reverted is not None:  # mined and reverted: its gas is spent
                self.ledger.record(str(who.sender), ids, TxResult("", 0, reverted.fee_paid, 1, []))
                if DEBUG:
                    for i in ids:
                        self.txlog[i].append(
                            f"{what}x{len(ids)} by {str(who.sender)[:8]} REVERTED {reverted.fee_paid}"
                        )
            return None
        self.ledger.record(str(who.sender), ids, tx, values)
        if DEBUG:
            for i in ids:
                self.txlog[i].append(
                    f"{what}x{len(ids)} by {str(who.sender)[:8]} gas {tx.gas_used} "
                    f"price {tx.effective_gas_price} fee {tx.fee_paid} block {tx.block_number}"
                )
        return tx

    # ------------------------------------------------------------------------------------------
    # Settling
    # ------------------------------------------------------------------------------------------

    async def settle(
        self, ids: Iterable[int], *, on_round: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Drive every request to Final or Refunded; when nobody can act, mine to the next deadline."""
        live = set(ids)
        for _ in range(ROUNDS):
            if not live:
                return
            head = await self.env.w3.eth.block_number
            nb = head + 1  # the block our next transaction lands in (automine)
            infos = await asyncio.gather(*(self.hub.get_request(i) for i in sorted(live)))
            plan = _Plan()
            wakes: list[int] = []
            for info in infos:
                done = await self._plan(info, nb, plan, wakes)
                if done:
                    live.discard(info.id)
            if plan.empty():
                if not live:
                    return
                if not wakes:
                    raise RuntimeError(f"stuck: nothing to do for {sorted(live)[:8]}")
                await self.env.rpc("anvil_mine", [hex(max(1, min(wakes) - nb + 1))])
                continue
            await self._run(plan)
            if on_round is not None:
                await on_round()
        raise RuntimeError(f"not settled after {ROUNDS} rounds: {sorted(live)[:8]}")

    def _timeout_sender(self, info: RequestInfo) -> HubClient:
        """Who calls `timeout`: an honest seat that committed (it is paid once the request moves on),
        else the keeper (the requester's gateway)."""
        for seat, a in enumerate(info.seats):
            pol = self.policies.get(a)
            honest_seat = pol is not None and not pol.attacker and bool(info.committed >> seat & 1)
            right = not info.revealed >> seat & 1 or info.digests[seat] == self.truth.get(info.id)
            if pol is not None and honest_seat and right:
                return pol.client
        return self.keeper

    def _once(self, who: str, request_id: int, what: str) -> bool:
        key = (who, request_id, what)
        if key in self.tried:
            return False
        self.tried.add(key)
        return True

    async def _plan(self, info: RequestInfo, nb: int, plan: _Plan, wakes: list[int]) -> bool:
        ph, mark, t, i = info.phase, info.mark, self.model.timeout_blocks, info.id
        r = info.redundancy
        if ph == Phase.PENDING:
            plan.pending.append(i)
            return False
        if ph == Phase.REFUNDED:
            return True
        if ph == Phase.FINAL:
            return await self._claims(info, plan)
        if ph == Phase.ASSIGNED:
            if nb > mark:
                plan.timeout(i, self._timeout_sender(info))
                return False
            for seat in range(r):
                await self._commit(info, seat, plan)
            wakes.append(mark + 1)
            return False
        if ph == Phase.REVEAL and r == 1 and RequestFlag.AUDITED not in info.flags:
            a = info.seats[0]
            if nb <= mark:
                wakes.append(mark + 1)
                return False
            if nb > mark + t:
                plan.timeout(i, self._timeout_sender(info))
                return False
            pol = self.policies.get(a)
            d = pol.reveal_digest(self, info, 0) if pol is not None and pol.reveals(self, info, 0) else None
            if pol is not None and d is not None and self._once(a, i, f"reveal{mark}"):
                if await pol.client.audit_drawn(i):
                    plan.add(a, "open_audit", i, None)
                else:
                    plan.add(a, "reveal", i, d)
                return False
            wakes.append(mark + t + 1)
            return False
        if ph == Phase.VOTE:
            return await self._vote(info, nb, plan, wakes)
        # every other phase acts until `mark`, then times out
        if nb > mark:
            plan.timeout(i, self._timeout_sender(info))
            return False
        wakes.append(mark + 1)
        if ph in (Phase.AUDIT, Phase.COMMITTEE):
            for seat in range(1 if ph == Phase.AUDIT else 2, len(info.seats)):
                await self._commit(info, seat, plan)
        elif ph in (Phase.REVEAL, Phase.AUDIT_REVEAL, Phase.COMMITTEE_REVEAL):
            seats = (
                range(r)
                if ph == Phase.REVEAL
                else range(2)
                if ph == Phase.AUDIT_REVEAL
                else range(2, len(info.seats))
            )
            for seat in seats:
                a = info.seats[seat]
                pol = self.policies.get(a)
                if pol is None or not info.committed >> seat & 1 or info.revealed >> seat & 1:
                    continue
                d = pol.reveal_digest(self, info, seat) if pol.reveals(self, info, seat) else None
                if d is not None and self._once(a, i, f"reveal{ph}"):
                    plan.add(a, "reveal", i, d)
        elif ph == Phase.RESOLVED:
            win = info.output_digest
            for seat in range(2 if r == 1 else r):
                a = info.seats[seat]
                mine = info.digests[seat]
                pol = self.policies.get(a)
                if pol is None or not info.revealed >> seat & 1 or mine in (win, UNAVAILABLE):
                    continue
                if pol.escalates(self, info, mine) and self._once(a, i, "escalate"):
                    plan.add(a, "escalate", i, None)
                    break
        return False

    async def _commit(self, info: RequestInfo, seat: int, plan: _Plan) -> None:
        a = info.seats[seat]
        pol = self.policies.get(a)
        key = (a, info.id, f"commit{info.phase}")
        if pol is None or info.committed >> seat & 1 or key in self.tried:
            return
        digest = await pol.answer(self, info, seat)
        if digest is None:  # silent (or waiting for something): asked again next round
            return
        self.tried.add(key)
        self.committed[(info.id, a)] = digest
        plan.add(a, "commit", info.id, pol.commitment(self, info, seat, digest))

    async def _vote(self, info: RequestInfo, nb: int, plan: _Plan, wakes: list[int]) -> bool:
        i = info.id
        esc = await self.hub.get_escalation(i)
        base = esc.commit_end - self.model.timeout_blocks
        if nb <= esc.commit_end:
            for a, pol in self.policies.items():
                if a in info.seats or not self._once(a, i, "vote"):
                    continue
                m = await self.hub.get_miner(a)
                if not m.active or m.model_id != self.model.model_id or m.active_since >= base:
                    continue
                d = pol.vote(self, info, esc.challenger_digest)
                if d is not None:
                    plan.add(a, "commit_vote", i, d)
            wakes.append(esc.commit_end + 1)
        elif nb <= esc.reveal_end:
            for a, d in self.votes[i].items():
                if self._once(a, i, "reveal_vote"):
                    plan.add(a, "reveal_vote", i, d)
            wakes.append(esc.reveal_end + 1)
        else:
            plan.timeout(i, self._timeout_sender(info))
        return False

    async def _claims(self, info: RequestInfo, plan: _Plan) -> bool:
        if RequestFlag.ESCALATED not in info.flags:
            return True
        esc = await self.hub.get_escalation(info.id)
        if DEBUG:
            print(
                "    claims",
                info.id,
                esc,
                {a[:8]: d == info.output_digest for a, d in self.votes[info.id].items()},
            )
        left = False
        for a, d in self.votes[info.id].items():
            if d == info.output_digest and esc.voter_share and self._once(a, info.id, "claim"):
                plan.add(a, "claim_vote", info.id, None)
                left = True
        return not left

    async def _run(self, plan: _Plan) -> None:
        if plan.pending:
            await self.assign(plan.pending)

        async def seat(a: str, ops: dict[str, list[tuple[int, Any]]]) -> None:
            c = self.policies[a].client
            f = c.contract.functions
            for kind, items in ops.items():
                if kind in ("commit", "reveal"):
                    many, one, per = (
                        (f.commitMany, f.commit, 60_000)
                        if kind == "commit"
                        else (f.revealMany, f.reveal, 400_000)
                    )
                    for chunk in _chunks(items):
                        ids, vals = [i for i, _ in chunk], [v for _, v in chunk]
                        if len(chunk) > 1 and await self.send(
                            c, kind, ids, self.fast(c, many(ids, vals), 200_000 + per * len(ids))
                        ):
                            continue
                        for i, v in chunk:
                            await self.send(c, kind, [i], self.fast(c, one(i, v), 200_000 + per))
                    continue
                for i, v in items:
                    value = self.model.min_stake if kind == "escalate" else 0
                    fn, gas = _dispute_call(f, kind, i, v, a)
                    tx = await self.send(
                        c, kind, [i], self.fast(c, fn, gas, value), {i: value} if value else None
                    )
                    if kind == "commit_vote" and tx is not None:
                        self.votes[i][a] = v

        await asyncio.gather(*(seat(a, ops) for a, ops in plan.ops.items()))
        for i, who in plan.timeouts:
            await self.send(who, "timeout", [i], self.fast(who, who.contract.functions.timeout(i), 2_000_000))


async def ledger_from_chain(sim: Sim, senders: Iterable[str], first_block: int) -> None:
    """Add to `sim.ledger` every hub transaction `senders` mined since `first_block` (gas by the
    request ids in its calldata, `Credited` / `Slashed` by id): for seats run by real daemons."""
    who = set(senders)
    w3 = sim.env.w3
    for n in range(first_block, int(await w3.eth.block_number) + 1):
        block = await w3.eth.get_block(n, full_transactions=True)
        for tx in cast(Any, block["transactions"]):
            if tx["from"] not in who or tx["to"] != sim.hub.address:
                continue
            receipt = await w3.eth.get_transaction_receipt(tx["hash"])
            try:
                _, args = sim.hub.contract.decode_function_input(tx["input"])
            except ValueError:
                args = {}
            ids = [int(args["id"])] if "id" in args else [int(i) for i in args.get("ids", [])]
            own = [lg for lg in receipt["logs"] if lg["address"] == sim.hub.address]
            price = int(receipt["effectiveGasPrice"])
            if receipt["status"] != 1:
                trace = await sim.env.rpc(
                    "debug_traceTransaction", ["0x" + bytes(tx["hash"]).hex(), {"tracer": "callTracer"}]
                )
                inner = [c.get("error") for c in trace.get("calls", []) if c.get("error")]
                sim.failures.append(
                    f"daemon tx {ids[:4]} by {str(tx['from'])[:10]} reverted: {trace.get('error')} {inner} "
                    f"gas {receipt['gasUsed']} of {tx['gas']}"
                )
            res = TxResult("", n, int(receipt["gasUsed"]), price, decode_logs(cast(Any, own)))
            sim.ledger.record(
                str(tx["from"]), ids, res, {i: int(tx["value"]) for i in ids[:1] if tx["value"]}
            )


def _dispute_call(f: Any, kind: str, request_id: int, value: Any, voter: str) -> tuple[Any, int]:
    """(contract function, gas limit) of a one-request dispute-path call."""
    if kind == "open_audit":
        return f.openAudit(request_id), 500_000
    if kind == "escalate":
        return f.escalate(request_id), 300_000
    if kind == "commit_vote":
        return f.commitVote(request_id, commitment(value, voter, request_id)), 200_000
    if kind == "reveal_vote":
        return f.revealVote(request_id, value), 200_000
    return f.claimVote(request_id), 200_000


class _Plan:
    def __init__(self) -> None:
        self.pending: list[int] = []
        self.ops: dict[str, dict[str, list[tuple[int, Any]]]] = defaultdict(lambda: defaultdict(list))
        self.timeouts: list[tuple[int, HubClient]] = []

    def add(self, who: str, kind: str, request_id: int, value: Any) -> None:
        self.ops[who][kind].append((request_id, value))

    def timeout(self, request_id: int, who: HubClient) -> None:
        self.timeouts.append((request_id, who))

    def empty(self) -> bool:
        return not self.pending and not self.ops and not self.timeouts


def _chunks(items: list[tuple[int, Any]], n: int = 64) -> list[list[tuple[int, Any]]]:
    return [items[k : k + n] for k in range(0, len(items), n)]


@dataclass
class Outcome:
    """One attack's numbers (per trial: expected values)."""

    attacker_profit_wei: int
    honest_loss_wei: int
    trials: int
    honest_loss_probability: float
    notes: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "attacker_profit_wei": self.attacker_profit_wei,
            "honest_loss_wei": self.honest_loss_wei,
            "trials": self.trials,
            "honest_loss_probability": round(self.honest_loss_probability, 4),
        }


async def account(
    sim: Sim,
    before: dict[str, int],
    after: dict[str, int],
    attackers: Iterable[str],
    trials: Sequence[Sequence[int]],
    *,
    extra_attacker_wei: int = 0,
    pooled: Iterable[str] = (),
    weights: Sequence[float] | None = None,
) -> Outcome:
    """Attacker profit from balances (minus the compute its seats spent); honest loss per trial.

    attacker_profit = sum of the attackers' wealth change (wallet + stake + credits) minus the compute
    their seats spent, priced at the seat's fee share (so a seat that skipped the work gains its fee).
    honest_loss: for each trial and each honest party, its net from the trial's receipts and events
    (credits - slashes - gas - fees and bonds paid), where a requester served the honest answer gets
    back what it paid to be served (fee + request and assign gas); a party that gained does not
    offset another's loss. The ledger must add up to the balance change of every account.
    `pooled` parties (a requester facing a cheat that is audited with probability p) are judged by
    their expected value: their nets are averaged over the trials first (with `weights`, one per
    trial summing to 1, else equally), and only a negative mean is a loss; a trial still counts in
    the loss probability when their net in it is negative.
    """
    pooled = set(pooled)
    pooled_net: dict[str, float] = defaultdict(float)
    w = list(weights) if weights is not None else [1 / len(trials)] * len(trials) if trials else []
    attackers = set(attackers)
    pols = [p for p in sim.policies.values() if p.address in attackers]
    profit = (
        sum(after[a] - before[a] for a in attackers) - sum(p.compute_spent for p in pols) + extra_attacker_wei
    )
    finals = {i: await sim.hub.get_request(i) for t in trials for i in t}
    notes: list[str] = []
    for a in before:
        if (
            a in attackers
            and a not in sim.policies
            and a not in {str(c.sender) for c in sim.requester_of.values()}
        ):
            continue
        led = sim.ledger.account_total(a)
        if led != after[a] - before[a]:
            notes.append(
                f"ledger/balance mismatch for {a[:10]}: ledger {led} vs balance {after[a] - before[a]}"
            )
    loss_total = 0
    lost_trials = 0
    for k, t in enumerate(trials):
        net: dict[str, int] = defaultdict(int)
        for i in t:
            for a, v in sim.ledger.by_id[i].items():
                net[a] += v
            req = str(sim.requester_of[i].sender)
            info = finals[i]
            if info.phase == Phase.FINAL and info.output_digest == sim.truth[i]:
                net[req] += sim.request_cost[i]
        for a in pooled:
            pooled_net[a] += w[k] * net.get(a, 0)
        losses = {a: -v for a, v in net.items() if a not in attackers and v < 0}
        lost_here = bool(losses)
        losses = {a: v for a, v in losses.items() if a not in pooled}
        if losses and DEBUG:
            print("    loss in trial", list(t), {a[:8]: v for a, v in losses.items()}, sim.ledger.by_id[t[0]])
            for i in t:
                for line in sim.txlog[i]:
                    print("      ", i, line)
        lost_trials += lost_here
        loss_total += sum(losses.values())
    loss_total += round(len(trials) * sum(-v for v in pooled_net.values() if v < 0))
    n = len(trials)
    return Outcome(
        attacker_profit_wei=profit // n if n else 0,
        honest_loss_wei=loss_total // n if n else 0,
        trials=n,
        honest_loss_probability=lost_trials / n if n else 0.0,
        notes=notes,
    )
