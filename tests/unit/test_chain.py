"""node.chain without a chain: the committed artifact, revert decoding, event decoding."""

from __future__ import annotations

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from node.chain.artifacts import hub_abi, hub_artifact
from node.chain.errors import HubError, decode_revert
from node.chain.events import (
    BatchRevealed,
    CommitteeOpened,
    Credited,
    CreditReason,
    InferenceAssigned,
    InferenceRequested,
    Slashed,
    SlashReason,
    Withdrawn,
    decode_log,
    event_topic,
)
from node.chain.hub import (
    UNAVAILABLE,
    Phase,
    RequestFlag,
    RequestInfo,
    VerificationState,
    batch_root,
    commitment,
    model_id,
    to_digest,
)

ADDR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def _sel(sig: str) -> bytes:
    return keccak(text=sig)[:4]


def test_artifact_has_abi_and_bytecode() -> None:
    art = hub_artifact()
    names = {i.get("name") for i in hub_abi()}
    for fn in (
        "registerModel",
        "registerMiner",
        "requestInference",
        "requestInferences",
        "assign",
        "commit",
        "commitMany",
        "reveal",
        "revealMany",
        "openAudit",
        "auditDrawn",
        "timeout",
        "timeoutMany",
        "escalate",
        "commitVote",
        "revealVote",
        "claimVote",
        "proveEquivocation",
        "commitBatch",
        "revealBatch",
        "proveBatchEquivocation",
        "BatchRevealed",
        "price",
        "withdraw",
        "getRequest",
        "getMiner",
        "activeMiners",
        "getModel",
    ):
        assert fn in names
    for gone in ("submitResult", "submitResults", "expire", "InferenceExpired", "ResultSubmitted"):
        assert gone not in names
    assert art.bytecode.startswith("0x60") and len(art.bytecode) > 1000
    assert art.deployed_bytecode.startswith("0x") and len(art.deployed_bytecode) < len(art.bytecode)


def test_decode_custom_errors_with_actionable_messages() -> None:
    err = decode_revert("0x" + (_sel("WrongFee(uint256,uint256)") + encode(["uint256"] * 2, [10, 3])).hex())
    assert isinstance(err, HubError)
    assert err.name == "WrongFee" and err.args_by_name == {"required": 10, "provided": 3}
    assert "exactly 10 wei" in str(err)
    phase = decode_revert(_sel("WrongPhase(uint256,uint8)") + encode(["uint256", "uint8"], [4, 10]))
    assert "request 4 is in phase Final" in str(phase)
    ec = decode_revert(
        _sel("EngineClassMismatch(bytes32,bytes32)") + encode(["bytes32"] * 2, [b"\1" * 32, b"\2" * 32])
    )
    assert ec.name == "EngineClassMismatch" and "0x" + "02" * 32 in str(ec)
    assert decode_revert(_sel("NothingToWithdraw()")).name == "NothingToWithdraw"
    nm = decode_revert(_sel("NotEnoughMiners(uint256,uint256)") + encode(["uint256"] * 2, [3, 1]))
    assert "needs 3 active miners, only 1" in str(nm)


def test_decode_unknown_and_standard_reverts() -> None:
    assert decode_revert("0xdeadbeef").name == "Reverted"
    assert decode_revert(None).name == "Reverted"
    reason = decode_revert(bytes.fromhex("08c379a0") + encode(["string"], ["boom"]))
    assert reason.name == "Error" and reason.args_by_name == {"reason": "boom"}
    panic = decode_revert(bytes.fromhex("4e487b71") + encode(["uint256"], [0x11]))
    assert panic.name == "Panic" and panic.args_by_name == {"code": "0x11"}
    assert decode_revert(_sel("WrongFee(uint256,uint256)") + b"\x01").name == "Reverted"  # truncated


def _log(topics: list[bytes], data: bytes) -> dict[str, object]:
    return {
        "address": ADDR.lower(),
        "topics": topics,
        "data": data,
        "blockNumber": 7,
        "blockHash": b"\x01" * 32,
        "transactionHash": "0x" + "02" * 32,
        "logIndex": 3,
    }


def test_decode_requested_and_assigned() -> None:
    mid = model_id("m")
    t_req = bytes.fromhex(event_topic("InferenceRequested")[2:])
    topics = [t_req, encode(["uint256"], [5]), encode(["address"], [ADDR]), mid]
    data = encode(["bytes32", "uint256", "uint32"], [b"\x09" * 32, 123, 77])
    ev = decode_log(_log(topics, data))
    assert isinstance(ev, InferenceRequested)
    assert (ev.id, ev.requester, ev.model_id, ev.input_digest) == (5, ADDR, mid, b"\x09" * 32)
    assert (ev.fee, ev.max_tokens) == (123, 77)
    assert ev.log.block_number == 7 and ev.log.log_index == 3 and ev.log.tx_hash == "0x" + "02" * 32
    assert ev.log.address == ADDR
    t_as = bytes.fromhex(event_topic("InferenceAssigned")[2:])
    data = encode(["bytes32", "uint64", "address[]"], [b"\x09" * 32, 99, [ADDR.lower()]])
    got = decode_log(_log([t_as, encode(["uint256"], [5]), mid], data))
    assert isinstance(got, InferenceAssigned)
    assert (got.id, got.model_id, got.deadline, got.assignees) == (5, mid, 99, (ADDR,))


def test_decode_committee_money_and_foreign_logs() -> None:
    t_co = bytes.fromhex(event_topic("CommitteeOpened")[2:])
    data = encode(["bytes32", "uint64", "address[]"], [b"\x01" * 32, 40, [ADDR, ADDR]])
    co = decode_log(_log([t_co, encode(["uint256"], [2])], data))
    assert isinstance(co, CommitteeOpened) and co.members == (ADDR, ADDR) and co.deadline == 40
    t_sl = bytes.fromhex(event_topic("Slashed")[2:])
    sl = decode_log(
        _log(
            [t_sl, encode(["uint256"], [2]), encode(["address"], [ADDR])],
            encode(["uint256", "uint8"], [9, 3]),
        )
    )
    assert isinstance(sl, Slashed) and sl.reason is SlashReason.FRAUD and sl.amount == 9
    t_cr = bytes.fromhex(event_topic("Credited")[2:])
    cr = decode_log(
        _log(
            [t_cr, encode(["address"], [ADDR]), encode(["uint256"], [2])],
            encode(["uint256", "uint8"], [5, 2]),
        )
    )
    assert isinstance(cr, Credited) and cr.reason is CreditReason.REFUND and (cr.account, cr.id) == (ADDR, 2)
    wd = bytes.fromhex(event_topic("Withdrawn")[2:])
    other = decode_log(_log([wd, encode(["address"], [ADDR])], encode(["uint256"], [5])))
    assert isinstance(other, Withdrawn) and (other.account, other.amount) == (ADDR, 5)
    assert decode_log(_log([b"\x00" * 32], b"")) is None
    assert decode_log(_log([], b"")) is None


def test_decode_batch_revealed_rebuilds_its_root() -> None:
    leaves = [commitment(b"\x07" * 32, ADDR, i) for i in (3, 4)]
    root = batch_root([3, 4], leaves)
    assert root == keccak(encode(["uint256", "uint256", "bytes32", "bytes32"], [3, 4, *leaves]))
    t_br = bytes.fromhex(event_topic("BatchRevealed")[2:])
    data = encode(["uint256[]", "bytes32[]"], [[3, 4], leaves])
    ev = decode_log(_log([t_br, encode(["address"], [ADDR]), root], data))
    assert isinstance(ev, BatchRevealed)
    assert (ev.miner, ev.root, ev.ids, ev.leaves) == (ADDR, root, (3, 4), tuple(leaves))
    assert batch_root(ev.ids, ev.leaves) == ev.root
    try:
        batch_root([1, 2], leaves[:1])
    except ValueError as exc:
        assert "2 ids for 1 leaves" in str(exc)
    else:
        raise AssertionError("unequal lengths accepted")


def test_commitment_is_abi_encoded_keccak() -> None:
    digest = b"\x07" * 32
    expected = keccak(encode(["bytes32", "address", "uint256"], [digest, ADDR, 9]))
    assert commitment(digest, ADDR.lower(), 9) == expected
    assert commitment("0x" + digest.hex(), ADDR, 10) != expected
    assert UNAVAILABLE == b"\x00" * 31 + b"\x01"


def _info(phase: Phase, flags: int = 0, committed: int = 0, r: int = 1) -> RequestInfo:
    return RequestInfo(
        id=1, phase=phase, requester=ADDR, model_id=b"\x00" * 32, input_digest=b"\x01" * 32,
        output_digest=None, fee=1, mark=0, redundancy=r, flags=RequestFlag(flags), committed=committed,
        revealed=0, seats=(ADDR,), digests=(b"\x02" * 32,),
    )  # fmt: skip


def test_verification_state() -> None:
    vs = VerificationState
    assert _info(Phase.PENDING).verification_state is vs.PENDING
    assert _info(Phase.ASSIGNED).verification_state is vs.ASSIGNED
    assert _info(Phase.REVEAL, committed=1).verification_state is vs.SUBMITTED
    assert _info(Phase.REVEAL, flags=RequestFlag.BATCH, committed=1).verification_state is vs.SUBMITTED
    assert _info(Phase.FINAL, flags=RequestFlag.BATCH).verification_state is vs.FINAL
    assert _info(Phase.ASSIGNED, committed=1, r=3).verification_state is vs.SUBMITTED
    assert _info(Phase.AUDIT, flags=4).verification_state is vs.AUDIT_PENDING
    assert _info(Phase.AUDIT_REVEAL, flags=4).verification_state is vs.AUDIT_PENDING
    assert _info(Phase.FINAL, flags=4).verification_state is vs.AUDITED
    assert _info(Phase.FINAL).verification_state is vs.FINAL
    assert _info(Phase.COMMITTEE, flags=12).verification_state is vs.DISPUTED
    assert _info(Phase.VOTE, flags=28).verification_state is vs.DISPUTED
    assert _info(Phase.FINAL, flags=12).verification_state is vs.DISPUTED
    assert _info(Phase.RESOLVED, r=3).verification_state is vs.DISPUTED
    assert _info(Phase.REFUNDED, flags=1).verification_state is vs.REFUNDED
    info = _info(Phase.REVEAL, committed=1)
    assert info.seat_of(ADDR.lower()) == 0 and info.has_committed(ADDR) and not info.has_revealed(ADDR)
    assert info.seat_of("0x" + "00" * 20) is None and info.revealed_digest(ADDR) is None


def test_to_digest() -> None:
    assert to_digest("0x" + "ab" * 32) == b"\xab" * 32
    try:
        to_digest(b"short")
    except ValueError as exc:
        assert "32 bytes" in str(exc)
    else:
        raise AssertionError("expected ValueError")
