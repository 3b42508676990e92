"""What an address actually signed and got mined: its transactions to the hub, decoded from calldata.

Events are not enough to show that a miner never committed or revealed twice: the contract refuses
a second commit or reveal (the transaction reverts and emits nothing), so the events look the same
either way. These helpers read the blocks themselves (`eth_getBlockByNumber` with full
transactions), keep the transactions sent from one address, decode `commit`/`commitMany`/
`commitBatch` and `reveal`/`revealMany`/`revealBatch` calldata into the (request id, commitment or
digest) pairs they carried, and pair each with its receipt's status. A `commitBatch` commits each of
its ids (the pair carries the root); a `revealBatch` reveals the ids it passes a digest for, and
*withholds* those it passes a leaf for (drawn for audit: revealed later by a single `reveal`).
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
    commits: tuple[tuple[int, bytes], ...]  # (request id, commitment) pairs it committed
    reveals: tuple[tuple[int, bytes], ...]  # (request id, output digest) pairs it revealed
    withheld: tuple[tuple[int, bytes], ...] = ()  # (request id, leaf) a revealBatch withheld

    @property
    def results(self) -> tuple[tuple[int, bytes], ...]:
        """The (request id, output digest) results it put on chain: its reveals."""
        return self.reveals


def _pairs(
    name: str, args: dict[str, Any], one: str, many: str, value: str, values: str
) -> tuple[tuple[int, bytes], ...]:
    if name == one:
        return ((int(args["id"]), bytes(args[value])),)
    if name == many:
        return tuple((int(i), bytes(d)) for i, d in zip(args["ids"], args[values], strict=True))
    return ()


def _batch(name: str, args: dict[str, Any]) -> tuple[tuple[tuple[int, bytes], ...], ...]:
    """(commits, reveals, withheld) of a `commitBatch` / `revealBatch` call."""
    if name == "commitBatch":
        return tuple((int(i), bytes(args["root"])) for i in args["ids"]), (), ()
    if name == "revealBatch":
        mask = int(args["withheld"])
        pairs = [(int(i), bytes(x)) for i, x in zip(args["ids"], args["items"], strict=True)]
        shown = tuple(p for n, p in enumerate(pairs) if not mask >> n & 1)
        return (), shown, tuple(p for n, p in enumerate(pairs) if mask >> n & 1)
    return (), (), ()


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
            commits: tuple[tuple[int, bytes], ...] = ()
            reveals: tuple[tuple[int, bytes], ...] = ()
            withheld: tuple[tuple[int, bytes], ...] = ()
            if tx.get("to") is not None and str(tx["to"]).lower() == str(hub.address).lower():
                fn, args = hub.decode_function_input(tx["input"])
                name = str(fn.fn_name)
                commits = _pairs(name, dict(args), "commit", "commitMany", "commitment", "commitments")
                reveals = _pairs(name, dict(args), "reveal", "revealMany", "outputDigest", "outputDigests")
                if name in ("commitBatch", "revealBatch"):
                    commits, reveals, withheld = _batch(name, dict(args))
            out.append(
                SentTx(
                    number, "0x" + bytes(tx["hash"]).hex(), int(tx["nonce"]), receipt["status"] == 1, name,
                    commits, reveals, withheld,
                )
            )  # fmt: skip
    return out


def commits_per_request(txs: list[SentTx]) -> Counter[int]:
    """How many mined transactions (successful or not) carried a commitment for each request id."""
    return Counter(rid for tx in txs for rid, _ in tx.commits)


def reveals_per_request(txs: list[SentTx]) -> Counter[int]:
    """How many mined transactions (successful or not) carried a reveal for each request id."""
    return Counter(rid for tx in txs for rid, _ in tx.reveals)


submissions_per_request = reveals_per_request


async def receipt_or_none(w3: Any, tx_hash: str) -> Any:
    """The receipt of `tx_hash` on the current chain, or None where it is in no block."""
    try:
        return await w3.eth.get_transaction_receipt(tx_hash)
    except TransactionNotFound:
        return None
