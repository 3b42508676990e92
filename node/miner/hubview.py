"""The miner's narrow view of the InferenceHub: the events it follows, request checks, submit calldata.

Built on `node.chain.hub.HubClient` (views) and `node.chain.events` (decoding); adds only what the
pipeline needs to check the chain before submitting.
"""

from __future__ import annotations

from typing import Any

from eth_utils.address import to_checksum_address

from node.chain.errors import HubError
from node.chain.events import (
    InferenceExpired,
    InferenceFinalized,
    InferenceRequested,
    ResultSubmitted,
    decode_log,
    event_topic,
)
from node.chain.hub import HubClient, RequestInfo, RequestStatus

MinerEvent = InferenceRequested | ResultSubmitted | InferenceFinalized | InferenceExpired
EVENT_NAMES = ("InferenceRequested", "ResultSubmitted", "InferenceFinalized", "InferenceExpired")


def submitted_by(info: RequestInfo, miner: str) -> bytes | None:
    """The digest `miner` has on chain for this request (None: not an assignee or not submitted)."""
    miner = to_checksum_address(miner)
    for who, digest in zip(info.assignees, info.submitted, strict=False):
        if who == miner and digest:
            return digest
    return None


class HubView:
    """Decoding and checks for one deployed hub."""

    def __init__(self, hub: HubClient) -> None:
        self.hub = hub
        self.address = hub.address

    @property
    def topics(self) -> list[list[str]]:
        """A getLogs topic filter matching the four events the miner follows."""
        return [[event_topic(name) for name in EVENT_NAMES]]

    @staticmethod
    def decode(entry: Any) -> MinerEvent | None:
        """A typed event for one raw log; None for hub events the miner does not follow."""
        ev = decode_log(entry)
        if isinstance(ev, InferenceRequested | ResultSubmitted | InferenceFinalized | InferenceExpired):
            return ev
        return None

    def decode_receipt(self, receipt: Any) -> list[MinerEvent]:
        out: list[MinerEvent] = []
        for entry in receipt.get("logs", []):
            if to_checksum_address(entry["address"]) != self.address:
                continue
            ev = self.decode(entry)
            if ev is not None:
                out.append(ev)
        return out

    async def get_request(self, request_id: int) -> RequestInfo | None:
        """The request's on-chain record; None when the id is unknown (e.g. reorged out)."""
        try:
            return await self.hub.get_request(request_id)
        except HubError as exc:
            if exc.name == "UnknownRequest":
                return None
            raise

    def submit_calldata(self, ids: list[int], digests: list[bytes]) -> str:
        """Calldata for `submitResult` (one) or `submitResults` (many)."""
        c = self.hub.contract
        if len(ids) == 1:
            return str(c.encode_abi("submitResult", args=[ids[0], digests[0]]))
        return str(c.encode_abi("submitResults", args=[ids, digests]))


__all__ = ["EVENT_NAMES", "HubView", "MinerEvent", "RequestInfo", "RequestStatus", "submitted_by"]
