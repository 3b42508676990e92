"""Envelopes: only recipients read a private document; any change or hostile input is a typed refusal."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

import ecies
import pytest
from eth_account import Account

from node.chain.pubkeys import WrongPublicKey, public_key_of
from node.content.canonical import jcs_json
from node.content.envelope import (
    ENVELOPE_LIMITS,
    MAX_RECIPIENTS,
    EnvelopeError,
    EnvelopeTooLarge,
    MalformedEnvelope,
    NotARecipient,
    TamperedEnvelope,
    max_plaintext_bytes,
    open_envelope,
    parse_envelope,
    recipients_of,
    seal,
)
from node.content.errors import MAX_DOCUMENT_BYTES, DocumentTooLarge

PLAINTEXT = json.dumps({"v": 3, "type": "chat", "messages": [{"role": "user", "content": "secret"}]}).encode()


def _key(i: int) -> str:
    return "0x" + hashlib.sha256(f"envelope-test-{i}".encode()).hexdigest()


KEYS = [_key(i) for i in range(MAX_RECIPIENTS + 2)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]
OUTSIDER = len(KEYS) - 1


def _recipients(indices: range | list[int]) -> dict[str, bytes]:
    return {ADDRESSES[i]: public_key_of(KEYS[i]) for i in indices}


def _edit(raw: bytes, change: Any) -> bytes:
    data = json.loads(raw)
    change(data)
    return jcs_json(data)


def _flip_b64(text: str, at: int = 0) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("count", range(1, 9))
def test_every_recipient_opens_and_an_outsider_cannot(count: int) -> None:
    envelope = seal(PLAINTEXT, _recipients(range(count)))
    for i in range(count):
        assert open_envelope(envelope, KEYS[i], ADDRESSES[i]) == PLAINTEXT
    assert recipients_of(envelope) == sorted(a.lower() for a in ADDRESSES[:count])
    with pytest.raises(NotARecipient, match=ADDRESSES[OUTSIDER]):
        open_envelope(envelope, KEYS[OUTSIDER], ADDRESSES[OUTSIDER])
    assert b"secret" not in envelope


def test_an_outsider_cannot_decrypt_any_wrapped_key() -> None:
    """Claiming a recipient's address with another key is refused; the raw ECIES keys do not open."""
    envelope = seal(PLAINTEXT, _recipients(range(3)))
    with pytest.raises(ValueError, match="belongs to"):
        open_envelope(envelope, KEYS[OUTSIDER], ADDRESSES[0])
    for entry in json.loads(envelope)["recipients"]:
        with pytest.raises(ValueError):
            ecies.decrypt(bytes.fromhex(KEYS[OUTSIDER][2:]), base64.b64decode(entry["key"]))


def test_envelope_bytes_are_canonical_and_sealing_is_randomized() -> None:
    first = seal(PLAINTEXT, _recipients(range(3)))
    assert jcs_json(json.loads(first)) == first
    data = json.loads(first)
    assert list(data) == ["alg", "ciphertext", "nonce", "recipients", "type", "v"]
    assert data["v"] == 1 and data["type"] == "envelope" and data["alg"] == "ecies-secp256k1+aes-256-gcm"
    assert [r["address"] for r in data["recipients"]] == sorted(r["address"] for r in data["recipients"])
    # Given in any order, with checksummed or lowercase addresses: the same layout.
    reordered = {a.lower(): k for a, k in reversed(list(_recipients(range(3)).items()))}
    second = seal(PLAINTEXT, reordered)
    assert recipients_of(second) == recipients_of(first)
    assert second != first  # fresh content key, nonce and ephemeral keys every time


def test_a_wrong_public_key_is_never_encrypted_to() -> None:
    with pytest.raises(WrongPublicKey):
        seal(PLAINTEXT, {ADDRESSES[0]: public_key_of(KEYS[1])})


def test_bad_recipient_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="1 to"):
        seal(PLAINTEXT, {})
    with pytest.raises(ValueError, match="1 to"):
        seal(PLAINTEXT, _recipients(range(MAX_RECIPIENTS + 1)))
    with pytest.raises(ValueError, match="twice"):
        seal(PLAINTEXT, {ADDRESSES[0]: public_key_of(KEYS[0]), ADDRESSES[0].lower(): public_key_of(KEYS[0])})


TAMPERINGS: dict[str, Callable[[dict[str, Any]], object]] = {
    "ciphertext": lambda d: d.update(ciphertext=_flip_b64(d["ciphertext"], 3)),
    "tag": lambda d: d.update(
        ciphertext=_flip_b64(d["ciphertext"], len(base64.b64decode(d["ciphertext"])) - 1)
    ),
    "nonce": lambda d: d.update(nonce=_flip_b64(d["nonce"])),
    "wrapped key": lambda d: d["recipients"][0].update(key=_flip_b64(d["recipients"][0]["key"], 100)),
    "ephemeral key": lambda d: d["recipients"][0].update(key=_flip_b64(d["recipients"][0]["key"], 40)),
    "swapped keys": lambda d: (
        d["recipients"][0].update(key=d["recipients"][1]["key"]),
        d["recipients"][1].update(key=json.loads(d["_orig"])["recipients"][0]["key"]),
    ),
    "dropped recipient": lambda d: d["recipients"].pop(),
    "other recipient's key replaced": lambda d: d["recipients"][1].update(
        key=base64.b64encode(ecies.encrypt(b"\x04" + public_key_of(KEYS[9]), bytes(32))).decode()
    ),
}


@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_tampering_is_detected(how: str) -> None:
    envelope = seal(PLAINTEXT, _recipients(range(3)))
    opener = sorted(range(3), key=lambda i: ADDRESSES[i].lower())[0]  # the first entry's owner

    def change(data: dict[str, Any]) -> None:
        data["_orig"] = envelope.decode()
        TAMPERINGS[how](data)
        del data["_orig"]

    tampered = _edit(envelope, change)
    assert tampered != envelope
    with pytest.raises(TamperedEnvelope):
        open_envelope(tampered, KEYS[opener], ADDRESSES[opener])


def test_an_added_recipient_is_detected() -> None:
    """An attacker who adds its own entry (a key wrapped by itself) breaks every real recipient."""
    envelope = seal(PLAINTEXT, _recipients(range(2)))
    data = json.loads(envelope)
    wrapped = ecies.encrypt(b"\x04" + public_key_of(KEYS[OUTSIDER]), bytes(32))
    data["recipients"].append(
        {"address": ADDRESSES[OUTSIDER].lower(), "key": base64.b64encode(wrapped).decode()}
    )
    data["recipients"].sort(key=lambda r: r["address"])
    tampered = jcs_json(data)
    for i in range(2):
        with pytest.raises(TamperedEnvelope):
            open_envelope(tampered, KEYS[i], ADDRESSES[i])
    with pytest.raises(TamperedEnvelope):  # and the attacker's own key does not fit the ciphertext
        open_envelope(tampered, KEYS[OUTSIDER], ADDRESSES[OUTSIDER])


def _valid() -> dict[str, Any]:
    return json.loads(  # type: ignore[no-any-return]
        seal(PLAINTEXT, _recipients(range(2)))
    )


def _with(**changes: Any) -> bytes:
    data = _valid()
    data.update(changes)
    return json.dumps(data).encode()


def _recipient_change(change: Any) -> bytes:
    data = _valid()
    change(data["recipients"])
    return json.dumps(data).encode()


HOSTILE: dict[str, Any] = {
    "empty": lambda: b"",
    "array": lambda: b"[]",
    "empty object": lambda: b"{}",
    "not utf8": lambda: b'{"v":1,"type":"\xff"}',
    "deep": lambda: b"[" * 200_000 + b"]" * 200_000,
    "deep object": lambda: b'{"v":' + b'{"a":' * 100 + b"1" + b"}" * 101,
    "huge": lambda: b'{"v":"' + b"a" * (ENVELOPE_LIMITS.max_bytes + 1) + b'"}',
    "many items": lambda: b"[" + b"1," * 100_000 + b"1]",
    "nan": lambda: b'{"v":NaN}',
    "duplicate key": lambda: b'{"v":1,"v":1}',
    "v true": lambda: _with(v=True),
    "v 2": lambda: _with(v=2),
    "v float": lambda: _with(v=1.0),
    "v string": lambda: _with(v="1"),
    "wrong type": lambda: _with(type="document"),
    "wrong alg": lambda: _with(alg="none"),
    "extra field": lambda: _with(sender="me"),
    "missing nonce": lambda: json.dumps({k: v for k, v in _valid().items() if k != "nonce"}).encode(),
    "nonce not b64": lambda: _with(nonce="!!!!"),
    "nonce unpadded": lambda: _with(nonce=_valid()["nonce"].rstrip("=") + "A"),
    "nonce short": lambda: _with(nonce=base64.b64encode(bytes(11)).decode()),
    "nonce number": lambda: _with(nonce=12),
    "ciphertext short": lambda: _with(ciphertext=base64.b64encode(bytes(15)).decode()),
    "ciphertext non-canonical": lambda: _with(ciphertext="AB=="),
    "ciphertext urlsafe": lambda: _with(ciphertext="-_-_"),
    "no recipients": lambda: _with(recipients=[]),
    "recipients object": lambda: _with(recipients={"a": 1}),
    "recipient not object": lambda: _with(recipients=["0x00"]),
    "too many recipients": lambda: _with(recipients=[_valid()["recipients"][0]] * (MAX_RECIPIENTS + 1)),
    "unsorted": lambda: _recipient_change(lambda r: r.reverse()),
    "duplicate recipient": lambda: _recipient_change(lambda r: r.__setitem__(1, r[0])),
    "uppercase address": lambda: _recipient_change(lambda r: r[0].update(address=r[0]["address"].upper())),
    "short address": lambda: _recipient_change(lambda r: r[0].update(address="0x1234")),
    "key short": lambda: _recipient_change(lambda r: r[0].update(key=base64.b64encode(bytes(128)).decode())),
    "key extra field": lambda: _recipient_change(lambda r: r[0].update(note="x")),
    "lone surrogate": lambda: _recipient_change(lambda r: r[0].update(address="\ud800")),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_envelopes_are_malformed_never_a_crash(name: str) -> None:
    raw = HOSTILE[name]()
    with pytest.raises(MalformedEnvelope):
        parse_envelope(raw)
    with pytest.raises(MalformedEnvelope):
        open_envelope(raw, KEYS[0], ADDRESSES[0])


def test_random_corruption_is_always_a_typed_refusal() -> None:
    envelope = seal(PLAINTEXT, _recipients(range(2)))
    rng = random.Random(16)
    for _ in range(400):
        raw = bytearray(envelope)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw))
            op = rng.randrange(3)
            if op == 0:
                raw[at] = rng.randrange(256)
            elif op == 1:
                del raw[at]
            else:
                raw.insert(at, rng.randrange(256))
        if bytes(raw) == envelope:
            continue
        try:
            result = open_envelope(bytes(raw), KEYS[0], ADDRESSES[0])
        except EnvelopeError:
            continue
        # Only a change that leaves the decoded envelope identical may open (e.g. added whitespace).
        assert result == PLAINTEXT
        assert parse_envelope(bytes(raw)) == json.loads(envelope)


def test_size_limits() -> None:
    recipients = _recipients(range(3))
    fits = max_plaintext_bytes(3)
    assert 760 * 1024 < fits < MAX_DOCUMENT_BYTES
    envelope = seal(b"x" * fits, recipients)
    assert len(envelope) <= MAX_DOCUMENT_BYTES
    assert open_envelope(envelope, KEYS[0], ADDRESSES[0]) == b"x" * fits
    with pytest.raises(EnvelopeTooLarge) as caught:
        seal(b"x" * (fits + 3), recipients)
    assert isinstance(caught.value, DocumentTooLarge)
    assert caught.value.max_plaintext == fits and str(fits) in str(caught.value)
    with pytest.raises(DocumentTooLarge):
        seal(b"x" * (MAX_DOCUMENT_BYTES + 1), recipients, max_bytes=ENVELOPE_LIMITS.max_bytes)


def test_the_envelope_of_a_full_document_passes_the_gate() -> None:
    """The gate's limits fit a 1 MiB document for the most recipients, should blocks grow."""
    recipients = _recipients(range(MAX_RECIPIENTS))
    plaintext = b"y" * MAX_DOCUMENT_BYTES
    envelope = seal(plaintext, recipients, max_bytes=ENVELOPE_LIMITS.max_bytes)
    assert MAX_DOCUMENT_BYTES < len(envelope) <= ENVELOPE_LIMITS.max_bytes
    assert open_envelope(envelope, KEYS[5], ADDRESSES[5]) == plaintext
