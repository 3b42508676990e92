"""MQTT topic names (see DESIGN "MQTT topics"); shared by the miner (publisher) and the gateway."""

from __future__ import annotations

from eth_utils.address import to_checksum_address

PREFIX = "inferd/v1"


def _base(chain_id: int, hub: str) -> str:
    return f"{PREFIX}/{int(chain_id)}/{to_checksum_address(hub)}"


def delta_topic(chain_id: int, hub: str, request_id: int) -> str:
    """QoS 0 token deltas `{"seq", "choice", "delta"}` of one request."""
    return f"{_base(chain_id, hub)}/req/{int(request_id)}/delta"


def result_topic(chain_id: int, hub: str, request_id: int) -> str:
    """QoS 1 final `{"output": <doc as string>, "signature", "miner"}` of one request."""
    return f"{_base(chain_id, hub)}/req/{int(request_id)}/result"


def miner_topic(chain_id: int, hub: str, miner: str) -> str:
    """Retained heartbeat of one miner."""
    return f"{_base(chain_id, hub)}/miner/{to_checksum_address(miner)}"


__all__ = ["PREFIX", "delta_topic", "miner_topic", "result_topic"]
