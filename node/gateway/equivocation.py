"""The gateway holds miners to what they signed: it proves an equivocation it can see.

An answer given before settlement (`gateway.answer_on = "signature"`, `settlement: pending`) rests
on the assignee's EIP-712 `InferenceResult` signature, and protocol v2 slashes an assignee whose
signature covers a digest other than the one it commits or reveals (`proveEquivocation`; the prover
gets 10% of the slash). The gateway is the one party sure to hold that signature, so it watches the
signer's own `ResultCommitted` and `ResultRevealed`: a commitment that is not
`keccak256(abi.encode(signedDigest, miner, id))`, or a revealed digest other than the signed one,
is proven at once with the gateway's wallet. The hub re-checks everything (a proof that is not one
reverts in the gas estimate, before anything is paid), so a mistake here costs nothing but a log.
"""

from __future__ import annotations

from node.chain.events import ResultCommitted, ResultRevealed
from node.chain.hub import commitment
from node.content.cid import digest_of
from node.gateway.records import VerifiedResult


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


__all__ = ["broken_promise"]
