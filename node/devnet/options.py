"""What `inferd devnet up` accepts (`UpOptions`), the errors it stops with, and how it picks ports."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import DEFAULT_MODEL_NAME
from node.devnet.processes import free_port

MAX_MINERS = 16


class DevnetError(RuntimeError):
    """The devnet could not start (a part failed, a port is taken, one is already running)."""


class FakeEngineChainError(DevnetError):
    """`--fake-engine` with a `--chain-id` other than anvil's 31337 (the miners would refuse it too)."""


@dataclass
class UpOptions:
    """Everything `inferd devnet up` accepts; ports of 0 mean "a free one"."""

    data_dir: Path
    fresh: bool = False
    miners: int = 1
    redundancy: int | None = None
    block_time: float | None = None
    chain_id: int = 31337
    rpc_port: int = 0
    broker_port: int = 0
    gateway_port: int = 0
    model: str = DEFAULT_MODEL_NAME
    ready_timeout_s: float = 900.0
    chain_only: bool = False  # write every config but launch no miner or gateway (run them yourself)
    fake_engine: bool = False  # miners answer with the deterministic FakeEngine (no vLLM, no model)

    @property
    def effective_redundancy(self) -> int:
        """min(miners, 3) by default: with 3 miners a request needs 2 matching results (quorum)."""
        return self.redundancy if self.redundancy is not None else min(self.miners, 3)

    def validate(self) -> None:
        if not 1 <= self.miners <= MAX_MINERS:
            raise DevnetError(f"--miners must be between 1 and {MAX_MINERS}")
        if not 1 <= self.effective_redundancy <= min(self.miners, 7):
            raise DevnetError("--redundancy must be between 1 and min(--miners, 7)")
        if self.fake_engine:
            from node.miner.run import DEVNET_CHAIN_ID

            if self.chain_id != DEVNET_CHAIN_ID:
                raise FakeEngineChainError(
                    f"--fake-engine runs only on the devnet's chain id {DEVNET_CHAIN_ID}, "
                    f"not --chain-id {self.chain_id}: its outputs are made up"
                )


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on `port` now (SO_REUSEADDR, as servers do: TIME_WAIT is ok)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(flag: int, previous: Any, taken: set[int]) -> int:
    """The port asked for; else the one this devnet used last time if still free; else any free one.

    Reusing the previous port keeps a restarted devnet's URLs (and devnet.json) stable; `taken`
    holds the ports already handed out, so two parts never get the same one.
    """
    if flag:
        if flag in taken or not port_free(flag):
            raise DevnetError(f"port {flag} is already in use on 127.0.0.1")
        port = flag
    elif isinstance(previous, int) and previous > 0 and previous not in taken and port_free(previous):
        port = previous
    else:
        port = free_port()
        while port in taken:
            port = free_port()
    taken.add(port)
    return port


__all__ = [
    "MAX_MINERS",
    "DevnetError",
    "FakeEngineChainError",
    "UpOptions",
    "pick_port",
    "port_free",
]
