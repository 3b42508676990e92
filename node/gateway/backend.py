"""What the HTTP layer needs from the network, as a Protocol: the chain-backed implementation lives
in `chain_backend.py`, and unit tests plug in a fake so the HTTP layer is tested without a chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from node.content.documents import InputDocument
from node.gateway.pending import PendingInference
from node.gateway.records import ModelInfo


class InferenceBackend(Protocol):
    """The network as the gateway sees it: models, submission, results, lookups."""

    @property
    def default_chain_id(self) -> int: ...

    def chain_ids(self) -> list[int]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def list_models(self, chain_id: int) -> list[ModelInfo]: ...

    async def get_model(self, chain_id: int, name: str) -> ModelInfo | None: ...

    async def submit(
        self,
        chain_id: int,
        document: InputDocument,
        document_bytes: bytes,
        model: ModelInfo,
        *,
        private: bool | None = None,
        live: bool = True,
    ) -> PendingInference:
        """Store the input, send `requestInference`, and register for its result (one call).

        `private` (None: the backend's default) seals the input to its seats (issue 16). `live`:
        whether the caller relays live deltas (a streaming client); its seats publish none if not.
        """
        ...

    async def get_inference(self, chain_id: int, request_id: int) -> dict[str, Any]:
        """The on-chain record of a request (NotFound if none), plus the verified output if final."""
        ...

    async def health(self) -> dict[str, Any]: ...

    def add_rejection_listener(self, listener: Callable[[str], None]) -> None:
        """Be told (with a reason) of every output that failed verification."""
        ...


__all__ = ["InferenceBackend"]
