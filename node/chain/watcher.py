"""Follow contract logs reliably: bounded `eth_getLogs` ranges, confirmations, a persisted cursor,
reorg detection by block hash, and backoff on RPC errors.

One path serves live following, catch-up after downtime and reorg re-scans: new blocks are learned
by polling `eth_blockNumber` (or an external `wake()`), logs are always read with `eth_getLogs` over
`[cursor+1, min(head-confirmations, cursor+range)]`.

With `ws_url` the follower also runs a `node.chain.heads.HeadSubscription` while `follow()` runs:
each new head only wakes this same loop, so push changes latency, never what is read or when the
cursor moves. While the socket is up an idle follower polls every `push_poll_interval_s` (a safety
net for a subscription gone silent); while it is down, or when the HTTP node is behind the head the
socket announced, it polls every `poll_interval_s` as without one.

The cursor only advances after the consumer has handled a batch (the generator resumes), so a crash
re-reads at most one batch: consumers must be idempotent (the miner's journal is). Block hashes of
the batch end and of every block with a matching log are remembered; before each step the newest
remembered hash is compared with the chain (when the step reads just the next block, with that
block's parent hash: three RPCs a block, not four), and on a mismatch the follower walks back to the
last block that still matches, rewinds the cursor there and yields `Reorg(fork_block)` before
re-scanning.

Generic: give it an address, topics and a `decode(log) -> event | None`; the miner and the gateway
each bring their own filter. A log that `decode` cannot read is logged, counted and skipped: raising
would turn it into an "RPC error" retried forever, and one bad log would stall the follower.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from eth_utils.address import to_checksum_address
from web3 import AsyncWeb3

from node.chain.abicall import hex_param, quantity, rpc
from node.chain.heads import HeadSubscription
from node.log import get_logger

T = TypeVar("T")
log = get_logger("inferd.chain.watcher")


class CursorStore(Protocol):
    """Where the follower keeps its progress (the miner's journal implements it)."""

    def load_cursor(self) -> int | None: ...
    def save_cursor(self, block: int, hashes: dict[int, str]) -> None: ...
    def recent_hashes(self) -> dict[int, str]: ...
    def rewind(self, block: int) -> None: ...


class MemoryCursor:
    """A CursorStore in memory, for followers that may re-scan from scratch after a restart."""

    def __init__(self, cursor: int | None = None, keep: int = 256) -> None:
        self.cursor = cursor
        self.hashes: dict[int, str] = {}
        self.keep = keep

    def load_cursor(self) -> int | None:
        return self.cursor

    def save_cursor(self, block: int, hashes: dict[int, str]) -> None:
        self.hashes.update(hashes)
        self.cursor = block
        for n in [n for n in self.hashes if n <= block - self.keep]:
            del self.hashes[n]

    def recent_hashes(self) -> dict[int, str]:
        return dict(self.hashes)

    def rewind(self, block: int) -> None:
        self.cursor = block
        for n in [n for n in self.hashes if n > block]:
            del self.hashes[n]


@dataclass(frozen=True)
class LogBatch(Generic[T]):
    """Decoded events of blocks `from_block..to_block` (inclusive), in chain order."""

    from_block: int
    to_block: int
    head: int
    events: list[T]
    timestamps: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Reorg:
    """Blocks from `fork_block` on were replaced; they are re-scanned right after this notice."""

    fork_block: int
    depth: int


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


@dataclass
class FollowerStats:
    """What the follower has seen, for status and metrics."""

    head: int = -1
    cursor: int = -1
    batches: int = 0
    reorgs: int = 0
    rpc_errors: int = 0
    decode_errors: int = 0


class LogFollower(Generic[T]):
    """Yields `LogBatch | Reorg` forever (until `stop()`); see the module docstring."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        *,
        address: str,
        decode: Callable[[Any], T | None],
        cursor: CursorStore,
        topics: Sequence[Any] | None = None,
        start_block: int = 0,
        confirmations: int = 0,
        range_blocks: int = 1000,
        poll_interval_s: float = 1.0,
        max_backoff_s: float = 10.0,
        on_rpc_error: Callable[[BaseException], None] | None = None,
        reorg_check_s: float = 2.0,
        ws_url: str | None = None,
        push_poll_interval_s: float = 15.0,
    ) -> None:
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.decode = decode
        self.cursor = cursor
        self.topics = list(topics) if topics is not None else None
        self.start_block = start_block
        self.confirmations = confirmations
        self.range_blocks = range_blocks
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self.on_rpc_error = on_rpc_error
        self.reorg_check_s = reorg_check_s
        self._last_reorg_check = 0.0
        self.stats = FollowerStats()
        self._wake = asyncio.Event()
        self._stopped = False
        self._pending_save: tuple[int, dict[int, str]] = (-1, {})
        self.push_poll_interval_s = push_poll_interval_s
        self._pushed_head = -1
        self.head_listeners: list[Callable[[int], None]] = []
        """Also told of every pushed head (e.g. `TxSender.on_head`: a receipt may be in it)."""
        self.heads: HeadSubscription | None = None
        if ws_url:
            self.heads = HeadSubscription(ws_url, on_head=self._on_head, on_change=lambda _up: self.wake())

    def wake(self) -> None:
        """Look for new blocks now (e.g. an MQTT result says a transaction is about to be mined)."""
        self._wake.set()

    def _on_head(self, number: int) -> None:
        self._pushed_head = max(self._pushed_head, number)
        self._wake.set()
        for listener in self.head_listeners:
            listener(number)

    def _idle_interval(self) -> float:
        """How long to wait when there is nothing to read: long only while pushed heads are trusted."""
        heads = self.heads
        if heads is None or not heads.stats.connected or self.stats.head < self._pushed_head:
            return self.poll_interval_s
        return max(self.poll_interval_s, self.push_poll_interval_s)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _block_link(self, number: int) -> tuple[str, str] | None:
        """Block `number`'s hash and its parent's, or None when the node has no such block."""
        try:
            block = await rpc(self.w3, "eth_getBlockByNumber", [hex(number), False])
        except Exception as exc:
            if "not found" in str(exc).lower():
                return None
            raise
        return None if block is None else (_hex(block["hash"]), _hex(block["parentHash"]))

    async def _block_hash(self, number: int) -> str | None:
        link = await self._block_link(number)
        return None if link is None else link[0]

    async def _check_reorg(self, head: int) -> Reorg | None:
        """Compare remembered hashes with the chain, newest first; rewind to the last match."""
        known = self.cursor.recent_hashes()
        if not known:
            return None
        numbers = sorted(known, reverse=True)
        newest = numbers[0]
        chain_hash = await self._block_hash(newest) if newest <= head else None
        if chain_hash == known[newest]:
            return None
        fork = min(numbers)
        for n in numbers[1:]:
            if n <= head and await self._block_hash(n) == known[n]:
                fork = n + 1
                break
        else:
            log.error("reorg_deeper_than_memory", oldest_known=fork, hint="re-scanning from it")
        current = self.cursor.load_cursor()
        back_to = fork - 1
        self.cursor.rewind(back_to)
        depth = (current if current is not None else newest) - back_to
        self.stats.reorgs += 1
        self.stats.cursor = back_to
        log.warning("reorg", fork_block=fork, depth=depth, newest_known=newest)
        return Reorg(fork_block=fork, depth=depth)

    async def _timestamps(self, logs: list[Any]) -> dict[int, int]:
        out: dict[int, int] = {}
        for entry in logs:
            n = quantity(entry["blockNumber"])
            if n in out:
                continue
            ts = entry.get("blockTimestamp")
            if ts is None:
                block = await rpc(self.w3, "eth_getBlockByNumber", [hex(n), False])
                if block is None:
                    raise RuntimeError(f"block {n} of a log is gone (reorg); re-reading")
                ts = block["timestamp"]
            out[n] = quantity(ts)
        return out

    async def _step(self) -> LogBatch[T] | Reorg | None:
        head = quantity(await rpc(self.w3, "eth_blockNumber", []))
        stored = self.cursor.load_cursor()
        loop = asyncio.get_running_loop()
        idle = head == self.stats.head and stored is not None and stored >= head - self.confirmations
        if idle and loop.time() - self._last_reorg_check < self.reorg_check_s:
            return None  # nothing new: one cheap RPC per poll; same-height reorgs are checked every few s
        self.stats.head = head
        self._last_reorg_check = loop.time()
        cursor = stored if stored is not None else self.start_block - 1
        safe = head - self.confirmations
        if cursor >= safe:
            reorg = await self._check_reorg(head)
            if reorg is None:
                self.stats.cursor = cursor
            return reorg
        frm = cursor + 1
        to = min(safe, frm + self.range_blocks - 1)
        link = await self._block_link(to)
        known = self.cursor.recent_hashes()
        newest = max(known, default=None)
        # One block on from the newest we know (the usual step on a live chain): its parent hash is
        # the reorg check, so no second read. Otherwise compare the remembered hashes themselves.
        if link is None or newest != to - 1 or link[1] != known[newest]:
            reorg = await self._check_reorg(head)
            if reorg is not None:
                return reorg
        self.stats.cursor = cursor
        if link is None:
            return None  # `to` is gone already; the next step sees the reorg
        to_hash = link[0]
        params: dict[str, Any] = {"address": self.address, "fromBlock": hex(frm), "toBlock": hex(to)}
        if self.topics is not None:
            params["topics"] = hex_param(self.topics)
        logs = list(await rpc(self.w3, "eth_getLogs", [params]) or [])
        # A reorg between the hash read and the logs shows as a log whose block hash differs from
        # the one read (retry now) or, for a block without logs, at the next step's reorg check of
        # `to` (rewind and re-read: consumers are idempotent). No second read of `to` is needed.
        hashes: dict[int, str] = {to: to_hash}
        for entry in logs:
            n, h = quantity(entry["blockNumber"]), _hex(entry["blockHash"])
            if hashes.setdefault(n, h) != h:
                return None  # logs from two forks in one answer, or a log not on `to`'s fork: retry
        timestamps = await self._timestamps(logs)
        events = [ev for ev in map(self._decode, logs) if ev is not None]
        self._pending_save = (to, hashes)
        return LogBatch(from_block=frm, to_block=to, head=head, events=events, timestamps=timestamps)

    def _decode(self, entry: Any) -> T | None:
        try:
            return self.decode(entry)
        except Exception as exc:
            self.stats.decode_errors += 1
            log.warning(
                "log_undecodable", block=entry.get("blockNumber"), tx_hash=_hex(entry.get("transactionHash")),
                error=f"{type(exc).__name__}: {exc}"[:300], note="skipped",
            )  # fmt: skip
            return None

    async def follow(self) -> AsyncIterator[LogBatch[T] | Reorg]:
        """The event stream; the cursor advances when the consumer asks for the next item."""
        pusher = asyncio.create_task(self.heads.run(), name="ws-heads") if self.heads is not None else None
        delay = 0.1
        try:
            while not self._stopped:
                try:
                    item = await self._step()
                    delay = 0.1
                except Exception as exc:
                    self.stats.rpc_errors += 1
                    if self.on_rpc_error is not None:
                        self.on_rpc_error(exc)
                    log.warning("rpc_error", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
                    await self._sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
                    continue
                if item is None:
                    await self._sleep(self._idle_interval())
                    continue
                yield item
                if isinstance(item, LogBatch):
                    to, hashes = self._pending_save
                    self.cursor.save_cursor(to, hashes)
                    self.stats.cursor = to
                    self.stats.batches += 1
                    if item.to_block < item.head - self.confirmations:
                        continue  # catching up: no pause between ranges
        finally:
            if pusher is not None:
                pusher.cancel()
                with contextlib.suppress(BaseException):
                    await pusher
        log.info("follower_stopped", cursor=self.stats.cursor)


__all__ = ["CursorStore", "FollowerStats", "LogBatch", "LogFollower", "MemoryCursor", "Reorg"]
