"""The miner's side of disputes: escalating an outcome it lost, voting on others', timeouts.

Kept apart from the daemon (which produces and submits results) because these paths are rare,
bonded or paid by stake, and easiest to reason about together:

* **Escalation** (`escalate`, bond = the model's minStake). When a request we hold a seat on becomes
  provisionally resolved (`InferenceResolved`) for a digest other than the one we revealed, a
  (sybil) majority may have outvoted an honest seat: we challenge it before the escalation window
  ends, so every other active miner of the model votes. Not for `UNAVAILABLE`, and for r = 1 only
  the assignee or auditor (seats 0/1) may (the contract's rule: committee members follow the
  parties). Guarded by `DaemonConfig.escalate` (`miner.escalate`) and the wallet: the bond plus the
  gas must be payable. The signed transaction's hash is journaled before broadcast and the chain is
  checked first, so a request is escalated at most once across crashes. Won, the bond comes back as
  credits (`Credited` reason bond) with a bounty; lost, it is forfeited.
* **Votes**: an `EscalationOpened` on our model, where we hold no seat and were active before it,
  is a voter job: the same re-execution, then `commitVote`/`revealVote` of our digest and
  `claimVote` when it won (the submitter sends those).
* **Timeouts**: a request we hold a seat on (or voted on) whose phase deadline passed (a provisional
  outcome's escalation window, a vote's reveal window, a silent seat) is moved on with
  `timeoutMany`, which finalizes and pays it. The sweeper also looks again here for an escalation
  the event path missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from node.chain.events import EscalationOpened, InferenceResolved, VoteCommitted, VoteRevealed
from node.chain.hub import MAX_BATCH, UNAVAILABLE, Phase, RequestFlag, RequestInfo
from node.chain.sender import TxWouldRevert
from node.log import get_logger
from node.miner.hubview import TIMEOUT_PHASES, MinerEvent
from node.miner.journal import COMMIT_STATES, REVEAL_STATES, EscalationState, Job, JobState, Role
from node.miner.money import receipt_fee_wei
from node.supervise import describe

if TYPE_CHECKING:
    from node.miner.daemon import MinerDaemon

log = get_logger("inferd.miner.disputes")


class Disputes:
    """Escalations, votes and timeouts of one daemon (it owns the chain, journal and sender)."""

    def __init__(self, daemon: MinerDaemon) -> None:
        self.d = daemon
        self._voting: set[int] = set()  # escalations being looked at as a voter
        self._escalating: set[int] = set()  # our own escalations being checked or sent
        self._tasks: set[asyncio.Task[None]] = set()
        self._unaffordable: set[int] = set()  # warned once each

    def _spawn(self, coro: Any, name: str, done: Callable[[], object] | None = None) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if done is not None:
            task.add_done_callback(lambda t: done())

    # ------------------------------------------------------------------ events

    def on_event(self, ev: MinerEvent, job: Job | None) -> bool:
        """Handle a dispute event (True when `ev` was one); `job` is ours on its request, if any."""
        me = self.d.address
        if isinstance(ev, EscalationOpened):
            if ev.challenger != me and ev.id not in self._voting:
                self._voting.add(ev.id)
                self._spawn(self._consider_vote(ev), f"vote-{ev.id}", lambda: self._voting.discard(ev.id))
            return True
        if isinstance(ev, InferenceResolved):
            if job is not None and self._may_escalate(job, ev.output_digest):
                self.schedule_escalation(ev.id)
            return True
        if isinstance(ev, VoteCommitted | VoteRevealed):
            if job is None or ev.voter != me:
                return True
            if isinstance(ev, VoteCommitted) and job.state in COMMIT_STATES:
                self.d.journal.mark_committed(ev.id, ev.log.block_number)
            elif isinstance(ev, VoteRevealed) and job.state in REVEAL_STATES:
                self.d.journal.mark_revealed(ev.id, ev.log.block_number)
            return True
        return False

    # ------------------------------------------------------------------ escalation (ours)

    def _may_escalate(self, job: Job, winning: bytes) -> bool:
        """Cheap local check: a seat of ours whose output lost (the chain check comes later)."""
        if not self.d.config.escalate or job.role == Role.VOTER:
            return False
        mine = job.output_digest
        return mine is not None and mine != winning and mine != UNAVAILABLE

    def schedule_escalation(self, request_id: int) -> None:
        if request_id in self._escalating or not self.d.config.escalate:
            return
        rec = self.d.journal.escalation(request_id)
        if rec is not None and rec.state != EscalationState.SENDING:
            return  # sent, or missed: never twice
        self._escalating.add(request_id)
        self._spawn(self._escalate(request_id), f"escalate-{request_id}")

    async def _escalate(self, rid: int) -> None:
        try:
            await self._escalate_once(rid)
        except Exception as exc:  # an RPC error: the sweeper looks again while the window is open
            self.d.metrics.rpc_errors.labels("disputes").inc()
            log.warning("escalation_check_failed", request_id=rid, error=describe(exc))
        finally:
            self._escalating.discard(rid)

    async def _escalate_once(self, rid: int) -> None:
        d = self.d
        me = d.address
        info = await d.view.get_request(rid)
        rec = d.journal.escalation(rid)
        if info is None or d.model is None:
            return
        if info.phase != Phase.RESOLVED:
            if rec is not None and rec.state == EscalationState.SENDING:  # a crash after signing
                esc = await d.hub.get_escalation(rid)
                landed = esc.challenger == me
                d.journal.mark_escalation(
                    rid, EscalationState.SENT if landed else EscalationState.MISSED,
                    reason=None if landed else f"phase {info.phase.name} before our escalation landed",
                )  # fmt: skip
            return
        mine = info.revealed_digest(me)
        seat = info.seat_of(me)
        if mine is None or seat is None or mine in (UNAVAILABLE, info.output_digest):
            return
        if info.redundancy == 1 and seat > 1:
            return  # committee members follow the parties (the contract refuses them)
        head = int(await d.hub.w3.eth.block_number)
        if head + 1 > info.mark:
            d.journal.mark_escalation(rid, EscalationState.MISSED, reason=f"window ended at {info.mark}")
            d.metrics.escalations.labels("missed").inc()
            log.warning("escalation_missed", request_id=rid, escalation_end=info.mark, head=head)
            return
        bond = d.model.min_stake
        data = d.view.escalate_calldata(rid)
        tx = {"from": me, "to": d.hub.address, "data": data, "value": bond}
        try:
            gas = await d.sender.estimate(tx)
        except TxWouldRevert as exc:  # someone escalated first, or the window closed: look again
            log.info("escalation_would_revert", request_id=rid, error=str(exc))
            return
        max_fee, _ = await d.sender.fees()
        balance = int(await d.hub.w3.eth.get_balance(me))  # type: ignore[arg-type]
        if balance < bond + gas * max_fee:
            if rid not in self._unaffordable:
                self._unaffordable.add(rid)
                d.metrics.escalations.labels("unaffordable").inc()
                log.warning(
                    "escalation_unaffordable", request_id=rid, bond_wei=bond, gas_wei=gas * max_fee,
                    wallet_wei=balance, escalation_end=info.mark, note="top up the wallet to challenge",
                )  # fmt: skip
            return
        log.warning(
            "escalating", request_id=rid, ours=mine.hex(), provisional=(info.output_digest or b"").hex(),
            bond_wei=bond, escalation_end=info.mark,
        )  # fmt: skip

        def on_signed(tx_hash: str) -> None:
            d.journal.mark_escalation(rid, EscalationState.SENDING, tx_hash=tx_hash)

        try:
            receipt = await d.sender.send(d.hub.address, data, value=bond, gas=gas, on_signed=on_signed)
        except Exception as exc:
            d.metrics.escalations.labels("failed").inc()
            d.metrics.txs.labels("error").inc()
            log.warning("escalation_failed", request_id=rid, error=describe(exc))
            return  # journaled `sending`: the next look checks the chain before anything else
        d.journal.mark_escalation(rid, EscalationState.SENT)
        d.metrics.escalations.labels("sent").inc()
        d.metrics.txs.labels("ok").inc()
        d.metrics.gas_spent_wei.inc(receipt_fee_wei(receipt))
        log.info("escalation_sent", request_id=rid, block=int(receipt["blockNumber"]))
        d.handle_receipt(receipt)

    def resume(self) -> None:
        """After a restart: settle escalations that were signed but not known to have landed."""
        for rec in self.d.journal.escalations([EscalationState.SENDING]):
            self.schedule_escalation(rec.request_id)

    # ------------------------------------------------------------------ votes (others')

    async def _consider_vote(self, ev: EscalationOpened) -> None:
        """Vote on an escalation of our model: re-execute the input, then commit/reveal our digest.

        Eligible: an active miner of the model since before the escalation, not seated on it.
        """
        d = self.d
        me = d.address
        try:
            info = await d.view.get_request(ev.id)
            mine = await d.hub.get_miner(me)
        except Exception as exc:
            log.warning("vote_check_failed", request_id=ev.id, error=describe(exc))
            return
        if d.model is None or info is None or info.model_id != d.model.model_id:
            return
        if info.seat_of(me) is not None or not mine.active or mine.active_since >= ev.log.block_number:
            return
        job, changed = d.journal.assign(
            ev.id, input_digest=info.input_digest, deadline=ev.commit_end, block_number=ev.log.block_number,
            block_hash=ev.log.block_hash, role=Role.VOTER,
        )  # fmt: skip
        if changed:
            log.info("vote_joined", request_id=ev.id, commit_end=ev.commit_end, reveal_end=ev.reveal_end)
        if job.state == JobState.NEW:
            d.schedule(ev.id)
        elif job.state in COMMIT_STATES + REVEAL_STATES:
            d.submitter.enqueue(ev.id)

    # ------------------------------------------------------------------ timeouts

    def timeout_due(self, info: RequestInfo, vote_end: int | None = None) -> bool:
        """Whether `timeout(id)` would move this request on now (its phase deadline has passed)."""
        d = self.d
        if info.phase not in TIMEOUT_PHASES or d.model is None:
            return False
        due = info.mark if vote_end is None else vote_end
        if info.phase == Phase.REVEAL and info.redundancy == 1 and RequestFlag.AUDITED not in info.flags:
            due += d.model.timeout_blocks
        # Every seat may call it; seat k waits 2k blocks more, so the seats do not all pay for a
        # transaction that only the first can land (the others revert).
        seat = info.seat_of(d.address)
        return d.head > due + 2 * (seat or 0)

    async def collect_timeouts(self) -> None:
        """`timeoutMany` for the requests we hold a seat on (or voted on) whose phase deadline passed
        (we are owed money there, e.g. a provisional outcome whose escalation window ended). A lost
        provisional outcome still open to escalation is escalated instead."""
        d = self.d
        due: list[int] = []
        for job in d.journal.jobs([JobState.COMMITTED, JobState.REVEALED]):
            try:
                info = await d.view.get_request(job.request_id)
            except Exception:
                d.metrics.rpc_errors.labels("sweeper").inc()
                continue
            if info is None:
                continue
            lost = info.phase == Phase.RESOLVED and info.output_digest is not None
            if lost and self._may_escalate(job, info.output_digest or b"") and d.head + 1 <= info.mark:
                self.schedule_escalation(job.request_id)
            vote_end = None
            if info.phase == Phase.VOTE:
                try:
                    vote_end = (await d.hub.get_escalation(job.request_id)).reveal_end
                except Exception:
                    d.metrics.rpc_errors.labels("sweeper").inc()
                    continue
            if self.timeout_due(info, vote_end):
                due.append(job.request_id)
        for start in range(0, len(due), MAX_BATCH):
            ids = due[start : start + MAX_BATCH]
            try:
                receipt = await d.sender.send(d.hub.address, d.view.timeout_calldata(ids))
            except Exception as exc:  # a race (someone else timed it out) or an RPC error: next sweep
                log.info("timeout_failed", ids=ids, error=describe(exc))
                continue
            d.handle_receipt(receipt)
            log.info("timeouts_sent", ids=ids, block=int(receipt["blockNumber"]))

    async def close(self) -> None:
        """Cancel the vote and escalation checks in progress (an escalation stays journaled)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):  # the journaled state decides next time
                await task


__all__ = ["Disputes"]
