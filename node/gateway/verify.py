"""Offline verification of a gateway answer against the chain: what `inferd verify` runs.

A response carries the output document's content (choices, usage, model, created, fingerprint) and
`onchain_data`; the output document is rebuilt from it, encoded as its version requires
(`onchain_data.document_version`: 3 is RFC 8785; 1 when absent, as in answers written before
version 3) and hashed, and that digest must equal the one the hub finalized for `request_id`, whose
CID must be `output_cid`. The input CID must match the on-chain input digest, and the signature must
recover (EIP-712, domain `{name: "inferd", version: "2"}`, checked against the hub's own
`domainSeparator()`) to one of the request's seats. Any changed character in the answer changes the
digest, so it fails.

Protocol v2 results are verified in stages, and the verdict explains which one a request reached
(`verification`): `submitted` (the assignee committed, not revealed), `audit_pending` (a sampled
auditor is re-executing it), `audited` (final, and an independent auditor got the same digest),
`disputed` (auditor and assignee disagreed: a committee of three, maybe an escalation vote, decides),
`final` (final, not drawn for audit) or `refunded`. Only a final result (final, audited, or final
after a dispute) is valid: before that the digest it would be checked against can still change.

An answer the gateway gave on the assignee's signed result (`onchain_data.settlement: pending`) is
not valid yet, whatever its signature: the verdict says so and checks the signature, which binds the
signer (protocol v2 slashes an assignee that commits or reveals another digest); verify it again
once the request is final.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from node.chain.errors import ChainError
from node.chain.hub import UNAVAILABLE, HubClient, Phase, RequestInfo, VerificationState
from node.chain.signing import DOMAIN_VERSION, SignatureError, recover_result_signer, result_signable
from node.content.cid import cid_to_digest, digest_of, digest_to_cid
from node.content.documents import (
    DOCUMENT_VERSION,
    OutputDocument,
    parse_output_document,
    to_canonical_bytes,
)
from node.content.errors import ContentError
from node.content.store import ContentStore


@dataclass(frozen=True)
class Check:
    """One verification step and its outcome (`ok` None means skipped, not failed)."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class Verdict:
    """All checks; valid only if none failed and the decisive ones ran."""

    request_id: int | None = None
    chain_id: int | None = None
    verification: str | None = None
    """The request's verification state on chain (`node.chain.hub.VerificationState`)."""
    checks: list[Check] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        ran = {c.name for c in self.checks if c.ok is True}
        return all(c.ok is not False for c in self.checks) and {"output digest", "on-chain status"} <= ran

    def add(self, name: str, ok: bool | None, detail: str) -> bool | None:
        self.checks.append(Check(name, ok, detail))
        return ok

    def as_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "request_id": self.request_id,
            "chain_id": self.chain_id,
            "verification": self.verification,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


class ResponseFormatError(ValueError):
    """The file is not a gateway response (no `onchain_data`, or not the OpenAI shape)."""


def _strip_nulls(obj: dict[str, Any], keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None or k in keep}


def output_document_from_response(response: dict[str, Any]) -> OutputDocument:
    """Rebuild the output document a gateway response was made from (ResponseFormatError if not one)."""
    od = response.get("onchain_data")
    if not isinstance(od, dict):
        raise ResponseFormatError("no `onchain_data` object: this is not an inferd gateway response")
    obj = response.get("object")
    if obj not in ("chat.completion", "text_completion"):
        raise ResponseFormatError(f"`object` is {obj!r}, expected chat.completion or text_completion")
    choices: list[dict[str, Any]] = []
    for raw in response.get("choices") or []:
        if not isinstance(raw, dict):
            raise ResponseFormatError("a choice is not an object")
        choice = _strip_nulls(raw)
        if isinstance(choice.get("message"), dict):
            msg = _strip_nulls(choice["message"], frozenset({"content"}))
            msg.pop("refusal", None)
            choice["message"] = msg
        choices.append(choice)
    doc = {
        "v": od.get("document_version") or DOCUMENT_VERSION,
        "request_id": od.get("request_id"),
        "input_cid": od.get("input_cid"),
        "model": response.get("model"),
        "system_fingerprint": response.get("system_fingerprint"),
        "object": obj,
        "created": response.get("created"),
        "choices": choices,
        "usage": response.get("usage"),
        "error": None,
        "salt": od.get("output_salt"),  # private answers only (issue 16)
    }
    try:
        return OutputDocument.model_validate(_strip_nulls(doc, frozenset({"error"})), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ResponseFormatError(f"cannot rebuild the output document: {where}: {first['msg']}") from None


_EXPLAIN: dict[VerificationState, str] = {
    VerificationState.PENDING: "paid; its seats are drawn from the next block on (not assigned yet)",
    VerificationState.ASSIGNED: "assigned; no result committed yet",
    VerificationState.SUBMITTED: "the assignee committed its result (commit-reveal); not revealed yet",
    VerificationState.AUDIT_PENDING: "drawn for audit: an independent auditor is re-executing the input",
    VerificationState.AUDITED: "final, and audited: an independent auditor re-executed the input and "
    "revealed the same digest",
    VerificationState.DISPUTED: "disputed: the auditor and the assignee disagreed, so a committee of three "
    "re-executed it (the outvoted side may escalate to a vote of all miners)",
    VerificationState.FINAL: "final; not drawn for audit this time (audits are sampled at auditBps)",
    VerificationState.REFUNDED: "refunded: nobody could be assigned, or nobody answered in time",
}


def explain(info: RequestInfo) -> str:
    """One sentence on where request `info` stands, for people."""
    state = info.verification_state
    if state == VerificationState.DISPUTED and info.phase == Phase.FINAL:
        return "final after a dispute: a committee (and any escalation vote) settled on this digest"
    return _EXPLAIN[state]


async def _check_onchain(
    verdict: Verdict, hub: HubClient, request_id: int, output_digest: bytes | None
) -> RequestInfo | None:
    try:
        info = await hub.get_request(request_id)
    except (ChainError, OSError) as exc:
        verdict.add("on-chain status", False, f"cannot read request {request_id}: {exc}")
        return None
    verdict.verification = str(info.verification_state)
    verdict.add("verification", None, f"{info.verification_state}: {explain(info)}")
    if info.phase != Phase.FINAL or info.output_digest is None:
        verdict.add(
            "on-chain status",
            False,
            f"request {request_id} is in phase {info.phase.name}, not FINAL: still settling, verify it "
            "again once final",
        )
        return info
    if info.output_digest == UNAVAILABLE:
        verdict.add(
            "on-chain status", False, f"request {request_id} finalized as UNAVAILABLE (input not fetchable)"
        )
        return info
    verdict.add("on-chain status", True, f"request {request_id} is FINAL ({info.verification_state})")
    if output_digest is not None:
        ok = info.output_digest == output_digest
        verdict.add(
            "output digest",
            ok,
            f"sha256(output document) 0x{output_digest.hex()} "
            + ("== on-chain digest" if ok else f"!= on-chain 0x{info.output_digest.hex()}"),
        )
    return info


async def _check_domain(verdict: Verdict, hub: HubClient, chain_id: int) -> None:
    """The hub's EIP-712 domain must be the v2 one this verifier signs-checks under."""
    try:
        onchain = await hub.domain_separator()
    except (ChainError, OSError) as exc:
        verdict.add("signature domain", False, f"cannot read the hub's domainSeparator(): {exc}")
        return
    local = bytes(result_signable(chain_id, hub.address, 0, bytes(32), bytes(32)).header)
    ok = onchain == local
    verdict.add(
        "signature domain",
        ok,
        f'EIP-712 domain {{name: "inferd", version: "{DOMAIN_VERSION}"}} '
        + ("matches the hub's" if ok else f"differs from the hub's 0x{onchain.hex()} (not a v2 hub?)"),
    )


def _check_signature(
    verdict: Verdict,
    signature: str | None,
    *,
    chain_id: int,
    hub: str,
    info: RequestInfo,
    output_digest: bytes,
) -> None:
    if not signature:
        revealed = [a for a in info.seats if info.revealed_digest(a) == output_digest]
        verdict.add(
            "signature",
            None,
            "no miner signature in the response (the gateway had no broker); the result was revealed "
            f"on chain by seat(s) {', '.join(revealed) or '?'}",
        )
        return
    try:
        signer = recover_result_signer(
            signature,
            chain_id=chain_id,
            hub=hub,
            request_id=info.id,
            input_digest=info.input_digest,
            output_digest=output_digest,
        )
    except SignatureError as exc:
        verdict.add("signature", False, str(exc))
        return
    ok = signer in info.seats
    role = "an assignee" if signer in info.assignees else "a seat (auditor / committee)"
    verdict.add(
        "signature",
        ok,
        f"EIP-712 signature recovers to {signer}, "
        + (f"{role} of the request" if ok else f"not among its seats {', '.join(info.seats)}"),
    )


async def verify_response(response: dict[str, Any], hub: HubClient) -> Verdict:
    """All checks for one saved gateway response (see module docstring)."""
    verdict = Verdict()
    try:
        doc = output_document_from_response(response)
    except ResponseFormatError as exc:
        verdict.add("response format", False, str(exc))
        return verdict
    od: dict[str, Any] = response["onchain_data"]
    verdict.request_id = doc.request_id
    verdict.chain_id = od.get("chain_id")
    chain_id = int(await hub.w3.eth.chain_id)
    if verdict.chain_id != chain_id or str(od.get("hub", "")).lower() != hub.address.lower():
        verdict.add(
            "chain",
            False,
            f"response is for chain {verdict.chain_id} hub {od.get('hub')}, "
            f"but the RPC serves chain {chain_id} hub {hub.address}",
        )
        return verdict
    verdict.add("chain", True, f"chain {chain_id}, hub {hub.address}")
    await _check_domain(verdict, hub, chain_id)
    data = to_canonical_bytes(doc)
    digest = digest_of(data)
    cid = digest_to_cid(digest)
    verdict.add(
        "output cid",
        cid == od.get("output_cid"),
        f"rebuilt output document hashes to {cid}"
        + ("" if cid == od.get("output_cid") else f", response claims {od.get('output_cid')}"),
    )
    if od.get("settlement") == "pending":
        verdict.add(
            "settlement",
            None,
            "answered on the assignee's signed result before the chain settled it; the signature "
            "binds the signer (another commit or reveal is slashed via proveEquivocation)",
        )
    info = await _check_onchain(verdict, hub, doc.request_id, digest)
    if info is None:
        return verdict
    try:
        input_ok = cid_to_digest(str(od.get("input_cid"))) == info.input_digest
    except ContentError:
        input_ok = False
    verdict.add(
        "input cid",
        input_ok,
        f"input_cid {od.get('input_cid')} "
        + ("matches" if input_ok else "does not match")
        + f" the on-chain input digest (CID {digest_to_cid(info.input_digest)})",
    )
    assigned = sorted(a.lower() for a in od.get("assignment_addresses") or [])
    on_chain = sorted(a.lower() for a in info.assignees)
    verdict.add(
        "assignees",
        assigned == on_chain,
        "assignment_addresses match the chain"
        if assigned == on_chain
        else f"assignment_addresses {assigned} != on-chain {on_chain}",
    )
    _check_signature(
        verdict,
        response.get("signature"),
        chain_id=chain_id,
        hub=hub.address,
        info=info,
        output_digest=digest,
    )
    return verdict


async def verify_request_id(request_id: int, hub: HubClient, store: ContentStore | None) -> Verdict:
    """Check a request by id: finalized on chain, and its output document (fetched by CID) consistent."""
    verdict = Verdict(request_id=request_id)
    verdict.chain_id = int(await hub.w3.eth.chain_id)
    info = await _check_onchain(verdict, hub, request_id, None)
    if info is None or info.output_digest is None:
        return verdict
    cid = digest_to_cid(info.output_digest)
    if store is None:
        verdict.add("output digest", None, f"no content store configured to fetch {cid}")
        return verdict
    try:
        data = await store.get(cid)  # stores verify bytes against the CID
    except ContentError as exc:
        verdict.add("output digest", False, f"cannot fetch output {cid}: {exc}")
        return verdict
    verdict.add(
        "output digest", digest_of(data) == info.output_digest, f"output document {cid} fetched and verified"
    )
    try:
        doc = parse_output_document(data)
    except ContentError as exc:
        verdict.add("output document", False, f"not a valid output document: {exc}")
        return verdict
    consistent = doc.request_id == request_id and doc.input_cid == digest_to_cid(info.input_digest)
    verdict.add(
        "output document",
        consistent,
        f"answers request {doc.request_id} for input {doc.input_cid}"
        + ("" if consistent else " (not this request!)"),
    )
    if doc.error is not None:
        verdict.add(
            "output error", None, f"the miner answered with an error: {doc.error.code}: {doc.error.message}"
        )
    return verdict


__all__ = [
    "Check",
    "ResponseFormatError",
    "Verdict",
    "output_document_from_response",
    "verify_request_id",
    "verify_response",
]
