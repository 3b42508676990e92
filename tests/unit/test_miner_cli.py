"""`inferd miner` lifecycle commands: exact ETH amounts, confirmation before funds move, status --json.

The hub is a recording stand-in (its ABI is being rewritten): these tests are about what the CLI
sends and refuses, not about the contract. The unreachable-chain test runs the real CLI process
against a closed loopback port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from node.chain.hub import model_id
from node.cli import common
from node.cli import miner as miner_cli
from node.cli.common import AmountError, format_eth, parse_eth
from node.devnet.processes import REPO_ROOT, free_port

KEY = "0x59c6995e998f97a0a0c4d6a7cc7f5e2d7b0b1ac6c9c7d4b9e7cbe8a5c3d0b0a1"
HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


# ------------------------------------------------------------------------------------------ amounts


@pytest.mark.parametrize(
    ("text", "wei"),
    [
        ("1", 10**18),
        ("1.5", 1_500_000_000_000_000_000),
        ("0.000000000000000001", 1),
        ("0.1", 10**17),  # 0.1 is not exact in binary floating point; exact here
        ("0", 0),
        (" 2.25 ", 2_250_000_000_000_000_000),
        ("79228162514.264337593543950335", 79_228_162_514_264_337_593_543_950_335),  # 2^96 - 1 wei
        (
            "123456789012345678901234567890.123456789012345678",
            123456789012345678901234567890 * 10**18 + 123456789012345678,
        ),
    ],
)
def test_parse_eth_is_exact(text: str, wei: int) -> None:
    assert parse_eth(text) == wei
    assert parse_eth(format_eth(wei)) == wei


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("-1", "negative"),
        ("-0.5", "negative"),
        ("+1", "not an amount"),
        ("NaN", "finite"),
        ("inf", "finite"),
        ("Infinity", "finite"),
        ("1e18", "exponent"),
        ("1.5E-3", "exponent"),
        ("0.0000000000000000001", "19 decimals"),
        ("1_000", "not an amount"),
        ("1,5", "not an amount"),
        (".5", "not an amount"),
        ("5.", "not an amount"),
        ("0x10", "not an amount"),
        ("١", "not an amount"),  # an Arabic-Indic digit: Decimal would take it
        ("", "required"),
    ],
)
def test_parse_eth_refuses_ambiguous_text(text: str, says: str) -> None:
    with pytest.raises(AmountError, match=says):
        parse_eth(text)


def test_format_eth() -> None:
    assert format_eth(1_500_000_000_000_000_000) == "1.5"
    assert format_eth(1) == "0.000000000000000001"
    assert format_eth(0) == "0"
    assert format_eth(10**18) == "1"


# ------------------------------------------------------------------------------------ a recording hub


@dataclass(frozen=True)
class Model:
    name: str
    min_stake: int


@dataclass(frozen=True)
class Miner:
    """The stable part of `getMiner` (the hub's own dataclass is being reshaped for protocol v2)."""

    model_id: bytes | None
    stake: int
    credits: int
    active: bool
    exit_unlock_block: int = 0


@dataclass(frozen=True)
class Tx:
    tx_hash: str


class FakeHub:
    """Records transactions; `get_miner` reflects them."""

    def __init__(self, *, registered: bool = True, stake: int = 10**18, credits: int = 5 * 10**16) -> None:
        self.sender = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        self.address = HUB
        self.mid = model_id("SmolLM2-135M-Instruct")
        self.registered = registered
        self.stake = stake
        self.credits = credits
        self.sent: list[tuple[str, Any]] = []
        self.w3 = self

    # w3.eth.* as far as status goes
    @property
    def eth(self) -> FakeHub:
        return self

    @property
    def chain_id(self) -> Any:
        return self._value(31337)

    async def get_balance(self, address: str) -> int:
        return 3 * 10**18 + 1

    async def block_number(self) -> int:
        return 42

    @staticmethod
    async def _value(v: int) -> int:
        return v

    async def get_model(self, mid: bytes) -> Model:
        return Model("SmolLM2-135M-Instruct", 10**18)

    async def get_miner(self, address: str) -> Miner:
        return Miner(self.mid if self.registered else None, self.stake, self.credits, self.registered)

    def _tx(self, name: str, value: Any) -> Tx:
        self.sent.append((name, value))
        return Tx("0x" + "ab" * 32)

    async def add_stake(self, amount: int) -> Tx:
        self.stake += amount
        return self._tx("addStake", amount)

    async def register_miner(self, mid: bytes, *rest: Any) -> Tx:  # (mid, stake) or v2 (mid, class, stake)
        stake = int(rest[-1])
        self.registered, self.stake = True, stake
        return self._tx("registerMiner", stake)

    async def withdraw(self) -> Tx:
        return self._tx("withdraw", self.credits)

    async def withdraw_stake(self) -> Tx:
        return self._tx("withdrawStake", self.stake)

    async def request_exit(self) -> Tx:
        return self._tx("requestExit", None)


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(miner_cli, "_hub", lambda settings: fake)
    monkeypatch.delenv("INFERD_CONFIG", raising=False)
    monkeypatch.setenv("INFERD_DATA_DIR", str(tmp_path))
    return fake


def _register_extra() -> list[str]:
    """Protocol v2's `register --engine-class`, given so that the class is not computed from the
    model's weights (tens of seconds) in a test about amounts and confirmation."""
    params = typer.main.get_command(miner_cli.app).commands["register"].params  # type: ignore[attr-defined]
    if any("--engine-class" in getattr(p, "opts", []) for p in params):
        return ["--engine-class", "0x" + "11" * 32]
    return []


def cli(*args: str, input: str | None = None) -> Any:
    argv = list(args)
    if argv and argv[0] == "register":
        argv += _register_extra()
    return CliRunner().invoke(miner_cli.app, argv, input=input)


# ------------------------------------------------------------------------------------ confirmation


@pytest.mark.parametrize(
    "args",
    [
        ["add-stake", "0.5"],
        ["register", "--stake", "1"],
        ["withdraw"],
        ["withdraw", "--stake"],
        ["exit"],
    ],
)
def test_funds_never_move_without_a_terminal_or_yes(hub: FakeHub, args: list[str]) -> None:
    if args[0] == "register":
        hub.registered = False
    result = cli(*args)  # CliRunner's stdin is not a terminal, as in a script or CI
    assert result.exit_code == 2, result.output
    assert "stdin is not a terminal" in result.stderr and "--yes" in result.stderr
    assert hub.sent == []


def test_add_stake_with_yes_sends_the_exact_wei(hub: FakeHub) -> None:
    result = cli("add-stake", "0.000000000000000001", "--yes")
    assert result.exit_code == 0, result.output
    assert hub.sent == [("addStake", 1)]
    assert "1.000000000000000001 ETH" in result.stdout


def test_interactive_no_aborts_and_yes_sends(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "stdin_interactive", lambda: True)
    no = cli("add-stake", "1.5", input="n\n")
    assert no.exit_code == 1 and hub.sent == []
    assert "Add 1.5 ETH to the stake of 1 ETH" in no.stderr and HUB in no.stderr
    yes = cli("add-stake", "1.5", input="y\n")
    assert yes.exit_code == 0, yes.output
    assert hub.sent == [("addStake", 1_500_000_000_000_000_000)]


def test_register_parses_the_stake_exactly_and_checks_the_minimum(hub: FakeHub) -> None:
    hub.registered = False
    low = cli("register", "--stake", "0.999999999999999999", "--yes")
    assert low.exit_code == 2 and "below" in low.stderr and hub.sent == []
    ok = cli("register", "--stake", "1.1", "--yes")
    assert ok.exit_code == 0, ok.output
    assert hub.sent == [("registerMiner", 1_100_000_000_000_000_000)]


@pytest.mark.parametrize("amount", ["1e18", "-1", "NaN", "0.0000000000000000001", "1,5"])
def test_bad_amounts_are_usage_errors(hub: FakeHub, amount: str) -> None:
    result = cli("add-stake", "--yes", "--", amount)
    assert result.exit_code == 2
    assert "Invalid value" in result.stderr
    assert hub.sent == []


def test_add_stake_refuses_zero_and_unregistered(hub: FakeHub) -> None:
    assert cli("add-stake", "0", "--yes").exit_code == 2
    hub.registered = False
    result = cli("add-stake", "1", "--yes")
    assert result.exit_code == 2 and "not registered" in result.stderr
    assert hub.sent == []


# ------------------------------------------------------------------------------------------ status


def test_status_json_is_the_whole_stdout(hub: FakeHub) -> None:
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    chain = doc["chain"]
    assert chain["stake"] == {"wei": str(10**18), "eth": "1"}
    assert chain["wallet"] == {"wei": str(3 * 10**18 + 1), "eth": "3.000000000000000001"}
    assert chain["credits"]["eth"] == "0.05"
    assert chain["registered"] and chain["active"] and chain["head"] == 42 and chain["chain_id"] == 31337
    assert doc["journal"] is None
    tool = subprocess.run(
        [sys.executable, "-m", "json.tool"], input=result.stdout, capture_output=True, text=True, check=False
    )
    assert tool.returncode == 0, tool.stderr


def test_status_json_exits_1_when_the_chain_is_unreachable(tmp_path: Path) -> None:
    """The real CLI process, pointed at a loopback port where nothing listens."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("INFERD_")
    } | {
        "INFERD_DATA_DIR": str(tmp_path),
        "INFERD_CHAIN__RPC_URL": f"http://127.0.0.1:{free_port()}/secret-api-key",
        "INFERD_CHAIN__HUB_ADDRESS": HUB,
        "INFERD_CHAIN__PRIVATE_KEY": KEY,
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli.main", "miner", "status", "--json"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "chain unreachable at http://127.0.0.1:" in proc.stderr
    assert "secret-api-key" not in proc.stderr and KEY[2:] not in proc.stderr
