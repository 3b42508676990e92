"""A submission's `created` (`Requester._block_time`): the receipt's `blockTimestamp` where the node
gives one, no RPC; otherwise one `eth_getBlockByNumber` per block, shared by the requests it holds."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from node.gateway import requesting
from node.gateway.requesting import Requester
from tests.unit.test_gateway_parts import registry


def requester() -> Requester:
    reg, _ = registry()
    return Requester(
        None,  # type: ignore[arg-type]
        reg,
        on_event=lambda *_: None,
        private_event=lambda *_: None,
        seal=lambda *_: None,
        remember=lambda *_: None,
    )


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    seen: list[list[Any]] = []

    async def rpc(w3: Any, method: str, params: list[Any]) -> Any:
        assert method == "eth_getBlockByNumber"
        seen.append(params)
        return {"timestamp": "0x65"}

    monkeypatch.setattr(requesting, "rpc", rpc)
    return seen


LINK: Any = SimpleNamespace(chain_id=31337, hub=SimpleNamespace(w3=None))


async def test_the_receipts_own_timestamp(reads: list[list[Any]]) -> None:
    stamped = {"blockHash": b"\x01" * 32, "blockNumber": 7, "blockTimestamp": "0x6553f100"}
    assert await requester()._block_time(LINK, stamped) == 0x6553F100
    assert reads == []


async def test_read_once_per_block_without_one(reads: list[list[Any]]) -> None:
    req = requester()
    plain = {"blockHash": b"\x02" * 32, "blockNumber": 8}
    assert await req._block_time(LINK, plain) == 0x65
    assert await req._block_time(LINK, dict(plain)) == 0x65
    assert reads == [["0x8", False]]
