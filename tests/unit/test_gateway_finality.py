"""Answering on the signed result, without a chain: the `finality` request field, the pending
registry's checks of a signed result before settlement, and the HTTP answer's `settlement`.

The registry and the EIP-712 check are the real ones; signatures are made with real keys. A signed
result is answered before the chain settles only when its bytes hash to the digest its signature
covers, the signer is an assignee of this request, and the document names this request's input;
otherwise it is rejected and the request keeps waiting for the chain. A signer that then commits
or reveals another digest is seen (`broken_promise`) so that the gateway can prove the equivocation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from eth_account import Account

from node.chain.events import LogRef, ResultCommitted, ResultRevealed
from node.chain.hub import RequestFlag, batch_root, commitment
from node.chain.signing import sign_result
from node.config import load_settings
from node.content.cid import cid_for_bytes, digest_of, digest_to_cid
from node.content.documents import AssistantOutput, ChatChoice, OutputDocument, Usage, to_canonical_bytes
from node.content.errors import ContentNotFound
from node.content.local import LocalStore
from node.gateway.app import create_app
from node.gateway.auth import KeyStore
from node.gateway.equivocation import PromiseKeeper, broken_promise
from node.gateway.errors import InvalidRequest
from node.gateway.pending import PendingRegistry, ResultMessage, recover_submission_signer
from node.gateway.records import Submission, VerifiedResult
from node.gateway.responses import build_response
from node.gateway.schemas import parse_chat_request, parse_completion_request
from node.gateway.testing import FakeBackend
from node.supervise import Supervisor

HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
INPUT = b'{"v":1,"input":"x"}'
MODEL = "SmolLM2-135M-Instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
ASSIGNEE = Account.create()
INTRUDER = Account.create()


# ------------------------------------------------------------------ schema


@pytest.mark.parametrize("value", ["onchain", "signature"])
def test_finality_is_a_transport_field(value: str) -> None:
    chat = parse_chat_request({**CHAT, "finality": value})
    comp = parse_completion_request({"model": MODEL, "prompt": "hi", "finality": value})
    assert chat.finality == value and comp.finality == value
    without = parse_chat_request(CHAT)
    assert without.finality is None and chat.document_bytes == without.document_bytes  # not on chain


@pytest.mark.parametrize("value", ["chain", "ONCHAIN", "", 1, True, ["onchain"], {"mode": "onchain"}])
def test_bad_finality_is_a_400_naming_it(value: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request({**CHAT, "finality": value})
    assert caught.value.param == "finality" and caught.value.code == "invalid_value"
    assert "'onchain'" in caught.value.message and "'signature'" in caught.value.message


# ------------------------------------------------------------------ registry


def _submission(request_id: int = 7) -> Submission:
    return Submission(
        chain_id=31337, hub=HUB, request_id=request_id, infer_tx="0x" + "11" * 32,
        assignees=(ASSIGNEE.address,), input_cid=cid_for_bytes(INPUT), input_digest=digest_of(INPUT),
        model="m",
    )  # fmt: skip


def _output(sub: Submission, text: str, *, input_cid: str | None = None) -> bytes:
    doc = OutputDocument(
        request_id=sub.request_id, input_cid=input_cid or sub.input_cid, model=sub.model,
        system_fingerprint="fp", object="chat.completion", created=1_700_000_000,
        choices=[ChatChoice(index=0, message=AssistantOutput(content=text), finish_reason="stop")],
        usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
    )  # fmt: skip
    return to_canonical_bytes(doc)


def _signed(
    sub: Submission, data: bytes, key: Any = ASSIGNEE.key, *, sent: bytes | None = None
) -> ResultMessage:
    """`data` signed by `key`; `sent` (default `data`) is what the message carries."""
    sig = sign_result(
        key, chain_id=sub.chain_id, hub=sub.hub, request_id=sub.request_id, input_digest=sub.input_digest,
        output_digest=digest_of(data),
    )  # fmt: skip
    return ResultMessage(
        output_bytes=sent if sent is not None else data, signature=sig, miner=ASSIGNEE.address
    )


class Store:
    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}

    async def get(self, cid: str) -> bytes:
        if cid not in self.blocks:
            raise ContentNotFound(cid)
        return self.blocks[cid]


@pytest.fixture()
async def registry() -> AsyncIterator[tuple[PendingRegistry, Store]]:
    store = Store()
    reg = PendingRegistry(recover_submission_signer, store.get, grace_s=0.0, fetch_retry_s=0.01)
    yield reg, store
    await reg.close()


async def test_a_verified_signed_result_answers_before_settlement(
    registry: tuple[PendingRegistry, Store],
) -> None:
    reg, _ = registry
    sub = _submission()
    good = _output(sub, "honest")
    pending = reg.register(sub)
    reg.on_committed(31337, sub.request_id, ASSIGNEE.address, "0xc0")
    reg.on_result_message(31337, sub.request_id, _signed(sub, good))
    assert not pending.done()  # buffered until the request answers on signatures
    pending.accept_signed()
    result = await pending.wait(1)
    assert result.output_bytes == good and result.signer == ASSIGNEE.address
    assert result.extra["settlement"] == "pending" and result.submit_tx == "0xc0"
    od = build_response("chat", result)["onchain_data"]
    assert od["settlement"] == "pending" and od["phase"] is None and od["verification"] == "submitted"
    assert od["output_cid"] == digest_to_cid(digest_of(good)) and pending.rejections == []
    assert reg.buffered_bytes == 0


async def test_forged_results_are_never_answered_and_the_chain_decides(
    registry: tuple[PendingRegistry, Store],
) -> None:
    reg, store = registry
    sub = _submission()
    good, evil = _output(sub, "honest"), _output(sub, "EVIL")
    pending = reg.register(sub)
    pending.accept_signed()
    forgeries = [
        _signed(sub, evil, INTRUDER.key),  # a non-assignee's signature
        _signed(sub, good, sent=evil),  # the assignee signed other bytes than these
        ResultMessage(evil, "0x" + "00" * 65, ASSIGNEE.address),  # not a signature
        _signed(sub, _output(sub, "EVIL", input_cid=cid_for_bytes(b"other input"))),  # another input
        _signed(_submission(8), _output(_submission(8), "EVIL")),  # signed for another request
    ]
    for message in forgeries:
        reg.on_result_message(31337, sub.request_id, message)
    await asyncio.sleep(0)
    assert not pending.done() and len(pending.rejections) == len(forgeries)
    assert "not an assignee" in pending.rejections[0] and "not an assignee" in pending.rejections[1]
    assert "bad signature" in pending.rejections[2] and "input" in pending.rejections[3]
    store.blocks[digest_to_cid(digest_of(good))] = good
    reg.on_finalized(31337, sub.request_id, digest_of(good), "0xf1")  # the chain settles the honest one
    result = await pending.wait(2)
    assert result.output_bytes == good and result.extra["settlement"] == "final"
    assert build_response("chat", result)["onchain_data"]["phase"] == "final"


async def test_without_accept_signed_a_signed_result_waits_for_the_chain(
    registry: tuple[PendingRegistry, Store],
) -> None:
    reg, _ = registry
    sub = _submission()
    good = _output(sub, "honest")
    pending = reg.register(sub)
    reg.on_result_message(31337, sub.request_id, _signed(sub, good))
    await asyncio.sleep(0.05)
    assert not pending.done()
    reg.on_finalized(31337, sub.request_id, digest_of(good), "0xf1")
    result = await pending.wait(1)
    assert result.extra["settlement"] == "final" and result.signer == ASSIGNEE.address


async def test_held_until_assigned_then_answered(registry: tuple[PendingRegistry, Store]) -> None:
    """v2 names the seats a block later: a signed result that came first is checked on assignment."""
    reg, _ = registry
    sub = _submission()
    good = _output(sub, "honest")
    pending = reg.register(Submission(**{**sub.__dict__, "assignees": ()}))
    pending.accept_signed()
    reg.on_result_message(31337, sub.request_id, _signed(sub, good))
    assert not pending.done()
    reg.on_assigned(31337, sub.request_id, (ASSIGNEE.address,))
    assert (await pending.wait(1)).extra["settlement"] == "pending"


# ------------------------------------------------------------------ HTTP


async def _post(tmp: Path, body: dict[str, Any], **gateway: Any) -> httpx.Response:
    settings = load_settings(data_dir=tmp, gateway={"request_timeout_s": 5.0, **gateway})
    keys = KeyStore(tmp / "keys.json")
    key, _ = keys.add("tests")
    app = create_app(settings, backend=FakeBackend(), store=LocalStore(tmp / "blocks"), keys=keys)
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=auth) as http,
    ):
        return await http.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize(
    ("answer_on", "finality", "settlement"),
    [
        ("chain", None, "final"),
        ("chain", "signature", "pending"),
        ("signature", None, "pending"),
        ("signature", "onchain", "final"),
    ],
)
async def test_settlement_follows_the_setting_and_the_request(
    tmp_path: Path, answer_on: str, finality: str | None, settlement: str
) -> None:
    body = CHAT if finality is None else {**CHAT, "finality": finality}
    reply = await _post(tmp_path, body, answer_on=answer_on)
    assert reply.status_code == 200, reply.text
    assert reply.json()["onchain_data"]["settlement"] == settlement


async def test_bad_finality_is_an_openai_error_envelope(tmp_path: Path) -> None:
    reply = await _post(tmp_path, {**CHAT, "finality": "fast"})
    assert reply.status_code == 400
    assert reply.json() == {
        "error": {
            "message": reply.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": "finality",
            "code": "invalid_value",
        }
    }


def test_answer_on_defaults_to_signature(tmp_path: Path) -> None:
    """Protocol v2 slashes equivocation (the gateway proves it itself): answering on the signed
    result is the shipped default (issue 14)."""
    assert load_settings(data_dir=tmp_path).gateway.answer_on == "signature"


# ------------------------------------------------------------------ equivocation


async def _answered_on_signature(reg: PendingRegistry) -> tuple[Submission, bytes, bytes, VerifiedResult]:
    """A request answered on its seat's signed "honest" output; also the "other" output it could lie with."""
    sub = _submission()
    good, other = _output(sub, "honest"), _output(sub, "other")
    pending = reg.register(sub)
    pending.accept_signed()
    reg.on_result_message(31337, sub.request_id, _signed(sub, good))
    return sub, good, other, await pending.wait(1)


async def test_broken_promise_sees_a_commit_or_reveal_other_than_the_signed_digest(
    registry: tuple[PendingRegistry, Store],
) -> None:
    sub, good, other, answered = await _answered_on_signature(registry[0])
    ref = LogRef(1, "0x00", "0x01", 0, HUB)
    me, rid = ASSIGNEE.address, sub.request_id

    def committed(digest: bytes, miner: str = me) -> ResultCommitted:
        return ResultCommitted(rid, miner, commitment(digest, miner, rid), ref)

    assert broken_promise(answered, ResultRevealed(rid, me, digest_of(other), ref)) == digest_of(good)
    assert broken_promise(answered, committed(digest_of(other))) == digest_of(good)
    assert broken_promise(answered, ResultRevealed(rid, me, digest_of(good), ref)) is None
    assert broken_promise(answered, committed(digest_of(good))) is None
    assert broken_promise(answered, committed(digest_of(other), INTRUDER.address)) is None  # not the signer
    assert broken_promise(answered, ResultRevealed(rid + 1, me, digest_of(other), ref)) is None
    final = replace(answered, extra={**answered.extra, "settlement": "final"})
    assert broken_promise(final, ResultRevealed(rid, me, digest_of(other), ref)) is None  # not answered early


async def test_a_batch_root_is_told_from_its_events_not_read_from_the_chain(
    registry: tuple[PendingRegistry, Store],
) -> None:
    """`commitBatch` emits one root per id in one transaction: the keeper tells a root from a lie by
    those events (no `getRequest` per honest batch commit) and proves the reveal as a batch's; a
    contradicted commit the events cannot place is still read from the chain and proven."""
    sub, good, other, answered = await _answered_on_signature(registry[0])
    me, rid = ASSIGNEE.address, sub.request_id
    reads: list[int] = []
    receipts: list[str] = []

    async def get_request(request_id: int) -> Any:
        reads.append(request_id)
        return SimpleNamespace(flags=RequestFlag.BATCH)

    async def get_transaction_receipt(tx: str) -> dict[str, Any]:
        receipts.append(tx)
        return {"logs": []}  # no BatchRevealed: the proof stops there (logged)

    w3 = SimpleNamespace(eth=SimpleNamespace(get_transaction_receipt=get_transaction_receipt))
    link = SimpleNamespace(hub=SimpleNamespace(get_request=get_request, w3=w3))
    tasks: set[asyncio.Task[None]] = set()
    keeper = PromiseKeeper({31337: link}, {(31337, rid): answered}, Supervisor("test"), tasks)  # type: ignore[dict-item]

    commit_tx, reveal_tx = LogRef(5, "0x05", "0xc0", 0, HUB), LogRef(6, "0x06", "0xe0", 0, HUB)
    root = batch_root([rid, rid + 1], [commitment(digest_of(good), me, rid), b"\x01" * 32])
    block = [ResultCommitted(rid, me, root, commit_tx), ResultCommitted(rid + 1, me, root, commit_tx)]
    keeper.block_events(block)
    keeper.hold(31337, block[0])
    assert not tasks and reads == []  # an honest batch commit: nothing to prove, nothing read
    keeper.hold(31337, ResultRevealed(rid, me, digest_of(other), reveal_tx))
    await asyncio.gather(*tasks)
    assert reads == [] and receipts == ["0xe0"]  # proven as a batch's, from the reveal's receipt

    lone = ResultCommitted(rid, me, commitment(digest_of(other), me, rid), LogRef(7, "0x07", "0xd0", 0, HUB))
    keeper.block_events([lone])
    keeper.hold(31337, lone)
    await asyncio.gather(*tasks)
    assert reads == [rid]  # not a root the events show: the chain says what it is
