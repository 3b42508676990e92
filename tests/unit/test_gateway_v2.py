"""Protocol v2 in the gateway without a chain: the declared `maxTokens` of a document and its exact
price, the pending registry before and after `InferenceAssigned` (messages held, then checked
against the seats), the verification state it reports, and `inferd verify`'s explanation of each
on-chain state."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from eth_account import Account

from node.chain.hub import Phase, RequestFlag, RequestInfo, VerificationState
from node.content.cid import digest_of
from node.content.documents import (
    MAX_TOKENS,
    ChatInputDocument,
    ChatParams,
    CompletionInputDocument,
    CompletionParams,
    UserMessage,
)
from node.gateway.pending import ResultMessage
from node.gateway.records import Delta, ModelInfo
from node.gateway.responses import build_response
from node.gateway.verify import explain
from node.gateway.work import MAX_DECLARED_TOKENS, declared_max_tokens, request_price
from tests.unit.test_gateway_parts import MINER, output, registry, sign, submission


def chat(**params: Any) -> ChatInputDocument:
    return ChatInputDocument(
        model="m", messages=[UserMessage(role="user", content="hi")], params=ChatParams.model_validate(params)
    )


def completion(prompt: str | list[str], **params: Any) -> CompletionInputDocument:
    return CompletionInputDocument(model="m", prompt=prompt, params=CompletionParams.model_validate(params))


# ------------------------------------------------------------------ declared work and price


@pytest.mark.parametrize(
    ("doc", "declared"),
    [
        (chat(max_tokens=100), 100),
        (chat(max_tokens=100, n=3), 300),
        (completion(["a", "b"], max_tokens=10, n=2, best_of=4), 2 * 4 * 10),
        (completion(["a", "b", "c"], max_tokens=7, n=3), 3 * 3 * 7),
        (chat(), MAX_TOKENS),  # no max_tokens: the documents' per-sequence default
        (chat(n=8), MAX_DECLARED_TOKENS),  # 8 x 8192
        (completion(["x"] * 16, n=2), MAX_DECLARED_TOKENS),  # 32 sequences share the total cap
    ],
)
def test_declared_max_tokens_covers_everything_the_document_may_generate(
    doc: ChatInputDocument | CompletionInputDocument, declared: int
) -> None:
    assert declared_max_tokens(doc) == declared
    assert 1 <= declared_max_tokens(doc) <= MAX_DECLARED_TOKENS


def test_a_known_context_bounds_a_document_without_max_tokens_only() -> None:
    assert declared_max_tokens(chat(n=2), max_model_len=2048) == 2 * 2048
    assert declared_max_tokens(chat(max_tokens=4000), max_model_len=2048) == 4000  # declared as asked


def test_price_is_base_plus_per_token_and_rejects_out_of_range() -> None:
    assert request_price(10**15, 10**9, 256) == 10**15 + 256 * 10**9
    info = ModelInfo(31337, "m", "0x00", min_fee=5, min_stake=1, timeout_blocks=1, redundancy=1,
                     active_miners=1, per_token_fee=3)  # fmt: skip
    assert info.price(100) == request_price(5, 3, 100) == 305
    for bad in (0, MAX_DECLARED_TOKENS + 1):
        with pytest.raises(ValueError, match="maxTokens"):
            request_price(1, 1, bad)


# ------------------------------------------------------------------ registry before assignment


async def test_messages_before_assignment_are_held_then_checked_against_the_seats() -> None:
    reg, rejected = registry()
    sub = replace(submission(), assignees=())
    pending = reg.register(sub)
    data = output(sub)
    stranger = Account.create()
    reg.on_delta(31337, 7, Delta(seq=0, choice=0, text="hel", miner=MINER.address))
    reg.on_delta(31337, 7, Delta(seq=0, choice=0, text="evil", miner=stranger.address))
    reg.on_result_message(31337, 7, ResultMessage(data, sign(sub, data), MINER.address))
    assert pending.deltas.empty() and len(pending.held) == 3 and not pending.assigned
    assert pending.verification == VerificationState.PENDING
    reg.on_assigned(31337, 7, (MINER.address,))
    assert pending.verification == VerificationState.ASSIGNED  # type: ignore[comparison-overlap]
    assert pending.deltas.get_nowait().text == "hel" and pending.deltas.empty()
    assert reg.drops["not_assignee"] == 1 and not pending.held
    reg.on_verification(31337, 7, "committed")
    assert pending.verification == VerificationState.SUBMITTED
    reg.on_finalized(31337, 7, digest_of(data), "0xf")
    result = await pending.wait(1)
    assert result.signer == MINER.address and not rejected
    body = build_response("chat", result)
    assert body["onchain_data"]["verification"] == "final"
    assert body["onchain_data"]["assignment_addresses"] == [MINER.address]


async def test_assignment_and_audit_before_register_are_replayed() -> None:
    reg, _ = registry()
    sub = replace(submission(), assignees=())
    data = output(sub)
    reg.on_assigned(31337, 7, (MINER.address,))
    reg.on_verification(31337, 7, "committed")
    reg.on_verification(31337, 7, "audit")
    pending = reg.register(sub)
    assert pending.submission.assignees == (MINER.address,)
    assert pending.verification == VerificationState.AUDIT_PENDING
    reg.on_result_message(31337, 7, ResultMessage(data, sign(sub, data), MINER.address))
    reg.on_finalized(31337, 7, digest_of(data), "0xf")
    result = await pending.wait(1)
    assert build_response("chat", result)["onchain_data"]["verification"] == "audited"


async def test_a_committee_makes_the_answer_disputed() -> None:
    reg, _ = registry()
    sub = submission()
    pending = reg.register(sub)
    data = output(sub)
    reg.on_verification(31337, 7, "audit")
    reg.on_verification(31337, 7, "dispute")
    reg.on_result_message(31337, 7, ResultMessage(data, sign(sub, data), MINER.address))
    reg.on_finalized(31337, 7, digest_of(data), "0xf")
    assert build_response("chat", await pending.wait(1))["onchain_data"]["verification"] == "disputed"


# ------------------------------------------------------------------ verification states


def request(phase: Phase, flags: int = 0, committed: int = 0) -> RequestInfo:
    seats = (MINER.address, Account.create().address)
    return RequestInfo(
        id=1, phase=phase, requester=MINER.address, model_id=bytes(32), input_digest=bytes(32),
        output_digest=None, fee=1, mark=1, redundancy=1, flags=RequestFlag(flags), committed=committed,
        revealed=0, seats=seats, digests=(bytes(32), bytes(32)),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("phase", "flags", "committed", "state", "words"),
    [
        (Phase.PENDING, 0, 0, "pending", "next block"),
        (Phase.REVEAL, 0, 1, "submitted", "committed"),
        (Phase.AUDIT, 4, 1, "audit_pending", "auditor is re-executing"),
        (Phase.FINAL, 4, 3, "audited", "same digest"),
        (Phase.COMMITTEE, 12, 3, "disputed", "committee of three"),
        (Phase.FINAL, 12, 31, "disputed", "final after a dispute"),
        (Phase.FINAL, 0, 1, "final", "not drawn for audit"),
        (Phase.REFUNDED, 0, 0, "refunded", "refunded"),
    ],
)
def test_each_state_is_explained(phase: Phase, flags: int, committed: int, state: str, words: str) -> None:
    info = request(phase, flags, committed)
    assert str(info.verification_state) == state
    assert words in explain(info)
