"""A transaction sender for one key: nonces, EIP-1559 fees, gas margin, receipts, stuck-tx replacement.

Generic on purpose: the miner sends `submitResults` with it and the gateway `requestInference`.

* Nonces: one `TxSender` per key and process. Signing and broadcasting happen under a lock, and
  the local nonce only advances once the node accepted the transaction, so a failed broadcast
  leaves no gap; a "nonce too low/high" answer resyncs from the node's pending count.
* Fees: `maxPriorityFeePerGas` from the node, `maxFeePerGas = 2 * baseFee + tip`, read at most once
  per `fee_ttl_s` (default 1 s): a base fee moves at most 12.5% a block and the max fee allows it to
  double, so a second-old quote is as good, and a busy sender saves two RPCs per transaction.
* Gas: `eth_estimateGas` on the pending block `× gas_margin` (a revert there raises `TxWouldRevert`
  before any nonce is used, so callers can pre-check cheaply).
* Stuck transactions: when no receipt shows up within `stuck_after_s`, the same nonce is re-signed
  with tip and max fee bumped by at least 12.5% (the geth/anvil replacement rule) and broadcast;
  every hash ever sent for that nonce is watched, whichever is mined wins.
* Spending caps (optional, off by default): `max_fee_per_gas` bounds what any transaction may pay
  per gas (a base fee above it raises `TxFeeCapExceeded` before anything is signed; a replacement
  that would go above it is not sent), and `max_replacements` bounds the fee bumps per nonce. A
  gateway paying for strangers' requests sets both, so a gas spike cannot drain its wallet.
* `on_signed(tx_hash)` runs before every broadcast so that a caller can make the hash durable
  first (the miner's journal), and find the transaction again after a crash.
* RPC outages: broadcasts and receipt polls are retried with exponential backoff.
* Receipts are polled every `poll_s`, and at once when a new head is pushed (`on_head`, wired to
  the `chain.ws_url` subscription by the gateway): on a 2 s chain that is the block's push, not up
  to a poll interval after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError

from node.chain.abicall import hex_param, quantity, rpc
from node.chain.abicall import receipt as receipt_of
from node.log import get_logger

MIN_BUMP = 1.125
"""Nodes accept a replacement only with tip and max fee both at least 12.5% higher."""

log = get_logger("inferd.chain.sender")


class TxError(RuntimeError):
    """Base of every sender error."""


class TxWouldRevert(TxError):
    """`eth_estimateGas` says the call reverts; nothing was signed or sent."""

    def __init__(self, message: str, data: Any = None) -> None:
        self.data = data
        super().__init__(f"transaction would revert: {message}")


class TxReverted(TxError):
    """The transaction was mined but reverted (status 0): its gas is spent, its effects are not."""

    def __init__(self, tx_hash: str, receipt: Any) -> None:
        self.tx_hash = tx_hash
        self.receipt = receipt
        super().__init__(f"transaction {tx_hash} reverted in block {receipt.get('blockNumber')}")


class TxNonceGap(TxError):
    """A lower nonce of this key was lost (reorg, dropped tx): this transaction can never be mined."""


class TxFeeCapExceeded(TxError):
    """The network's base fee is above `max_fee_per_gas`: nothing was signed or sent."""


class TxTimeout(TxError):
    """No receipt within `receipt_timeout_s`, even after fee bumps; the nonce may still be pending."""


OnSigned = Callable[[str], Awaitable[None] | None]


def _rpc_data(exc: Web3RPCError) -> Any:
    """The revert data of an RPC error answer, if the node gave one."""
    if isinstance(exc.rpc_response, dict):
        err = exc.rpc_response.get("error")
        if isinstance(err, dict):
            return err.get("data")
    return None


def _rpc_message(exc: BaseException) -> str:
    if isinstance(exc, Web3RPCError) and isinstance(exc.rpc_response, dict):
        err = exc.rpc_response.get("error")
        if isinstance(err, dict):
            return str(err.get("message", exc))
    return str(exc)


@dataclass
class SenderStats:
    """Counters the metrics module exports."""

    sent: int = 0
    replaced: int = 0
    reverted: int = 0
    rpc_errors: int = 0
    gas_used: int = 0


@dataclass
class _Pending:
    nonce: int
    tx: dict[str, Any]
    hashes: list[str] = field(default_factory=list)
    sent_at: float = 0.0
    replacements: int = 0


class TxSender:
    """Sends transactions from one local account; safe to call from many tasks at once."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        account: LocalAccount,
        *,
        chain_id: int,
        gas_margin: float = 1.2,
        stuck_after_s: float = 30.0,
        receipt_timeout_s: float = 600.0,
        poll_s: float = 0.2,
        fee_bump: float = 1.15,
        max_backoff_s: float = 5.0,
        max_fee_per_gas: int | None = None,
        max_replacements: int | None = None,
        fee_ttl_s: float = 1.0,
    ) -> None:
        if fee_bump < MIN_BUMP:
            raise ValueError(f"fee_bump must be >= {MIN_BUMP} or nodes reject replacements")
        self.w3 = w3
        self.account = account
        self.chain_id = chain_id
        self.gas_margin = gas_margin
        self.stuck_after_s = stuck_after_s
        self.receipt_timeout_s = receipt_timeout_s
        self.poll_s = poll_s
        self._new_head = asyncio.Event()
        """Pulsed by `on_head`: receipt polls look at once instead of sleeping out `poll_s`."""
        self.fee_bump = fee_bump
        self.max_backoff_s = max_backoff_s
        self.max_fee_per_gas = max_fee_per_gas
        self.max_replacements = max_replacements
        self.fee_ttl_s = fee_ttl_s
        self._quote: tuple[float, int, int] | None = None
        """(when, base fee, tip) of the last fee quote (`fees`)."""
        self.stats = SenderStats()
        self._lock = asyncio.Lock()
        self._next_nonce: int | None = None
        self._from_latest = False
        self._in_flight: set[int] = set()

    @property
    def address(self) -> str:
        return str(self.account.address)

    def resync(self, *, from_latest: bool = False) -> None:
        """Forget the local nonce; the next send asks the node (pending count, or mined count after a gap)."""
        self._next_nonce = None
        self._from_latest = from_latest

    async def _retry(self, what: str, call: Callable[[], Awaitable[Any]], give_up_s: float) -> Any:
        """Run an RPC call, retrying transport errors with backoff for up to `give_up_s`."""
        delay = 0.1
        start = time.monotonic()
        while True:
            try:
                return await call()
            except (Web3RPCError, TxError):
                raise
            except Exception as exc:
                self.stats.rpc_errors += 1
                if time.monotonic() - start > give_up_s:
                    raise
                log.warning("rpc_retry", what=what, error=f"{type(exc).__name__}: {exc}", delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    async def _base_and_tip(self, fresh: bool) -> tuple[int, int]:
        now = time.monotonic()
        if not fresh and self._quote is not None and now - self._quote[0] < self.fee_ttl_s:
            return self._quote[1], self._quote[2]
        block = await self._retry(
            "get_block", lambda: rpc(self.w3, "eth_getBlockByNumber", ["latest", False]), 60
        )
        base = quantity(block.get("baseFeePerGas") or 0)
        try:
            tip = quantity(
                await self._retry(
                    "max_priority_fee", lambda: rpc(self.w3, "eth_maxPriorityFeePerGas", []), 60
                )
            )
        except Web3RPCError:
            tip = 1_000_000_000
        self._quote = (now, base, tip)
        return base, tip

    async def fees(self, *, fresh: bool = False) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas) for a transaction sent now, within `max_fee_per_gas`
        (from a quote at most `fee_ttl_s` old unless `fresh`)."""
        base, tip = await self._base_and_tip(fresh)
        cap = self.max_fee_per_gas
        if cap is None:
            return 2 * base + tip, tip
        if base >= cap:
            raise TxFeeCapExceeded(f"base fee {base} wei/gas is at or above the cap of {cap} wei/gas")
        max_fee = min(2 * base + tip, cap)
        return max_fee, min(tip, max_fee - base)

    async def estimate(self, tx: dict[str, Any]) -> int:
        """Gas for `tx` with the margin applied; TxWouldRevert when the call reverts.

        Estimated on the pending block, where the transaction will run: a hub call that is only
        allowed in a block after another (an r = 1 reveal after its commit) would revert on `latest`.
        """
        call = {k: hex_param(v) for k, v in tx.items() if v is not None}
        try:
            gas = await self._retry(
                "estimate_gas", lambda: rpc(self.w3, "eth_estimateGas", [call, "pending"]), 60
            )
        except Web3RPCError as exc:  # a revert (its data, when the node gives it) or another refusal
            raise TxWouldRevert(_rpc_message(exc), _rpc_data(exc)) from exc
        return int(quantity(gas) * self.gas_margin) + 1

    async def _nonce(self) -> int:
        if self._next_nonce is None:
            tag: Literal["latest", "pending"] = "latest" if self._from_latest else "pending"
            self._next_nonce = quantity(
                await self._retry(
                    "get_transaction_count",
                    lambda: rpc(self.w3, "eth_getTransactionCount", [self.account.address, tag]),
                    60,
                )
            )
            self._from_latest = False
        return self._next_nonce

    async def _broadcast(self, pending: _Pending, on_signed: OnSigned | None) -> str:
        signed = self.account.sign_transaction(pending.tx)  # type: ignore[arg-type]
        tx_hash = "0x" + bytes(signed.hash).hex()
        if on_signed is not None:
            result = on_signed(tx_hash)
            if result is not None:
                await result
        pending.hashes.append(tx_hash)
        raw = "0x" + bytes(signed.raw_transaction).hex()
        try:
            await self._retry(
                "send_raw_transaction", lambda: rpc(self.w3, "eth_sendRawTransaction", [raw]), 120
            )
        except Web3RPCError as exc:
            msg = _rpc_message(exc).lower()
            if "already known" not in msg and "already imported" not in msg:
                raise
        pending.sent_at = time.monotonic()
        self.stats.sent += 1
        return tx_hash

    async def send(
        self,
        to: str,
        data: bytes | str,
        *,
        value: int = 0,
        gas: int | None = None,
        extra_gas: int = 0,
        on_signed: OnSigned | None = None,
    ) -> Any:
        """Send one transaction and return its successful receipt.

        `extra_gas` is added to the estimate for work the estimate cannot see: a hub call whose cost
        depends on what lands first in the same block (the last commit opens the reveal window, the
        last reveal settles and pays every seat). Unused gas is not charged.

        Raises TxWouldRevert (estimate failed; nothing sent), TxReverted (mined with status 0) or
        TxTimeout. `on_signed` sees every hash (replacements included) before it is broadcast.
        """
        data_hex = data if isinstance(data, str) else "0x" + data.hex()
        base: dict[str, Any] = {
            "from": self.account.address,
            "to": to_checksum_address(to),
            "data": data_hex,
            "value": value,
            "chainId": self.chain_id,
        }
        if gas is None:
            gas = await self.estimate({k: base[k] for k in ("from", "to", "data", "value")}) + extra_gas
        max_fee, tip = await self.fees()
        for attempt in range(3):
            async with self._lock:
                nonce = await self._nonce()
                tx = {**base, "gas": gas, "nonce": nonce, "maxFeePerGas": max_fee,
                      "maxPriorityFeePerGas": tip, "type": 2}  # fmt: skip
                pending = _Pending(nonce=nonce, tx=tx)
                try:
                    tx_hash = await self._broadcast(pending, on_signed)
                except Web3RPCError as exc:
                    msg = _rpc_message(exc).lower()
                    self.resync()
                    if "nonce" in msg and attempt < 2:
                        log.warning("nonce_resync", nonce=nonce, error=msg)
                        continue
                    raise TxError(f"node rejected the transaction: {_rpc_message(exc)}") from exc
                except Exception:
                    self.resync()
                    raise
                self._next_nonce = nonce + 1
            log.debug("tx_sent", tx_hash=tx_hash, nonce=nonce, gas=gas)
            self._in_flight.add(nonce)
            try:
                return await self._await_receipt(pending, on_signed)
            finally:
                self._in_flight.discard(nonce)
        raise TxError("could not find a usable nonce after 3 resyncs")

    def on_head(self, number: int) -> None:
        """A new block was pushed (`chain.ws_url`): look for the receipts we wait on now."""
        self._new_head.set()  # wakes every waiting poll; clearing at once makes it a pulse
        self._new_head.clear()

    async def _find_receipt(self, pending: _Pending) -> Any | None:
        for tx_hash in reversed(pending.hashes):
            raw = await rpc(self.w3, "eth_getTransactionReceipt", [tx_hash])  # null: not mined (yet)
            if raw is not None and raw.get("blockNumber") is not None:
                return receipt_of(raw)
        return None

    async def _await_receipt(self, pending: _Pending, on_signed: OnSigned | None) -> Any:
        start = time.monotonic()
        delay = self.poll_s
        while True:
            try:
                receipt = await self._find_receipt(pending)
                delay = self.poll_s
            except Exception as exc:
                if isinstance(exc, Web3RPCError):
                    raise
                self.stats.rpc_errors += 1
                log.warning("rpc_retry", what="get_transaction_receipt", error=f"{type(exc).__name__}: {exc}")
                receipt = None
                delay = min(delay * 2, self.max_backoff_s)
            if receipt is not None:
                tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
                self.stats.gas_used += int(receipt.get("gasUsed", 0))
                if int(receipt["status"]) != 1:
                    self.stats.reverted += 1
                    raise TxReverted(tx_hash, receipt)
                return receipt
            now = time.monotonic()
            if now - start > self.receipt_timeout_s:
                raise TxTimeout(
                    f"no receipt for nonce {pending.nonce} after {self.receipt_timeout_s:.0f}s "
                    f"(hashes {pending.hashes}); is the node mining?"
                )
            if now - pending.sent_at > self.stuck_after_s:
                await self._check_gap(pending)
                if self.max_replacements is None or pending.replacements < self.max_replacements:
                    await self._replace(pending, on_signed)
            with contextlib.suppress(TimeoutError):  # the next poll, or a new head pushed sooner
                await asyncio.wait_for(self._new_head.wait(), delay)

    async def _check_gap(self, pending: _Pending) -> None:
        """A lower nonce of ours vanished (e.g. dropped by a reorg): no fee bump can mine this one.

        Raise TxNonceGap and resync from the mined count, so the caller's retry fills the gap.
        """
        try:
            mined = int(await self.w3.eth.get_transaction_count(self.account.address, "latest"))
        except Exception:
            return
        if mined >= pending.nonce:
            return
        for nonce in range(mined, pending.nonce):
            if nonce in self._in_flight:
                return  # a lower transaction of ours is still being handled: wait for it
        self.resync(from_latest=True)
        raise TxNonceGap(
            f"nonce {pending.nonce} cannot be mined: the chain is at nonce {mined} and no transaction of "
            "ours fills the gap (dropped by a reorg?); resynced, retry the send"
        )

    async def _replace(self, pending: _Pending, on_signed: OnSigned | None) -> None:
        """Re-sign the same nonce with bumped fees (>= the market and >= old × fee_bump)."""
        try:
            market_max, market_tip = await self.fees(fresh=True)
        except Exception:
            pending.sent_at = time.monotonic()
            return
        old_tip = int(pending.tx["maxPriorityFeePerGas"])
        old_max = int(pending.tx["maxFeePerGas"])
        tip = max(market_tip, int(old_tip * self.fee_bump) + 1)
        max_fee = max(market_max, int(old_max * self.fee_bump) + 1, tip)
        if self.max_fee_per_gas is not None and max_fee > self.max_fee_per_gas:
            pending.sent_at = time.monotonic()
            pending.replacements += 1  # counts as a try: the cap will not move for this nonce
            log.info("replacement_capped", nonce=pending.nonce, max_fee=max_fee, cap=self.max_fee_per_gas)
            return
        pending.replacements += 1
        pending.tx = {**pending.tx, "maxPriorityFeePerGas": tip, "maxFeePerGas": max_fee}
        try:
            tx_hash = await self._broadcast(pending, on_signed)
        except Web3RPCError as exc:
            msg = _rpc_message(exc).lower()
            pending.sent_at = time.monotonic()
            # "nonce too low": one of our earlier hashes was mined, the receipt poll will find it.
            log.info("replacement_rejected", nonce=pending.nonce, error=msg)
            return
        except Exception as exc:
            pending.sent_at = time.monotonic()
            log.warning("replacement_failed", nonce=pending.nonce, error=f"{type(exc).__name__}: {exc}")
            return
        self.stats.replaced += 1
        log.warning("tx_replaced", nonce=pending.nonce, tx_hash=tx_hash, tip=tip, max_fee=max_fee)


__all__ = [
    "MIN_BUMP",
    "SenderStats",
    "TxError",
    "TxFeeCapExceeded",
    "TxNonceGap",
    "TxReverted",
    "TxSender",
    "TxTimeout",
    "TxWouldRevert",
]
