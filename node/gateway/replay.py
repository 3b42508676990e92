"""Deterministic re-execution: run a request's input through a local engine and compare the output
digest with the one the chain finalized (what `inferd replay` does).

Honest miners with the same engine build produce the same bytes (seeded sampling, fixed templates,
`created` = the request block's timestamp), so a match shows the on-chain result is reproducible;
a mismatch with an equal `system_fingerprint` points at a dishonest (or non-deterministic) result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from node.chain.events import InferenceRequested, decode_logs, event_topic
from node.chain.hub import UNAVAILABLE, HubClient, Phase
from node.content.cid import digest_of, digest_to_cid
from node.content.documents import OutputDocument, to_canonical_bytes
from node.content.store import ContentStore
from node.miner.pipeline import EngineLike


class ReplayError(Exception):
    """The request cannot be replayed (unknown id, input not fetchable, no request event)."""


@dataclass(frozen=True)
class ReplayResult:
    request_id: int
    status: str
    input_cid: str
    replayed_output_cid: str
    onchain_output_cid: str | None
    match: bool
    system_fingerprint: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def request_timestamp(hub: HubClient, request_id: int, deadline: int, timeout_blocks: int) -> int:
    """Timestamp of the block with `InferenceRequested(request_id)`: the output document's `created`."""
    w3 = hub.w3
    head = int(await w3.eth.block_number)
    hi = min(head, deadline)
    lo = max(0, deadline - 2 * timeout_blocks - 16)
    topic_id = "0x" + request_id.to_bytes(32, "big").hex()
    while True:
        logs = await w3.eth.get_logs(
            {
                "address": hub.address,
                "fromBlock": lo,
                "toBlock": hi,
                "topics": [event_topic("InferenceRequested"), topic_id],  # type: ignore[list-item]
            }
        )
        for ev in decode_logs(logs):  # type: ignore[arg-type]
            if isinstance(ev, InferenceRequested) and ev.id == request_id:
                block = await w3.eth.get_block(ev.log.block_number)
                return int(block["timestamp"])
        if lo == 0:
            raise ReplayError(f"no InferenceRequested event for request {request_id} on {hub.address}")
        hi, lo = lo, max(0, lo - 10_000)


async def replay_request(
    hub: HubClient, store: ContentStore, engine: EngineLike, request_id: int
) -> tuple[ReplayResult, OutputDocument]:
    """Fetch the input by its on-chain digest, re-run it, and compare digests."""
    info = await hub.get_request(request_id)
    if info.phase == Phase.NONE:
        raise ReplayError(f"request {request_id} does not exist on hub {hub.address}")
    model = await hub.get_model(info.model_id)
    input_cid = digest_to_cid(info.input_digest)
    data = await store.get(input_cid)  # verified against the CID by the store
    head = int(await hub.w3.eth.block_number)  # v2 phases move the mark: search back from the head
    created = await request_timestamp(hub, request_id, head, model.timeout_blocks)
    output = await engine.generate(
        data,  # type: ignore[arg-type]
        request_id=request_id,
        input_cid=input_cid,
        created=created,
    )
    digest = digest_of(to_canonical_bytes(output))
    final = info.phase == Phase.FINAL and info.output_digest != UNAVAILABLE
    onchain = info.output_digest if final else None
    result = ReplayResult(
        request_id=request_id,
        status="finalized" if final else info.phase.name.lower(),
        input_cid=input_cid,
        replayed_output_cid=digest_to_cid(digest),
        onchain_output_cid=digest_to_cid(onchain) if onchain else None,
        match=onchain is not None and onchain == digest,
        system_fingerprint=engine.system_fingerprint,
    )
    return result, output


__all__ = ["ReplayError", "ReplayResult", "replay_request", "request_timestamp"]
