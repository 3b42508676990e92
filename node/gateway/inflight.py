"""One request in flight, as the gateway's handlers see it: the queue of streamed deltas they relay,
the future of the verified result they answer with, and what the chain and MQTT said about it so
far (final digest, commits, result candidates, verification state).

It lives apart from `node.gateway.pending` because handlers only read and wait on it: every event
that changes it is applied by the `PendingRegistry` (the one orchestrator, which owns the byte
bounds and the checks), and the few calls it makes back (`next_delta` frees bytes, `accept_signed`
re-checks candidates, `release`) go to that registry.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from node.chain.hub import VerificationState
from node.gateway.early import Key, ResultMessage, delta_cost
from node.gateway.errors import GatewayError, UpstreamTimeout
from node.gateway.records import Delta, Submission, VerifiedResult
from node.gateway.signed import is_assignee

if TYPE_CHECKING:
    from node.gateway.pending import PendingRegistry


class PendingInference:
    """One request in flight: a queue of streamed deltas and a future for the verified result."""

    def __init__(self, submission: Submission, registry: PendingRegistry) -> None:
        self.submission = submission
        self.deltas: asyncio.Queue[Delta] = asyncio.Queue()
        """Accepted deltas (bounded in bytes by the registry); read them with `next_delta`."""
        self.streamer: str | None = None
        """The assignee whose deltas are relayed (the first one that sent a delta), lowercase."""
        self.buffered_bytes = 0
        self.final_digest: bytes | None = None
        self.final_tx: str | None = None
        self.submits: dict[str, tuple[str, bytes]] = {}
        self.candidates: list[ResultMessage] = []
        self.rejections: list[str] = []
        self.held: list[Delta | ResultMessage] = []
        """MQTT messages that arrived before the assignees were known (checked on assignment)."""
        self.committed = False
        self.commits: dict[str, str] = {}
        """Commit transaction per seat (lowercase address) as `ResultCommitted` showed them."""
        self.drawn = False
        """The assignees are the seats drawn off chain from the request's block (`node.chain.draw`),
        not yet confirmed by `InferenceAssigned` (which replaces them when it comes)."""
        self.assigning: asyncio.Task[None] | None = None
        """The `assign` still being mined in the background while the drawn seats answer: its gas
        joins `submission.gas_cost` when it ends, so the call's spend settles after it."""
        self.answer_on_signature = False
        """Resolve on a verified signed result before settlement (`accept_signed`)."""
        self.audited = False
        self.disputed = False
        self._registry = registry
        self._future: asyncio.Future[VerifiedResult] = asyncio.get_running_loop().create_future()
        self._fetch_task: asyncio.Task[None] | None = None

    @property
    def key(self) -> Key:
        return (self.submission.chain_id, self.submission.request_id)

    @property
    def request_id(self) -> int:
        return self.submission.request_id

    def done(self) -> bool:
        return self._future.done()

    def is_assignee(self, miner: str | None) -> bool:
        return is_assignee(self.submission, miner)

    @property
    def assigned(self) -> bool:
        return bool(self.submission.assignees)

    @property
    def chain_assigned(self) -> bool:
        """The chain named the seats (`InferenceAssigned` or the request view), not only our draw."""
        return self.assigned and not self.drawn

    @property
    def verification(self) -> VerificationState:
        """The verification state the chain's events showed so far (`node.chain.hub.VerificationState`)."""
        if self.disputed:
            return VerificationState.DISPUTED
        if self.final_digest is not None:
            return VerificationState.AUDITED if self.audited else VerificationState.FINAL
        if self.audited:
            return VerificationState.AUDIT_PENDING
        if self.committed:
            return VerificationState.SUBMITTED
        return VerificationState.ASSIGNED if self.chain_assigned else VerificationState.PENDING

    async def next_delta(self) -> Delta:
        """The next accepted delta, in arrival order (its bytes leave the buffer bounds)."""
        delta = await self.deltas.get()
        self._registry._uncharge(self, delta_cost(delta))
        return delta

    @property
    def result_future(self) -> asyncio.Future[VerifiedResult]:
        return self._future

    async def wait(self, timeout_s: float) -> VerifiedResult:
        """The verified result; UpstreamTimeout (504) or UpstreamError (502) with the request id."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._future), timeout_s)
        except TimeoutError:
            hint = (
                f"the chain finalized digest 0x{self.final_digest.hex()} but no matching output "
                "document could be fetched"
                if self.final_digest is not None
                else "no result was finalized on chain"
            )
            raise UpstreamTimeout(
                f"Timed out after {timeout_s:.0f}s waiting for request {self.request_id}: {hint}. "
                f"Look it up later with GET /v1/inferences/{self.request_id}.",
                request_id=self.request_id,
            ) from None

    def accept_signed(self) -> None:
        """Answer on the first assignee-signed result that verifies, without waiting for the chain
        (see `node.gateway.signed`); results already buffered are checked now."""
        self.answer_on_signature = True
        self._registry._advance(self)

    def release(self) -> None:
        """Forget this request (after answering, or when the client went away)."""
        self._registry.release(self)

    # --------------------------------------------------------------- internal

    def _resolve(self, result: VerifiedResult) -> None:
        if not self._future.done():
            self._future.set_result(result)
        self._cancel_fetch()

    def _fail(self, exc: GatewayError) -> None:
        if not self._future.done():
            self._future.set_exception(exc)
            self._future.exception()  # mark retrieved: a failure nobody awaits is not an error
        self._cancel_fetch()

    def _cancel_fetch(self) -> None:
        if self._fetch_task is not None and not self._fetch_task.done():
            self._fetch_task.cancel()


__all__ = ["PendingInference"]
