"""The pending-request registry: one future per on-chain request, fed by ONE chain watcher and ONE
MQTT subscription for the whole gateway (no poll loop per request).

Events may arrive in any order and even before the gateway has registered the request (a fast
miner can finalize in the block after the request); those are buffered, bounded, and replayed on
`register`. A request resolves only with a `VerifiedResult`: bytes whose sha256 equals the digest
the chain finalized, whose signature (when one came over MQTT) recovers to an assignee, and whose
document names this request. Anything else is counted as rejected and never answered.

MQTT is open to every miner on the network (and to whoever else reaches the broker), so what it
delivers is bounded and filtered before anyone sees it: a delta or result is kept only when its
publisher (the topic's miner level, checked by the broker's ACL) is one of the request's assignees;
one assignee's deltas are relayed (the first to send one), so redundant miners do not interleave;
each miner has at most one result candidate; and every buffer is bounded in bytes, per request and
for the whole gateway (`BufferLimits`). What does not fit or does not qualify is dropped and counted
in `drops` by reason; it never raises into the MQTT loop.

Protocol v2 assigns a request in a later block than the request itself (`InferenceAssigned`), so a
request is registered before its assignees are known. Until they are, its MQTT messages are held
(charged to the same bounds) and checked against the assignees once `on_assigned` names them, or
sooner: `on_drawn` names the seats the hub will write, drawn by the gateway itself from the request's
block (`node.chain.draw`, bit-exact with the hub's draw), so a seat's deltas and signed result are
accepted while the assignment is still a block away; the chain's `InferenceAssigned` replaces the
drawn seats (every other check is the same: the signature must recover to a seat). The
registry also records what the chain said about verification on the way (committed, audit opened,
committee opened), so the answer can say how its result was verified.

**Answering on the signed result** (`accept_signed`, the gateway's `answer_on = "signature"` or a
request's `"finality": "signature"`) resolves before settlement from a result whose EIP-712 signature
binds its assignee (`node.gateway.signed` has the checks and why they suffice); the answer says
`settlement: pending` (`VerifiedResult.extra`) and the chain's final state is read back later.

This module is the orchestrator: it applies every event to the request it concerns. The state of
one request is `node.gateway.inflight.PendingInference`, the early buffer and the byte costs are
`node.gateway.early`, the checks a result must pass are `node.gateway.signed`; the names other code
imports from here (`PendingInference`, `BufferLimits`, `ResultMessage`, `recover_submission_signer`,
...) are re-exported.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from node.content.cid import digest_of, digest_to_cid
from node.content.documents import OutputDocument, parse_output_document
from node.content.errors import ContentError
from node.gateway.early import (
    ITEM_OVERHEAD,
    BufferLimits,
    EarlyBuffer,
    EarlyEvents,
    Key,
    ResultMessage,
    delta_cost,
    message_cost,
    result_cost,
)
from node.gateway.errors import GatewayError, TamperedOutput, UpstreamError
from node.gateway.inflight import PendingInference
from node.gateway.records import Delta, Submission, VerifiedResult
from node.gateway.signed import (
    RejectedResult,
    SignatureCheck,
    check_final,
    check_signed,
    recover_submission_signer,
)
from node.log import get_logger

log = get_logger("gateway.pending")

FetchOutput = Callable[[str], Awaitable[bytes]]
"""CID -> verified bytes (the content store's `get`)."""


def _sender(miner: str | None) -> str:
    return (miner or "").lower()


class PendingRegistry:
    """Futures keyed by (chain id, request id); the chain backend feeds it events."""

    def __init__(
        self,
        check_signature: SignatureCheck,
        fetch_output: FetchOutput,
        *,
        grace_s: float = 0.5,
        fetch_retry_s: float = 0.5,
        limits: BufferLimits | None = None,
    ) -> None:
        self._check_signature = check_signature
        self._fetch_output = fetch_output
        self._grace_s = grace_s
        self._fetch_retry_s = fetch_retry_s
        self._pending: dict[Key, PendingInference] = {}
        self.buffered_bytes = 0
        """Bytes buffered for registered requests (deltas not yet streamed, result candidates)."""
        self.drops: Counter[str] = Counter()
        """MQTT messages dropped, by reason (`not_assignee`, `per_request_bytes`, `early_evicted`, ...)."""
        self._early = EarlyBuffer(limits or BufferLimits(), self.drops)
        self._rejection_listeners: list[Callable[[str], None]] = []

    @property
    def limits(self) -> BufferLimits:
        """The byte bounds, for registered requests and the early buffer alike."""
        return self._early.limits

    @limits.setter
    def limits(self, limits: BufferLimits) -> None:
        self._early.limits = limits

    @property
    def early_bytes(self) -> int:
        """Bytes buffered for request ids not registered (yet)."""
        return self._early.bytes

    def add_rejection_listener(self, listener: Callable[[str], None]) -> None:
        """Called with a reason for every output that failed verification (metrics, alerts)."""
        self._rejection_listeners.append(listener)

    def __len__(self) -> int:
        return len(self._pending)

    def get(self, chain_id: int, request_id: int) -> PendingInference | None:
        return self._pending.get((chain_id, request_id))

    def register(self, submission: Submission) -> PendingInference:
        """Start tracking a request; replays anything that arrived for it before."""
        pending = PendingInference(submission, self)
        self._pending[pending.key] = pending
        stream = self._early.pop_stream(pending.key)
        if stream is not None:
            for delta in stream.deltas:
                self._accept_delta(pending, delta)
            for message in stream.results:
                self._accept_result(pending, message)
        early = self._early.pop_events(pending.key)
        if early is not None:
            for assignees in early.assigned:
                self.on_assigned(*pending.key, assignees)
            pending.committed |= early.committed
            pending.audited |= early.audited
            pending.disputed |= early.disputed
            for miner, tx in early.commits:
                pending.commits[miner.lower()] = tx
            for miner, tx, digest in early.submitted:
                pending.submits[miner.lower()] = (tx, digest)
            if early.finalized is not None:
                pending.final_digest, pending.final_tx = early.finalized
            if early.failure is not None:
                pending._fail(early.failure)
            self._advance(pending)
        return pending

    def release(self, pending: PendingInference) -> None:
        if self._pending.get(pending.key) is pending:
            del self._pending[pending.key]
        pending._cancel_fetch()
        self._uncharge(pending, pending.buffered_bytes)
        pending.candidates.clear()
        pending.held.clear()
        while not pending.deltas.empty():
            pending.deltas.get_nowait()

    async def close(self) -> None:
        for pending in list(self._pending.values()):
            pending._fail(UpstreamError("The gateway is shutting down.", request_id=pending.request_id))
            self.release(pending)

    # --------------------------------------------------------------- events

    def on_delta(self, chain_id: int, request_id: int, delta: Delta) -> None:
        """A delta from MQTT; kept only if its publisher is (or may turn out to be) an assignee."""
        pending = self._pending.get((chain_id, request_id))
        if pending is not None:
            self._accept_delta(pending, delta)
            return
        early = self._early.buffer((chain_id, request_id), delta_cost(delta))
        if early is not None:
            early.deltas.append(delta)

    def on_result_message(self, chain_id: int, request_id: int, message: ResultMessage) -> bool:
        """A result from MQTT; kept (one per miner) only if its publisher is an assignee.

        True when it was kept for a registered request (worth looking for its transaction now).
        """
        pending = self._pending.get((chain_id, request_id))
        if pending is not None:
            kept = self._accept_result(pending, message)
            self._advance(pending)
            return kept
        early = self._early.buffer((chain_id, request_id), result_cost(message))
        if early is not None:
            early.results.append(message)
        return False

    def on_submitted(self, chain_id: int, request_id: int, miner: str, tx_hash: str, digest: bytes) -> None:
        pending = self._pending.get((chain_id, request_id))
        if pending is None:
            self._early.events_for((chain_id, request_id)).submitted.append((miner, tx_hash, digest))
            return
        pending.submits[miner.lower()] = (tx_hash, digest)

    def on_finalized(self, chain_id: int, request_id: int, digest: bytes, tx_hash: str | None) -> None:
        pending = self._pending.get((chain_id, request_id))
        if pending is None:
            self._early.events_for((chain_id, request_id)).finalized = (digest, tx_hash)
            return
        pending.final_digest, pending.final_tx = digest, tx_hash
        self._advance(pending)

    def on_drawn(self, chain_id: int, request_id: int, seats: tuple[str, ...]) -> None:
        """The seats `assign()` will write, drawn from the request's block (`node.chain.draw`): act
        on them as on `InferenceAssigned` until it comes. Ignored once the chain named the seats."""
        pending = self._pending.get((chain_id, request_id))
        if pending is None or pending.assigned or pending.done() or not seats:
            return
        self._seat(pending, tuple(seats), drawn=True)

    def on_assigned(self, chain_id: int, request_id: int, assignees: tuple[str, ...]) -> None:
        """`InferenceAssigned`: the request's seats (first assignment, or a reassignment after a
        timeout, whose new seats are valid signers too). Held MQTT messages are checked now."""
        pending = self._pending.get((chain_id, request_id))
        if pending is None:
            self._early.events_for((chain_id, request_id)).assigned.append(tuple(assignees))
            return
        if pending.drawn and {a.lower() for a in assignees} != {
            a.lower() for a in pending.submission.assignees
        }:
            log.warning(
                "drawn_seats_differ",
                request_id=request_id,
                drawn=pending.submission.assignees,
                chain=assignees,
            )
        self._seat(pending, tuple(assignees), drawn=False)

    def _seat(self, pending: PendingInference, assignees: tuple[str, ...], *, drawn: bool) -> None:
        """Name the request's seats (the chain's replace drawn ones; a reassignment's are added)."""
        known = () if pending.drawn else pending.submission.assignees
        pending.drawn = drawn
        pending.submission = replace(
            pending.submission,
            assignees=tuple(dict.fromkeys((*known, *assignees))),
        )
        held, pending.held = pending.held, []
        for message in held:
            self._uncharge(pending, message_cost(message))
            if isinstance(message, Delta):
                self._accept_delta(pending, message)
            else:
                self._accept_result(pending, message)
        self._advance(pending)

    on_reassigned = on_assigned

    def on_committed(self, chain_id: int, request_id: int, miner: str, tx_hash: str) -> None:
        """`ResultCommitted`: a seat committed (its transaction is the answer's `submit_tx` while the
        result is settling)."""
        self.on_verification(chain_id, request_id, "committed")
        pending = self._pending.get((chain_id, request_id))
        if pending is None:
            self._early.events_for((chain_id, request_id)).commits.append((miner, tx_hash))
            return
        pending.commits[miner.lower()] = tx_hash

    def on_verification(self, chain_id: int, request_id: int, what: str) -> None:
        """`committed` (ResultCommitted), `audit` (AuditOpened) or `dispute` (CommitteeOpened)."""
        pending = self._pending.get((chain_id, request_id))
        target: PendingInference | EarlyEvents = (
            pending if pending is not None else self._early.events_for((chain_id, request_id))
        )
        if what == "committed":
            target.committed = True
        elif what == "audit":
            target.audited = True
        elif what == "dispute":
            target.disputed = True

    def on_failed(self, chain_id: int, request_id: int, error: GatewayError) -> None:
        """The chain says no result will come (expired and refunded)."""
        pending = self._pending.get((chain_id, request_id))
        if pending is None:
            self._early.events_for((chain_id, request_id)).failure = error
            return
        pending._fail(error)

    # --------------------------------------------------------------- verification

    def _charge(self, pending: PendingInference, cost: int) -> bool:
        """Reserve `cost` bytes for `pending`; False (and counted) when a bound would be crossed."""
        if pending.buffered_bytes + cost > self.limits.per_request_bytes:
            self.drops["per_request_bytes"] += 1
            return False
        if self.buffered_bytes + cost > self.limits.total_bytes:
            self.drops["total_bytes"] += 1
            return False
        pending.buffered_bytes += cost
        self.buffered_bytes += cost
        return True

    def _uncharge(self, pending: PendingInference, cost: int) -> None:
        cost = min(cost, pending.buffered_bytes)
        pending.buffered_bytes -= cost
        self.buffered_bytes -= cost

    def _hold(self, pending: PendingInference, message: Delta | ResultMessage) -> bool:
        """Keep `message` until the assignees are known (bounded like everything else)."""
        if pending.done() or not self._charge(pending, message_cost(message)):
            return False
        pending.held.append(message)
        return True

    def _accept_delta(self, pending: PendingInference, delta: Delta) -> None:
        if not pending.assigned:
            self._hold(pending, delta)
            return
        sender = _sender(delta.miner)
        if not pending.is_assignee(sender):
            self.drops["not_assignee"] += 1
            return
        if pending.streamer is None:
            pending.streamer = sender
        elif pending.streamer != sender:
            self.drops["other_assignee"] += 1  # redundant miners would interleave their seqs
            return
        if pending.done() or not self._charge(pending, delta_cost(delta)):
            return
        pending.deltas.put_nowait(delta)

    def _accept_result(self, pending: PendingInference, message: ResultMessage) -> bool:
        if not pending.assigned:
            return self._hold(pending, message)
        sender = _sender(message.miner)
        if not pending.is_assignee(sender):
            self.drops["not_assignee"] += 1
            return False
        for old in [m for m in pending.candidates if _sender(m.miner) == sender]:
            pending.candidates.remove(old)  # a miner's latest result replaces its earlier one
            self._uncharge(pending, result_cost(old))
        if pending.done() or not self._charge(pending, result_cost(message)):
            return False
        pending.candidates.append(message)
        return True

    def _reject(self, pending: PendingInference, reason: str) -> None:
        pending.rejections.append(reason)
        log.warning("output_rejected", request_id=pending.request_id, reason=reason)
        for listener in self._rejection_listeners:
            listener(reason)

    def _drop_candidate(self, pending: PendingInference, message: ResultMessage, reason: str) -> None:
        pending.candidates.remove(message)
        self._uncharge(pending, result_cost(message))
        self._reject(pending, reason)

    def _answer_signed(self, pending: PendingInference) -> None:
        """Resolve, before settlement, from the first candidate that verifies (`check_signed`)."""
        for message in list(pending.candidates):
            try:
                signer = check_signed(pending.submission, message, self._check_signature)
            except RejectedResult as exc:
                self._drop_candidate(pending, message, exc.reason)
                continue
            pending.candidates.remove(message)
            self._uncharge(pending, result_cost(message))
            self._finish(pending, message.output_bytes, message.signature, signer, settled=False)
            return

    def _advance(self, pending: PendingInference) -> None:
        """Resolve from a verified candidate once the chain's digest is known, else fetch by CID;
        before that, from a verified signed result when the request answers on signatures."""
        if pending.done():
            return
        if pending.final_digest is None:
            if pending.answer_on_signature and pending.assigned:
                self._answer_signed(pending)
            return
        final = pending.final_digest
        while pending.candidates:
            message = pending.candidates.pop(0)
            self._uncharge(pending, result_cost(message))
            try:
                signer = check_final(pending.submission, message, final, self._check_signature)
            except RejectedResult as exc:
                self._reject(pending, exc.reason)
                continue
            self._finish(pending, message.output_bytes, message.signature, signer)
            return
        if pending._fetch_task is None:
            pending._fetch_task = asyncio.get_running_loop().create_task(self._fetch_later(pending, final))

    async def _fetch_later(self, pending: PendingInference, final: bytes) -> None:
        """No MQTT result (no broker, or a lost message): read the output by CID, retrying."""
        await asyncio.sleep(self._grace_s)
        cid = digest_to_cid(final)
        while not pending.done():
            try:
                data = await self._fetch_output(cid)
            except ContentError as exc:
                log.debug("output_fetch_retry", request_id=pending.request_id, error=str(exc))
                await asyncio.sleep(self._fetch_retry_s)
                continue
            if digest_of(data) != final:  # stores verify, but never trust a backend blindly
                self._reject(pending, "content store returned bytes that do not match the digest")
                await asyncio.sleep(self._fetch_retry_s)
                continue
            signer = next(
                (m for m, (_, d) in pending.submits.items() if d == final),
                None,
            )
            self._finish(pending, data, None, signer)
            return

    def _finish(
        self,
        pending: PendingInference,
        data: bytes,
        signature: str | None,
        signer: str | None,
        *,
        settled: bool = True,
    ) -> None:
        """Resolve with `data`: final on chain (`settled`), or a verified signed result not yet
        settled (`settlement: pending`, `submit_tx` the signer's commit when it was seen)."""
        sub = pending.submission
        try:
            output: OutputDocument = parse_output_document(data)
        except ContentError as exc:
            pending._fail(
                TamperedOutput(
                    f"The output finalized on chain for request {sub.request_id} is not a valid "
                    f"output document: {exc}",
                    request_id=sub.request_id,
                )
            )
            return
        if output.request_id != sub.request_id or output.input_cid != sub.input_cid:
            pending._fail(
                TamperedOutput(
                    f"The output finalized on chain for request {sub.request_id} answers request "
                    f"{output.request_id} / input {output.input_cid}, not this one.",
                    request_id=sub.request_id,
                )
            )
            return
        submit_tx = None
        if not settled:
            submit_tx = pending.commits.get((signer or "").lower())
        elif signer is not None and signer.lower() in pending.submits:
            submit_tx = pending.submits[signer.lower()][0]
        submit_tx = submit_tx or pending.final_tx
        extra: dict[str, Any] = {
            "final_digest": "0x" + digest_of(data).hex() if settled else None,
            "verification": str(pending.verification),
            "phase": "final" if settled else None,
            "settlement": "final" if settled else "pending",
        }
        pending._resolve(
            VerifiedResult(
                submission=sub,
                output=output,
                output_bytes=data,
                output_cid=digest_to_cid(digest_of(data)),
                signature=signature,
                signer=signer,
                submit_tx=submit_tx,
                extra=extra,
            )
        )


__all__ = [
    "ITEM_OVERHEAD",
    "BufferLimits",
    "FetchOutput",
    "PendingInference",
    "PendingRegistry",
    "ResultMessage",
    "SignatureCheck",
    "recover_submission_signer",
]
