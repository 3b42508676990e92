"""`GET /v1/inferences/{id}`: how one request looks, built from the chain's request view and what
this gateway answered for it (if it still remembers).

Kept out of the chain backend because it is pure presentation: the backend reads the chain and the
content store, this module only shapes the record (phase, verification, seats and revealed CIDs,
`settlement`, `answer` with `matches_final`, and the full response once final and answered here).
"""

from __future__ import annotations

from typing import Any

from node.chain.hub import UNAVAILABLE, Phase, RequestInfo
from node.content.cid import digest_of, digest_to_cid
from node.gateway.records import VerifiedResult
from node.gateway.responses import build_response


def has_final_output(info: RequestInfo) -> bool:
    """Final with an output (not refunded, not finalized as UNAVAILABLE)."""
    return info.phase == Phase.FINAL and info.output_digest not in (None, UNAVAILABLE)


def answer_record(
    recent: VerifiedResult | None, final_digest: bytes | None, settled: bool
) -> dict[str, Any] | None:
    """What this gateway answered for the request, if it still remembers, and whether the chain
    settled on exactly that (`matches_final`: None while settling)."""
    if recent is None:
        return None
    answered = digest_of(recent.output_bytes)
    return {
        "output_cid": recent.output_cid,
        "signer": recent.signer,
        "settlement": recent.extra.get("settlement", "final"),
        "matches_final": (final_digest == answered) if settled else None,
    }


def inference_record(
    chain_id: int, hub: str, request_id: int, info: RequestInfo, recent: VerifiedResult | None
) -> dict[str, Any]:
    """The record; `output` and `response` are filled only when `recent` is the final answer (the
    caller may then read a final output from the content store)."""
    final = has_final_output(info)
    settled = info.phase in (Phase.FINAL, Phase.REFUNDED)
    revealed = [info.revealed_digest(seat) for seat in info.seats]
    record: dict[str, Any] = {
        "object": "inference",
        "chain_id": chain_id,
        "hub": hub,
        "request_id": request_id,
        "status": "finalized" if info.phase == Phase.FINAL else info.phase.name.lower(),
        "phase": info.phase.name.lower(),
        "verification": str(info.verification_state),
        "flags": int(info.flags),
        "requester": info.requester,
        "model_id": "0x" + info.model_id.hex(),
        "input_cid": digest_to_cid(info.input_digest),
        "output_cid": digest_to_cid(info.output_digest) if final and info.output_digest else None,
        "unavailable": info.output_digest == UNAVAILABLE,
        "fee_wei": str(info.fee),
        "mark_block": info.mark,
        "redundancy": info.redundancy,
        "reassigned": info.reassigned,
        "assignment_addresses": list(info.assignees),
        "seats": list(info.seats),
        "revealed_cids": [digest_to_cid(d) if d is not None and d != UNAVAILABLE else None for d in revealed],
        "settlement": "final" if settled else "pending",
        "answer": answer_record(recent, info.output_digest if final else None, settled),
        "output": None,
        "response": None,
    }
    if not final or info.output_digest is None:
        return record
    if recent is not None and info.output_digest == digest_of(recent.output_bytes):
        kind = "chat" if recent.output.object == "chat.completion" else "completion"
        record["response"] = build_response(kind, recent)
        record["response"]["onchain_data"].update(
            verification=str(info.verification_state), phase="final", settlement="final"
        )
        record["output"] = recent.output.model_dump(mode="json")
    return record


__all__ = ["answer_record", "has_final_output", "inference_record"]
