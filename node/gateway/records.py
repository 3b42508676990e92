"""Plain records passed between the HTTP layer, the pending registry and the chain backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.content.documents import OutputDocument


@dataclass(frozen=True)
class ModelInfo:
    """A model from the hub's registry on one chain, with its live miner count.

    Protocol v2 prices a request at `min_fee` (the model's base fee) + `per_token_fee` x the
    `maxTokens` it declares (`price`); `engine_class` is the bytes32 every miner of it runs.
    """

    chain_id: int
    name: str
    model_id: str
    min_fee: int
    min_stake: int
    timeout_blocks: int
    redundancy: int
    active_miners: int
    created: int = 0
    per_token_fee: int = 0
    engine_class: str | None = None
    audit_bps: int = 0

    def price(self, max_tokens: int) -> int:
        """`InferenceHub.price(model, maxTokens)`: the exact fee of a request declaring `max_tokens`."""
        return self.min_fee + self.per_token_fee * max_tokens


@dataclass(frozen=True)
class Submission:
    """A request accepted on chain: everything `onchain_data` needs before the result."""

    chain_id: int
    hub: str
    request_id: int
    infer_tx: str
    assignees: tuple[str, ...]
    input_cid: str
    input_digest: bytes
    model: str
    fee: int = 0
    deadline_block: int | None = None
    created: int = 0
    """Unix time of the block that carried the request (streamed chunks' `created`)."""
    gas_cost: int = 0
    """Wei the gateway wallet paid in gas for the request (and assign) transactions."""
    max_tokens: int = 0
    """The `maxTokens` the request declared on chain (what `fee` paid for)."""
    engine_class: str | None = None
    """The model's engine class (0x bytes32) when the request was sent."""


@dataclass(frozen=True)
class VerifiedResult:
    """An output document whose sha256 equals the finalized on-chain digest (and whose signature,
    when present, recovers to an assignee). Only this type is ever answered to a client."""

    submission: Submission
    output: OutputDocument
    output_bytes: bytes
    output_cid: str
    signature: str | None
    signer: str | None
    submit_tx: str | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCallFragment:
    """One `tool_calls` entry of a streamed delta, OpenAI style: a call's first fragment has `id` and
    `name` (arguments usually empty), later ones only an `arguments` piece to append."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    @property
    def nbytes(self) -> int:
        parts = (self.id or "", self.name or "", self.arguments)
        return sum(len(p.encode("utf-8", "surrogatepass")) for p in parts)

    def entry(self) -> dict[str, Any]:
        """The fragment as a chunk's `delta.tool_calls` entry."""
        if self.name is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {
            "index": self.index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class Delta:
    """One streamed delta from a miner (unverified until the final result arrives): a text piece
    and/or tool-call fragments."""

    seq: int
    choice: int
    text: str
    miner: str | None = None
    """Who published it (the MQTT topic's miner level); only an assignee's deltas are relayed."""
    tool_calls: tuple[ToolCallFragment, ...] = ()
    sealed: str | None = None
    """A private request's encrypted delta (`node.miner.private.seal_delta`), opened by the gateway."""

    @property
    def nbytes(self) -> int:
        """What buffering it costs: its text and its fragments' strings, in UTF-8 bytes."""
        text = len(self.text.encode("utf-8", "surrogatepass")) + len(self.sealed or "")
        return text + sum(f.nbytes for f in self.tool_calls)


__all__ = ["Delta", "ModelInfo", "Submission", "ToolCallFragment", "VerifiedResult"]
