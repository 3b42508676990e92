"""MQTT topic names, shared by the miner (publisher), the gateway (subscriber) and the broker's ACL.

The publishing miner's checksummed address is a topic level of everything it publishes, so a
broker ACL (`pattern write .../%u/...`, username = the miner's address) lets a miner publish only
under its own name, and a subscriber knows who sent a message from the topic alone (never from a
payload field a stranger could fill in):

- `inferd/v1/{chainId}/{hub}/req/{requestId}/{miner}/delta`  — QoS 0 `{"seq", "choice", "delta"}`
- `inferd/v1/{chainId}/{hub}/req/{requestId}/{miner}/result` — QoS 1 `{"output", "signature", "miner"}`
- `inferd/v1/{chainId}/{hub}/miner/{miner}`                  — retained heartbeat
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from eth_utils.address import is_hex_address

from node.chain.abicall import checksum as _checksum  # cached: a keccak per address otherwise

PREFIX = "inferd/v1"

Kind = Literal["delta", "result"]


def _base(chain_id: int, hub: str) -> str:
    return f"{PREFIX}/{int(chain_id)}/{_checksum(hub)}"


def delta_topic(chain_id: int, hub: str, request_id: int, miner: str) -> str:
    """QoS 0 token deltas `{"seq", "choice", "delta"}` of one request, published by `miner`."""
    return f"{_base(chain_id, hub)}/req/{int(request_id)}/{_checksum(miner)}/delta"


def result_topic(chain_id: int, hub: str, request_id: int, miner: str) -> str:
    """QoS 1 final `{"output": <doc as string>, "signature", "miner"}` of one request, by `miner`."""
    return f"{_base(chain_id, hub)}/req/{int(request_id)}/{_checksum(miner)}/result"


def miner_topic(chain_id: int, hub: str, miner: str) -> str:
    """Retained heartbeat of one miner."""
    return f"{_base(chain_id, hub)}/miner/{_checksum(miner)}"


def request_filters(chain_id: int, hub: str) -> list[str]:
    """The gateway's two wildcard subscriptions: every miner's deltas and results on one hub."""
    base = f"{_base(chain_id, hub)}/req/+/+"
    return [f"{base}/delta", f"{base}/result"]


@dataclass(frozen=True)
class RequestTopic:
    """A parsed request topic: where it points and which miner published it."""

    chain_id: int
    hub: str
    request_id: int
    miner: str
    kind: Kind


def parse_request_topic(topic: str) -> RequestTopic | None:
    """The parts of a delta/result topic; None unless every level is well-formed and canonical.

    Canonical means exactly what `delta_topic`/`result_topic` write (decimal ids without sign or
    leading zeros, checksummed addresses): the ACL matches the miner level byte for byte, so a
    differently spelled address could only come from someone the ACL did not check against it.
    """
    parts = topic.split("/")
    # inferd / v1 / {chain} / {hub} / req / {id} / {miner} / {kind}
    if len(parts) != 8 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[4] != "req":
        return None
    chain, hub, request, miner, kind = parts[2], parts[3], parts[5], parts[6], parts[7]
    if kind not in ("delta", "result") or not (_canonical_uint(chain) and _canonical_uint(request)):
        return None
    if not (_is_checksum(hub) and _is_checksum(miner)):
        return None
    return RequestTopic(int(chain), hub, int(request), miner, "delta" if kind == "delta" else "result")


def _is_checksum(text: str) -> bool:
    """`is_checksum_address` through the checksum cache (the few miners of a hub recur)."""
    return is_hex_address(text) and text.startswith("0x") and _checksum(text) == text


def _canonical_uint(text: str) -> bool:
    return 0 < len(text) <= 78 and text.isascii() and text.isdigit() and (text == "0" or text[0] != "0")


__all__ = [
    "PREFIX",
    "RequestTopic",
    "delta_topic",
    "miner_topic",
    "parse_request_topic",
    "request_filters",
    "result_topic",
]
