"""What the gateway's wallet may spend, per API key and in total, per UTC day; and who owns a request.

Every accepted call makes the gateway's own wallet pay: the request fee (`msg.value`) plus the gas
of its `requestInference` transaction. A rate limit alone bounds calls, not money (one key can ask
for the most expensive model, or send while gas is dear), so each key has a daily budget in wei and
the wallet a daily cap over all keys together, both counting fee + gas actually paid.

Money is reserved before a transaction is sent (the fee plus the gas the last transactions on that
chain cost) and settled with the receipt's real cost once it is mined, so concurrent requests
cannot overshoot a budget by more than the error of that estimate. Settled spend and the owner of
each on-chain request live in SQLite (WAL), so neither resets when the gateway restarts; the owner
table answers `GET /v1/inferences/{id}` for the key that made the request only.

This SQLite ledger serves one gateway process; several gateways share one in Redis instead
(`node.gateway.shared`). The `a*` methods are the async `stores.SpendLedgers` protocol both implement.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from node.gateway.errors import GatewayBudgetExhausted, InsufficientQuota

TOTAL = "*"
"""The ledger row of the wallet's spend over all keys."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (day TEXT NOT NULL, key_id TEXT NOT NULL, wei TEXT NOT NULL,
                                  PRIMARY KEY (day, key_id));
CREATE TABLE IF NOT EXISTS owners (chain_id INTEGER NOT NULL, request_id TEXT NOT NULL,
                                   key_id TEXT NOT NULL, created INTEGER NOT NULL,
                                   PRIMARY KEY (chain_id, request_id));
"""


@dataclass
class Reservation:
    """Money set aside for one request until its transaction's real cost is known."""

    key_id: str
    wei: int
    settled: bool = False


@dataclass(frozen=True)
class Budget:
    """The limits one call is held to (wei per UTC day); None means unlimited."""

    key_wei: int | None
    total_wei: int | None


def default_ledger_path(data_dir: Path) -> Path:
    return data_dir / "gateway" / "ledger.sqlite"


def seconds_to_utc_midnight(now: float) -> int:
    today = datetime.fromtimestamp(now, UTC).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)
    return max(1, int(midnight.timestamp() - now + 0.999))


class SpendLedger:
    """Daily spend per key and in total (reserved + settled), and request owners; one per gateway."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(path) if path is not None else ":memory:", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._clock = clock
        self._day = ""
        self._spent: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._gas_hint: dict[int, int] = {}

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ spend

    def _today(self) -> str:
        day = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%d")
        if day != self._day:  # a new UTC day: settled spend starts from what the file holds for it
            rows = self._db.execute("SELECT key_id, wei FROM spend WHERE day = ?", (day,)).fetchall()
            self._day, self._spent = day, {str(k): int(w) for k, w in rows}
        return day

    def spent(self, key_id: str) -> int:
        """Settled spend today (wei); `TOTAL` for the whole wallet."""
        self._today()
        return self._spent.get(key_id, 0)

    def _committed(self, key_id: str) -> int:
        return self._spent.get(key_id, 0) + self._reserved.get(key_id, 0)

    def reserve(self, key_id: str, wei: int, budget: Budget) -> Reservation:
        """Set `wei` aside for `key_id`, or raise InsufficientQuota (the key's budget) or
        GatewayBudgetExhausted (the wallet's) when it does not fit in what is left today."""
        self._today()
        retry = seconds_to_utc_midnight(self._clock())
        if budget.key_wei is not None and self._committed(key_id) + wei > budget.key_wei:
            raise InsufficientQuota(budget.key_wei, retry)
        if budget.total_wei is not None and self._committed(TOTAL) + wei > budget.total_wei:
            raise GatewayBudgetExhausted(retry)
        for k in (key_id, TOTAL):
            self._reserved[k] = self._reserved.get(k, 0) + wei
        return Reservation(key_id=key_id, wei=wei)

    def settle(self, reservation: Reservation, actual_wei: int | None) -> None:
        """Replace a reservation by what was really paid (None: unknown, the reservation stands)."""
        if reservation.settled:
            return
        reservation.settled = True
        for k in (reservation.key_id, TOTAL):
            left = self._reserved.get(k, 0) - reservation.wei
            if left > 0:
                self._reserved[k] = left
            else:
                self._reserved.pop(k, None)
        paid = reservation.wei if actual_wei is None else actual_wei
        if paid > 0:
            self._add(reservation.key_id, paid)

    def _add(self, key_id: str, wei: int) -> None:
        day = self._today()
        for k in (key_id, TOTAL):
            self._spent[k] = self._spent.get(k, 0) + wei
            self._db.execute(
                "INSERT INTO spend (day, key_id, wei) VALUES (?, ?, ?) "
                "ON CONFLICT (day, key_id) DO UPDATE SET wei = excluded.wei",
                (day, k, str(self._spent[k])),
            )

    def gas_hint(self, chain_id: int) -> int:
        """What a request transaction on this chain cost lately (wei of gas), for reservations."""
        return self._gas_hint.get(chain_id, 0)

    def observe_gas(self, chain_id: int, gas_wei: int) -> None:
        """Remember a mined request's gas cost; the hint follows prices up at once, down slowly."""
        old = self._gas_hint.get(chain_id, 0)
        self._gas_hint[chain_id] = gas_wei if gas_wei >= old else (3 * old + gas_wei) // 4

    # ------------------------------------------------------------------ stores.SpendLedgers

    async def areserve(self, key_id: str, wei: int, budget: Budget) -> Reservation:
        return self.reserve(key_id, wei, budget)

    async def asettle(self, reservation: Reservation, actual_wei: int | None) -> None:
        self.settle(reservation, actual_wei)

    async def aspent(self, key_id: str) -> int:
        return self.spent(key_id)

    async def arecord_owner(self, chain_id: int, request_id: int, key_id: str) -> None:
        self.record_owner(chain_id, request_id, key_id)

    async def aowner(self, chain_id: int, request_id: int) -> str | None:
        return self.owner(chain_id, request_id)

    async def aclose(self) -> None:
        self.close()

    # ------------------------------------------------------------------ owners

    def record_owner(self, chain_id: int, request_id: int, key_id: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO owners (chain_id, request_id, key_id, created) VALUES (?, ?, ?, ?)",
            (chain_id, str(request_id), key_id, int(self._clock())),
        )

    def owner(self, chain_id: int, request_id: int) -> str | None:
        row = self._db.execute(
            "SELECT key_id FROM owners WHERE chain_id = ? AND request_id = ?", (chain_id, str(request_id))
        ).fetchone()
        return None if row is None else str(row[0])


__all__ = [
    "TOTAL",
    "Budget",
    "Reservation",
    "SpendLedger",
    "default_ledger_path",
    "seconds_to_utc_midnight",
]
