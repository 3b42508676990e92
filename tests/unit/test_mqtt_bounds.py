"""MQTT without a broker: topic parsing is strict, the pending registry keeps only assignees' messages
within its byte bounds (per request, global, early), and the broker's ACL and password lines are
what mosquitto expects."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from eth_account import Account

from node.content.cid import cid_for_bytes, digest_of
from node.content.errors import ContentNotFound
from node.gateway.mqtt import DropsCollector, Subscriber, request_topics
from node.gateway.pending import ITEM_OVERHEAD, BufferLimits, PendingRegistry, ResultMessage
from node.gateway.records import Delta, Submission
from node.stream.access import Login, acl_text, gateway_login, hash_password, miner_login, write_password_file
from node.stream.connection import Broker
from node.stream.topics import delta_topic, miner_topic, parse_request_topic, result_topic

HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
A, B = Account.create().address, Account.create().address


def _sub(request_id: int = 7, assignees: tuple[str, ...] = (A,)) -> Submission:
    return Submission(
        chain_id=31337, hub=HUB, request_id=request_id, infer_tx="0x", assignees=assignees,
        input_cid=cid_for_bytes(b"{}"), input_digest=digest_of(b"{}"), model="m",
    )  # fmt: skip


async def _fetch(cid: str) -> bytes:
    raise ContentNotFound(cid)


def _registry(**limits: int) -> PendingRegistry:
    return PendingRegistry(lambda *_: "", _fetch, limits=BufferLimits(**limits))


def _delta(seq: int, text: str = "x", miner: str | None = A) -> Delta:
    return Delta(seq=seq, choice=0, text=text, miner=miner)


# ------------------------------------------------------------------ topics


def test_topics_carry_the_miner_and_parse_back_strictly() -> None:
    topic = delta_topic(31337, HUB.lower(), 5, A.lower())
    assert topic == f"inferd/v1/31337/{HUB}/req/5/{A}/delta"
    parsed = parse_request_topic(topic)
    assert parsed is not None and (parsed.request_id, parsed.miner, parsed.kind) == (5, A, "delta")
    assert parse_request_topic(result_topic(31337, HUB, 5, A)) is not None
    assert request_topics(31337, HUB) == [
        f"inferd/v1/31337/{HUB}/req/+/+/delta",
        f"inferd/v1/31337/{HUB}/req/+/+/result",
    ]
    for bad in (
        f"inferd/v1/31337/{HUB}/req/5/{A.lower()}/delta",  # not checksummed: not what the ACL matched
        f"inferd/v1/31337/{HUB}/req/05/{A}/delta",
        f"inferd/v1/31337/{HUB}/req/-5/{A}/delta",
        f"inferd/v1/31337/{HUB}/req/５/{A}/delta",  # a non-ASCII digit
        f"inferd/v1/31337/{HUB}/req/5/delta",  # the old layout
        f"inferd/v1/31337/{HUB}/req/5/gateway-x/delta",
        f"inferd/v1/31337/{HUB}/req/5/{A}/other",
        miner_topic(31337, HUB, A),
        "",
    ):
        assert parse_request_topic(bad) is None, bad


# ------------------------------------------------------------------ registry: who, and how much


async def test_non_assignee_messages_are_dropped_registered_or_early() -> None:
    reg = _registry()
    reg.on_delta(31337, 7, _delta(0, "early-evil", B))
    reg.on_delta(31337, 7, _delta(0, "early-good", A))
    reg.on_delta(31337, 7, _delta(1, "anonymous", None))
    pending = reg.register(_sub())
    reg.on_delta(31337, 7, _delta(1, "evil", B))
    reg.on_result_message(31337, 7, ResultMessage(b"{}", "0x", B))
    assert [pending.deltas.get_nowait().text] == ["early-good"] and pending.deltas.empty()
    assert reg.drops["not_assignee"] == 4 and pending.candidates == []


async def test_one_streamer_and_one_result_per_miner() -> None:
    reg = _registry()
    pending = reg.register(_sub(assignees=(A, B)))
    reg.on_delta(31337, 7, _delta(0, "a0", A))
    reg.on_delta(31337, 7, _delta(0, "b0", B))  # a redundant miner would interleave its seqs
    for i in range(20):
        reg.on_result_message(31337, 7, ResultMessage(b"r%d" % i, "0x", A))
    assert pending.streamer == A.lower() and pending.deltas.qsize() == 1
    assert [m.output_bytes for m in pending.candidates] == [b"r19"] and reg.drops["other_assignee"] == 1


async def test_per_request_and_global_byte_bounds() -> None:
    cost = ITEM_OVERHEAD + 100
    reg = _registry(per_request_bytes=3 * cost, total_bytes=4 * cost)
    one, two = reg.register(_sub(1)), reg.register(_sub(2))
    for seq in range(5):
        reg.on_delta(31337, 1, _delta(seq, "x" * 100))
    assert one.deltas.qsize() == 3 and reg.drops["per_request_bytes"] == 2
    for seq in range(3):
        reg.on_delta(31337, 2, _delta(seq, "y" * 100))
    assert two.deltas.qsize() == 1 and reg.drops["total_bytes"] == 2
    assert reg.buffered_bytes == 4 * cost
    assert (await one.next_delta()).seq == 0 and reg.buffered_bytes == 3 * cost  # read: room again
    reg.on_delta(31337, 2, _delta(1, "y" * 100))
    assert two.deltas.qsize() == 2
    one.release()
    two.release()
    assert reg.buffered_bytes == 0


async def test_early_buffers_are_bounded_and_evict_the_oldest() -> None:
    cost = ITEM_OVERHEAD + 100
    reg = _registry(per_request_bytes=2 * cost, early_total_bytes=3 * cost, max_early_requests=8)
    for request_id in range(1, 4):  # requests of other gateways, or made-up ids
        reg.on_delta(31337, request_id, _delta(0, "x" * 100))
        reg.on_delta(31337, request_id, _delta(1, "x" * 100))
        reg.on_delta(31337, request_id, _delta(2, "x" * 100))
    assert reg.early_bytes <= 3 * cost and reg.drops["per_request_bytes"] == 3
    assert reg.drops["early_evicted"] == 4  # ids 1 and 2 made room for the newest
    pending = reg.register(_sub(3))
    assert pending.deltas.qsize() == 2 and reg.early_bytes == 0
    for request_id in range(100, 120):
        reg.on_delta(31337, request_id, _delta(0, ""))
    assert reg.early_bytes <= 8 * ITEM_OVERHEAD


async def test_drops_collector_sums_its_sources() -> None:
    reg = _registry()
    sub = Subscriber("mqtt://127.0.0.1:1", [], lambda _m: None)
    sub.handle("inferd/v1/x", b"{}")
    sub.handle(delta_topic(31337, HUB, 1, A), b"[" * 100)
    sub.handle(delta_topic(31337, HUB, 1, A), 12)
    reg.on_delta(31337, 1, _delta(0))
    reg.register(_sub(1, assignees=(B,)))
    families = list(DropsCollector([lambda: sub.drops, lambda: reg.drops]).collect())
    samples = {s.labels["reason"]: s.value for s in families[0].samples}
    assert samples == {"bad_topic": 1, "payload_too_deep": 1, "bad_payload": 1, "not_assignee": 1}


# ------------------------------------------------------------------ broker access files


def test_acl_lets_each_login_write_only_its_own_topics() -> None:
    text = acl_text(["gateway-main"])
    assert "pattern write inferd/v1/+/+/req/+/%u/delta" in text
    assert "pattern write inferd/v1/+/+/req/+/%u/result" in text
    assert "pattern write inferd/v1/+/+/miner/%u" in text
    assert "user gateway-main\ntopic read inferd/v1/#" in text
    assert "topic write" not in text and "readwrite" not in text
    with pytest.raises(ValueError):
        acl_text(["gateway/#"])


def test_logins_hide_passwords_and_refuse_unsafe_names() -> None:
    login = miner_login(A.lower())
    assert login.username == A and login.password not in repr(login)
    broker = Broker.from_url("mqtt://127.0.0.1:1883", username=login.username, password=login.password)
    assert login.password not in repr(broker)
    assert gateway_login("main").username == "gateway-main"
    for name in ("a:b", "a+b", "a/b", "a#", ""):
        with pytest.raises(ValueError):
            Login(name, "pw")
    with pytest.raises(ValueError):
        Login("x", "two\nlines")


def test_password_hash_is_mosquittos_pbkdf2_sha512(tmp_path: Path) -> None:
    salt = bytes(range(12))
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)
    assert hash_password("secret", salt=salt) == (
        f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(expected).decode()}"
    )
    path = tmp_path / "passwd"
    logins = [miner_login(A, "pw-a"), gateway_login("g", "pw-g")]
    for binary in ("", None):  # Python, then mosquitto_passwd when installed
        write_password_file(path, logins, mosquitto_passwd=binary)
        lines = path.read_text().splitlines()
        assert [line.split(":")[0] for line in lines] == [A, "gateway-g"]
        for line, login in zip(lines, logins, strict=True):
            _, _, iterations, salt_b64, digest_b64 = line.split(":", 1)[1].split("$")
            derived = hashlib.pbkdf2_hmac(
                "sha512", login.password.encode(), base64.b64decode(salt_b64), int(iterations)
            )
            assert base64.b64decode(digest_b64) == derived
        assert path.stat().st_mode & 0o777 == 0o600 and "pw-a" not in path.read_text()
