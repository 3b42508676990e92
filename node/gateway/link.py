"""`ChainLink`: everything the gateway holds for one chain, in its own module because the chain
backend (`node.gateway.chain_backend`), the request path (`node.gateway.requesting`), private-input
sealing (`node.gateway.sealing`) and equivocation proofs (`node.gateway.equivocation`) all act on it,
and none of them should import another just for this type.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from node.chain.hub import HubClient
from node.chain.sender import TxSender
from node.chain.watcher import LogFollower
from node.config import ChainSettings
from node.gateway.batcher import RequestBatcher, SharedCall
from node.gateway.private import PrivateDesk
from node.gateway.records import ModelInfo


@dataclass
class ChainLink:
    """Everything the gateway holds for one chain."""

    settings: ChainSettings
    chain_id: int
    hub: HubClient
    sender: TxSender
    follower: LogFollower[Any] | None = None
    task: asyncio.Task[None] | None = None
    models: dict[str, tuple[float, ModelInfo | None]] = field(default_factory=dict)
    private: PrivateDesk | None = None
    """Private requests sent with this chain's wallet (`node.gateway.private`)."""
    batchers: dict[bytes, RequestBatcher] = field(default_factory=dict)
    """Request transactions per model id (`node.gateway.batcher`)."""
    assigner: SharedCall[Any] | None = None
    """The `assign` transaction the requests of one batch share."""

    @property
    def hub_address(self) -> str:
        return str(self.hub.address)


__all__ = ["ChainLink"]
