"""node.chain without a chain: the committed artifact, revert decoding, event decoding."""

from __future__ import annotations

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from node.chain.artifacts import hub_abi, hub_artifact
from node.chain.errors import HubError, decode_revert
from node.chain.events import InferenceExpired, InferenceRequested, OtherHubEvent, decode_log, event_topic
from node.chain.hub import model_id, to_digest

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
        "submitResult",
        "submitResults",
        "expire",
        "withdraw",
        "getRequest",
        "getMiner",
        "activeMiners",
        "getModel",
    ):
        assert fn in names
    assert art.bytecode.startswith("0x60") and len(art.bytecode) > 1000
    assert art.deployed_bytecode.startswith("0x") and len(art.deployed_bytecode) < len(art.bytecode)


def test_decode_custom_errors_with_actionable_messages() -> None:
    err = decode_revert("0x" + (_sel("FeeTooLow(uint256,uint256)") + encode(["uint256"] * 2, [10, 3])).hex())
    assert isinstance(err, HubError)
    assert err.name == "FeeTooLow" and err.args_by_name == {"required": 10, "provided": 3}
    assert "at least 10 wei" in str(err)
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
    assert decode_revert(_sel("FeeTooLow(uint256,uint256)") + b"\x01").name == "Reverted"  # truncated


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


def test_decode_inference_requested() -> None:
    topic0 = bytes.fromhex(event_topic("InferenceRequested")[2:])
    mid = model_id("m")
    topics = [topic0, encode(["uint256"], [5]), encode(["address"], [ADDR]), mid]
    data = encode(["bytes32", "uint256", "uint64", "address[]"], [b"\x09" * 32, 123, 99, [ADDR]])
    ev = decode_log(_log(topics, data))
    assert isinstance(ev, InferenceRequested)
    assert (ev.id, ev.requester, ev.model_id, ev.input_digest) == (5, ADDR, mid, b"\x09" * 32)
    assert (ev.fee, ev.deadline, ev.assignees) == (123, 99, (ADDR,))
    assert ev.log.block_number == 7 and ev.log.log_index == 3 and ev.log.tx_hash == "0x" + "02" * 32
    assert ev.log.address == ADDR


def test_decode_expired_other_and_foreign_logs() -> None:
    topic0 = bytes.fromhex(event_topic("InferenceExpired")[2:])
    data = encode(["bool", "bytes32", "uint64", "address[]"], [False, b"\x01" * 32, 0, []])
    ev = decode_log(_log([topic0, encode(["uint256"], [2])], data))
    assert isinstance(ev, InferenceExpired) and not ev.reassigned and ev.assignees == ()
    wd = bytes.fromhex(event_topic("Withdrawn")[2:])
    other = decode_log(_log([wd, encode(["address"], [ADDR])], encode(["uint256"], [5])))
    assert isinstance(other, OtherHubEvent) and other.args == {"account": ADDR, "amount": 5}
    assert decode_log(_log([b"\x00" * 32], b"")) is None
    assert decode_log(_log([], b"")) is None


def test_to_digest() -> None:
    assert to_digest("0x" + "ab" * 32) == b"\xab" * 32
    try:
        to_digest(b"short")
    except ValueError as exc:
        assert "32 bytes" in str(exc)
    else:
        raise AssertionError("expected ValueError")
