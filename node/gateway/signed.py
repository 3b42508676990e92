"""The checks a miner's MQTT result must pass before the gateway answers with it.

**Answering on the signed result** (`PendingInference.accept_signed`, the gateway's
`answer_on = "signature"` or a request's `"finality": "signature"`): protocol v2 slashes an assignee
whose EIP-712 `InferenceResult` signature covers a digest other than the one it commits or reveals
(`proveEquivocation`), so its signed output is a binding promise and the request may be answered
before settlement. A candidate is answered only if its bytes hash to the digest its signature
recovers under (a changed byte recovers to another address), that signer is one of the request's
seats from `InferenceAssigned`, and the document names this request and its input CID
(`check_signed`). Anything else is rejected like a mismatch on the chain path, and the request keeps
waiting for the chain.

**Answering on the chain** (`check_final`): a candidate's bytes must hash to the digest the chain
finalized and its signature must recover to an assignee.

These are plain functions of the request and the message (no registry state), kept apart from
`node.gateway.pending` so the rules that decide what may be answered read in one place; the registry
decides what to do with a `RejectedResult` (count it, drop the candidate, keep waiting).
"""

from __future__ import annotations

from collections.abc import Callable

from node.chain.signing import SignatureError, recover_result_signer
from node.content.cid import digest_of
from node.content.documents import parse_output_document
from node.content.errors import ContentError
from node.gateway.early import ResultMessage
from node.gateway.records import Submission

SignatureCheck = Callable[[Submission, bytes, str], str]
"""(submission, output digest, signature) -> recovered signer address; raises ValueError if invalid."""


class RejectedResult(Exception):
    """A result candidate that may not be answered; `reason` says why (logged and counted)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def recover_submission_signer(sub: Submission, digest: bytes, signature: str) -> str:
    """The `SignatureCheck` of a real result: who signed (request, input, output digest) under EIP-712."""
    try:
        return recover_result_signer(
            signature,
            chain_id=sub.chain_id,
            hub=sub.hub,
            request_id=sub.request_id,
            input_digest=sub.input_digest,
            output_digest=digest,
        )
    except SignatureError as exc:
        raise ValueError(str(exc)) from exc


def is_assignee(sub: Submission, address: str | None) -> bool:
    """Whether `address` holds one of the request's seats (case-insensitive)."""
    return (address or "").lower() in {a.lower() for a in sub.assignees}


def check_signed(sub: Submission, message: ResultMessage, check_signature: SignatureCheck) -> str:
    """The signer of a result that may be answered before settlement (module docstring); raises
    `RejectedResult` otherwise."""
    digest = digest_of(message.output_bytes)
    try:
        signer = check_signature(sub, digest, message.signature)
    except ValueError as exc:
        raise RejectedResult(f"bad signature from {message.miner}: {exc}") from exc
    if not is_assignee(sub, signer):
        raise RejectedResult(
            f"the signature over sha256 0x{digest.hex()} recovers to {signer}, not an assignee "
            "(forged, or the document is not the one that was signed)"
        )
    try:
        output = parse_output_document(message.output_bytes)
    except ContentError as exc:
        raise RejectedResult(f"signed result is not an output document: {exc}") from exc
    if output.request_id != sub.request_id or output.input_cid != sub.input_cid:
        raise RejectedResult(
            f"signed result answers request {output.request_id} / input {output.input_cid}, not this one"
        )
    return signer


def check_final(
    sub: Submission, message: ResultMessage, final: bytes, check_signature: SignatureCheck
) -> str:
    """The signer of a result whose bytes are the ones the chain finalized (`final`, their sha256);
    raises `RejectedResult` otherwise. The document itself is checked when the request resolves."""
    digest = digest_of(message.output_bytes)
    if digest != final:
        raise RejectedResult(f"digest 0x{digest.hex()} from {message.miner} != on-chain 0x{final.hex()}")
    try:
        signer = check_signature(sub, digest, message.signature)
    except ValueError as exc:
        raise RejectedResult(f"bad signature from {message.miner}: {exc}") from exc
    if not is_assignee(sub, signer):
        raise RejectedResult(f"signature recovers to {signer}, not an assignee")
    return signer


__all__ = [
    "RejectedResult",
    "SignatureCheck",
    "check_final",
    "check_signed",
    "is_assignee",
    "recover_submission_signer",
]
