"""The gateway holds miners to what they signed: it proves an equivocation it can see.

An answer given before settlement (`gateway.answer_on = "signature"`, `settlement: pending`) rests
on the assignee's EIP-712 `InferenceResult` signature, and protocol v2 slashes an assignee whose
signature covers a digest other than the one it commits or reveals (`proveEquivocation`; the prover
gets 10% of the slash). The gateway is the one party sure to hold that signature, so it watches the
signer's own `ResultCommitted` and `ResultRevealed`: a commitment that is not
`keccak256(abi.encode(signedDigest, miner, id))`, or a revealed digest other than the signed one,
is proven at once with the gateway's wallet. The hub re-checks everything (a proof that is not one
reverts in the gas estimate, before anything is paid), so a mistake here costs nothing but a log.

An r = 1 seat may commit inside a batch root (`commitBatch`; the request's head has
`RequestFlag.BATCH`): its `ResultCommitted` carries the root, which proves nothing alone, so the
gateway waits for the reveal. A revealed digest other than the signed one is then proven with
`proveBatchEquivocation`, from the batch's ids and leaves in the reveal's `BatchRevealed` log.

Whether a contradicted `ResultCommitted` is a batch root is read from the events themselves, not
from the chain: `commitBatch` emits the same root for every id of the batch in one transaction, and
two ordinary commitments of different ids never coincide (each hashes its id), so a commitment the
same miner's other `ResultCommitted` of that transaction carries is a root; a root of one id is
recognised by recomputing it from the signed leaf. The follower hands over each block range's events
(`block_events`), where all the logs of a transaction are. Honest batch commits thus cost no
`getRequest` each; only a contradiction the events cannot place (a commitment that is no root: a
real lie, or a root the events did not show) is read from the chain, as a reveal's contradiction
of a seat whose commit was not seen as a root is.

`broken_promise` is the pure check; `PromiseKeeper` is what the chain backend calls from its event
path: it looks the request up in the backend's recent answers, proves at most once per event kind in a
supervised background task (`equivocation`), and logs a signed answer the chain settled differently.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence

from eth_utils.address import to_checksum_address

from node.chain.events import BatchRevealed, ResultCommitted, ResultRevealed, decode_logs
from node.chain.hub import RequestFlag, batch_root, commitment
from node.chain.sender import TxWouldRevert
from node.content.cid import digest_of, digest_to_cid
from node.gateway.link import ChainLink
from node.gateway.records import VerifiedResult
from node.log import get_logger
from node.supervise import Supervisor

log = get_logger("gateway.chain")  # the chain backend's logger: its events did not change with the split

BATCHED_REMEMBERED = 4096
"""Requests remembered as committed inside a batch root (their reveal's proof needs to know it)."""


def broken_promise(result: VerifiedResult | None, ev: ResultCommitted | ResultRevealed) -> bytes | None:
    """The digest `ev.miner` signed for this request if `ev` contradicts it, else None.

    Only answers given on a signature before settlement count (`result.extra["settlement"]`);
    the request, signer and event must be the same.
    """
    if result is None or result.signature is None or result.signer is None:
        return None
    if result.extra.get("settlement") != "pending" or result.submission.request_id != ev.id:
        return None
    if result.signer.lower() != ev.miner.lower():
        return None
    signed = digest_of(result.output_bytes)
    if isinstance(ev, ResultRevealed):
        return signed if ev.output_digest != signed else None
    return signed if ev.commitment != commitment(signed, ev.miner, ev.id) else None


class PromiseKeeper:
    """Holds the signers of answers given before settlement to what they signed (module docstring).

    `links` and `recent` are the chain backend's own (read here, never replaced); proofs run as
    tasks in `tasks`, the backend's set of background tasks cancelled on close.
    """

    def __init__(
        self,
        links: Mapping[int, ChainLink],
        recent: Mapping[tuple[int, int], VerifiedResult],
        loops: Supervisor,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.links = links
        self.recent = recent
        self.loops = loops
        self.tasks = tasks
        self.proven: set[tuple[int, int, str]] = set()
        """(chain, request, "commit" | "reveal"): the events whose contradiction this gateway went to
        prove (`hold`; a batch root's commit proves nothing, so its reveal is tried on its own)."""
        self.batched: OrderedDict[tuple[int, int], None] = OrderedDict()
        """(chain, request): seats whose `ResultCommitted` carried a batch root (module docstring)."""
        self._events: Sequence[object] = ()
        self._roots: Counter[tuple[str, str, bytes]] | None = None
        """(transaction, miner, commitment) → how many ids carry it among `_events` (built lazily)."""

    def block_events(self, events: Sequence[object]) -> None:
        """The events of the block range the follower is delivering (the context `hold` reads roots
        from: a transaction's logs all come in one range)."""
        self._events, self._roots = events, None

    def _batched(self, chain_id: int, request_id: int) -> None:
        self.batched[(chain_id, request_id)] = None
        while len(self.batched) > BATCHED_REMEMBERED:
            self.batched.popitem(last=False)

    def _shared_root(self, ev: ResultCommitted) -> bool:
        """Whether another id's `ResultCommitted` of the same miner and transaction carries the
        same commitment: a `commitBatch` root (module docstring)."""
        if self._roots is None:
            self._roots = Counter(
                (e.log.tx_hash, e.miner.lower(), e.commitment)
                for e in self._events
                if isinstance(e, ResultCommitted)
            )
        return self._roots[(ev.log.tx_hash, ev.miner.lower(), ev.commitment)] > 1

    def check_signed_answer(self, chain_id: int, request_id: int, digest: bytes) -> None:
        """An answer given on a signed result that the chain then settled differently: say so (its
        signer is slashable; `GET /v1/inferences/{id}` shows `answer.matches_final: false`)."""
        recent = self.recent.get((chain_id, request_id))
        if recent is None or recent.extra.get("settlement") != "pending":
            return
        if digest_of(recent.output_bytes) != digest:
            log.warning(
                "signed_answer_not_final", request_id=request_id, chain_id=chain_id, signer=recent.signer,
                answered=recent.output_cid, final=digest_to_cid(digest),
            )  # fmt: skip

    def hold(self, chain_id: int, ev: ResultCommitted | ResultRevealed) -> None:
        """A seat we answered on committed or revealed something else than it signed: prove it."""
        recent = self.recent.get((chain_id, ev.id))
        if recent is None:
            return
        if isinstance(ev, ResultCommitted) and self._shared_root(ev):  # before hashing anything
            self._batched(chain_id, ev.id)  # a root proves nothing alone: its reveal will
            return
        signed = broken_promise(recent, ev)
        link = self.links.get(chain_id)
        if signed is None or recent.signature is None or link is None:
            return
        batch: bool | None = None  # unknown: the request view says
        if isinstance(ev, ResultCommitted):
            if ev.commitment == batch_root([ev.id], [commitment(signed, ev.miner, ev.id)]):
                self._batched(chain_id, ev.id)  # a root of one id, the signed digest's leaf
                return
        elif (chain_id, ev.id) in self.batched:
            batch = True
        key = (chain_id, ev.id, "reveal" if isinstance(ev, ResultRevealed) else "commit")
        if key in self.proven:
            return
        self.proven.add(key)
        coro = self.prove(link, ev, signed, recent.signature, batch=batch)
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)  # background tasks cancelled on close
        task.add_done_callback(self.tasks.discard)

    async def prove(
        self,
        link: ChainLink,
        ev: ResultCommitted | ResultRevealed,
        signed: bytes,
        signature: str,
        *,
        batch: bool | None = None,
    ) -> None:
        """`proveEquivocation` (or, for a batch-committed seat, `proveBatchEquivocation`) with the
        gateway's wallet; `batch` None: whether the seat committed in a root is read from the chain."""
        request_id, miner = ev.id, ev.miner
        with self.loops.guard("equivocation", request_id=request_id):
            sig = bytes.fromhex(signature.removeprefix("0x"))
            args: list[object] = [request_id, to_checksum_address(miner), signed, sig]
            fn = "proveEquivocation"
            if batch is None:
                batch = RequestFlag.BATCH in (await link.hub.get_request(request_id)).flags
            if batch:
                if isinstance(ev, ResultCommitted):  # a root: only its reveal can prove anything
                    return
                root = await self._batch_of(link, ev)
                if root is None:
                    log.warning("equivocation_batch_missing", request_id=request_id, miner=miner)
                    return
                fn = "proveBatchEquivocation"
                args += [list(root.ids), list(root.leaves)]
            data = link.hub.encode(fn, *args)
            try:
                call = {"from": link.sender.address, "to": link.hub_address, "data": data}
                receipt = await link.sender.send(link.hub_address, data, gas=await link.sender.estimate(call))
            except TxWouldRevert as exc:  # proven by someone else first, or no proof after all
                log.info("equivocation_not_proven", request_id=request_id, miner=miner, error=str(exc))
                return
            tx = receipt.get("transactionHash")
            log.warning(
                "equivocation_proven", request_id=request_id, miner=miner, signed="0x" + signed.hex(),
                tx=tx.hex() if isinstance(tx, bytes) else str(tx),
            )  # fmt: skip

    @staticmethod
    async def _batch_of(link: ChainLink, ev: ResultRevealed) -> BatchRevealed | None:
        """The `BatchRevealed` log of the transaction that revealed `ev` (it names the whole root)."""
        receipt = await link.hub.w3.eth.get_transaction_receipt(ev.log.tx_hash)  # type: ignore[arg-type]
        for other in decode_logs(receipt["logs"]):
            if (
                isinstance(other, BatchRevealed)
                and other.miner.lower() == ev.miner.lower()
                and ev.id in other.ids
            ):
                return other
        return None


__all__ = ["PromiseKeeper", "broken_promise"]
