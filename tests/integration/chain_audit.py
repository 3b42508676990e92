"""What an address actually signed and got mined: its transactions to the hub, decoded from calldata.

Events are not enough to show that a miner never submitted a result twice: the contract refuses a
second submission (the transaction reverts and emits nothing), so the events look the same either
way. These helpers read the blocks themselves (`eth_getBlockByNumber` with full transactions), keep
the transactions sent from one address, decode `submitResult` / `submitResults` calldata into the
(request id, output digest) pairs they carried, and pair each with its receipt's status.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from web3.exceptions import TransactionNotFound


@dataclass(frozen=True)
class SentTx:
    """One mined transaction from the audited address."""

    block: int
    hash: str
    nonce: int
    ok: bool  # receipt status 1
    function: str  # the hub function called, or "" for anything that is not a hub call
    results: tuple[tuple[int, bytes], ...]  # (request id, output digest) pairs it submitted


def _submitted(name: str, args: dict[str, Any]) -> tuple[tuple[int, bytes], ...]:
    if name == "submitResult":
        return ((int(args["id"]), bytes(args["outputDigest"])),)
    if name == "submitResults":
        return tuple((int(i), bytes(d)) for i, d in zip(args["ids"], args["outputDigests"], strict=True))
    return ()


async def sent_by(w3: Any, hub: Any, sender: str, first: int = 0, last: int | None = None) -> list[SentTx]:
    """Every transaction from `sender` mined in blocks `first..last` (default: to the head), in order.

    `hub` is the hub's web3 contract object (`HubClient.contract`), used to decode calldata.
    """
    last = int(await w3.eth.block_number) if last is None else last
    out: list[SentTx] = []
    for number in range(first, last + 1):
        block = await w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            if str(tx["from"]).lower() != sender.lower():
                continue
            receipt = await w3.eth.get_transaction_receipt(tx["hash"])
            name = ""
            results: tuple[tuple[int, bytes], ...] = ()
            if tx.get("to") is not None and str(tx["to"]).lower() == str(hub.address).lower():
                fn, args = hub.decode_function_input(tx["input"])
                name = str(fn.fn_name)
                results = _submitted(name, dict(args))
            out.append(
                SentTx(
                    number,
                    "0x" + bytes(tx["hash"]).hex(),
                    int(tx["nonce"]),
                    receipt["status"] == 1,
                    name,
                    results,
                )
            )
    return out


def submissions_per_request(txs: list[SentTx]) -> Counter[int]:
    """How many mined transactions (successful or not) carried a result for each request id."""
    return Counter(rid for tx in txs for rid, _ in tx.results)


async def receipt_or_none(w3: Any, tx_hash: str) -> Any:
    """The receipt of `tx_hash` on the current chain, or None where it is in no block."""
    try:
        return await w3.eth.get_transaction_receipt(tx_hash)
    except TransactionNotFound:
        return None
