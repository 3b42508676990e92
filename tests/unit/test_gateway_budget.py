"""What a key may cost the gateway: in-flight limit, daily spend budgets (fees + gas, per key and for
the wallet), gas price caps, owner-only request records, and a `/healthz` that names nothing.

The HTTP-layer tests use the fake chain of `node.gateway.testing` (real pending registry, real
signature checks); the spend tests run the real `ChainBackend` against anvil, and compare the ledger
with the receipts on chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from node.chain.hub import HubClient
from node.chain.sender import TxFeeCapExceeded, TxSender
from node.config import load_settings
from node.devnet.processes import Anvil
from node.gateway.app import create_app
from node.gateway.auth import KeyStore
from node.gateway.budget import TOTAL, Budget, SpendLedger
from node.gateway.errors import GatewayBudgetExhausted, InsufficientQuota
from node.gateway.ratelimit import ConcurrencyLimiter
from node.gateway.server import GatewayServer
from node.gateway.state import GatewayState
from node.log import configure_logging
from node.miner.testing import deploy_dev_hub
from tests.gateway_on_anvil import hold_assign
from tests.unit.test_gateway_http import CHAT, MODEL, Gateway, assert_envelope
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)

FEE = 10**12  # the fake backend's model min fee; the chain model's base fee
PER_TOKEN = 10**6
PRICE = FEE + 8 * PER_TOKEN  # CHAT declares max_tokens 8


@pytest.fixture(autouse=True)
def _log_to_real_stderr() -> None:
    """Log where no earlier test's captured (and since closed) stream can be."""
    configure_logging("info", "json", stream=sys.__stderr__)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def state(app: Any) -> GatewayState:
    st: GatewayState = app.state.gateway
    return st


@pytest.fixture()
async def make_gw(tmp_path: Path) -> AsyncIterator[Any]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**settings: Any) -> Gateway:
            g = Gateway(tmp_path, **settings)
            await stack.enter_async_context(g.app.router.lifespan_context(g.app))
            stack.push_async_callback(g.http.aclose)
            return g

        yield make


# ------------------------------------------------------------------ the ledger on its own


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_ledger_reserves_settles_persists_and_resets_at_utc_midnight(tmp_path: Path) -> None:
    clock = Clock(1_767_225_000.0)  # 2025-12-31 23:50:00 UTC
    path = tmp_path / "ledger.sqlite"
    ledger = SpendLedger(path, clock)
    budget = Budget(key_wei=100, total_wei=150)
    first = ledger.reserve("a", 60, budget)
    with pytest.raises(InsufficientQuota) as info:
        ledger.reserve("a", 41, budget)  # 60 reserved + 41 > 100
    assert info.value.status == 429 and info.value.code == "insufficient_quota"
    assert info.value.headers["Retry-After"] == "600"  # until 00:00 UTC
    ledger.settle(first, 55)  # the receipt said less
    ledger.settle(first, 99)  # settling twice changes nothing
    assert ledger.spent("a") == 55 and ledger.spent(TOTAL) == 55
    ledger.settle(ledger.reserve("a", 45, budget), None)  # unknown outcome: the reservation stands
    assert ledger.spent("a") == 100
    with pytest.raises(GatewayBudgetExhausted):
        ledger.reserve("b", 51, budget)  # the wallet's cap, whoever asks
    ledger.settle(ledger.reserve("b", 50, budget), 0)  # refused by the node: nothing paid
    assert ledger.spent("b") == 0
    ledger.record_owner(31337, 2**255, "a")
    ledger.close()

    again = SpendLedger(path, clock)  # a restart keeps the day's spend and the owners
    assert again.spent("a") == 100 and again.owner(31337, 2**255) == "a" and again.owner(1, 1) is None
    with pytest.raises(InsufficientQuota):
        again.reserve("a", 1, budget)
    clock.now += 601  # 00:00:01 UTC: a new day
    assert again.spent("a") == 0
    again.reserve("a", 100, budget)
    again.close()


# ------------------------------------------------------------------ HTTP: concurrency


async def _until(predicate: Any, tries: int = 500) -> None:
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_in_flight_limit_is_429_envelope_then_frees(make_gw: Any) -> None:
    gw: Gateway = await make_gw(request_timeout_s=1.0)
    key, record = gw.keys.add("one-at-a-time", max_concurrent=1)
    limiter = state(gw.app).concurrency
    assert isinstance(limiter, ConcurrencyLimiter)  # in memory: one gateway, no redis_url
    gw.backend.mode = "silent"
    first = asyncio.create_task(gw.http.post("/v1/chat/completions", json=CHAT, headers=auth(key)))
    await _until(lambda: limiter.in_flight(record.id) == 1)
    reply = await gw.http.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    err = assert_envelope(reply, 429, code="concurrency_limit_exceeded")
    assert err["type"] == "rate_limit_error" and reply.headers["Retry-After"] == "1"
    other = await gw.http.get("/v1/models", headers=auth(key))  # only inference calls count
    assert other.status_code == 200
    assert_envelope(await first, 504, code="timeout")
    assert limiter.in_flight(record.id) == 0
    gw.backend.mode = "ok"
    stream = await gw.http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth(key))
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
    assert limiter.in_flight(record.id) == 0  # a finished stream gives its slot back
    bad = await gw.http.post("/v1/chat/completions", content=b"{", headers=auth(key))
    assert_envelope(bad, 400, code="invalid_json")
    assert limiter.in_flight(record.id) == 0  # so does a refused body
    assert (await gw.http.post("/v1/chat/completions", json=CHAT, headers=auth(key))).status_code == 200


async def test_default_in_flight_limit_comes_from_settings(make_gw: Any) -> None:
    gw: Gateway = await make_gw(request_timeout_s=1.0, max_concurrent_per_key=2)
    gw.backend.mode = "silent"
    calls = [asyncio.create_task(gw.http.post("/v1/completions", json={"model": MODEL, "prompt": "x"}))]
    calls.append(asyncio.create_task(gw.http.post("/v1/completions", json={"model": MODEL, "prompt": "y"})))
    limiter = state(gw.app).concurrency
    assert isinstance(limiter, ConcurrencyLimiter)
    await _until(lambda: limiter.in_flight(gw.record.id) == 2)
    reply = await gw.http.post("/v1/completions", json={"model": MODEL, "prompt": "z"})
    assert_envelope(reply, 429, code="concurrency_limit_exceeded")
    for call in calls:
        assert (await call).status_code == 504


# ------------------------------------------------------------------ HTTP: budgets


async def test_key_budget_is_429_insufficient_quota_and_wallet_cap_503(make_gw: Any) -> None:
    gw: Gateway = await make_gw(daily_budget_wei_total=3 * FEE)
    small, small_rec = gw.keys.add("small", daily_budget_wei=2 * FEE)
    for _ in range(2):
        assert (await gw.http.post("/v1/chat/completions", json=CHAT, headers=auth(small))).status_code == 200
    reply = await gw.http.post("/v1/chat/completions", json=CHAT, headers=auth(small))
    err = assert_envelope(reply, 429, code="insufficient_quota")
    assert err["type"] == "insufficient_quota" and int(reply.headers["Retry-After"]) >= 1
    assert str(2 * FEE) in err["message"]
    assert len(gw.backend.submitted) == 2  # refused before anything went on chain
    assert await state(gw.app).ledger.aspent(small_rec.id) == 2 * FEE

    assert (await gw.http.post("/v1/chat/completions", json=CHAT)).status_code == 200  # another key
    reply = await gw.http.post("/v1/chat/completions", json=CHAT)  # the wallet's 3 fees are spent
    assert_envelope(reply, 503, code="gateway_budget_exhausted")
    assert len(gw.backend.submitted) == 3
    metrics = (await gw.http.get("/metrics")).text
    assert 'inferd_gateway_limited_total{reason="insufficient_quota"} 1.0' in metrics
    assert 'inferd_gateway_limited_total{reason="gateway_budget_exhausted"} 1.0' in metrics


async def test_key_record_overrides_default_budget(make_gw: Any) -> None:
    gw: Gateway = await make_gw(daily_budget_wei_per_key=FEE - 1)
    assert_envelope(await gw.http.post("/v1/chat/completions", json=CHAT), 429, code="insufficient_quota")
    rich, _ = gw.keys.add("rich", daily_budget_wei=10 * FEE)
    assert (await gw.http.post("/v1/chat/completions", json=CHAT, headers=auth(rich))).status_code == 200


# ------------------------------------------------------------------ HTTP: owners, health


async def test_inference_record_answers_its_owner_or_an_admin_only(make_gw: Any) -> None:
    gw: Gateway = await make_gw()
    body = (await gw.http.post("/v1/chat/completions", json=CHAT)).json()
    rid = body["onchain_data"]["request_id"]
    assert (await gw.http.get(f"/v1/inferences/{rid}")).json()["status"] == "finalized"
    stranger, _ = gw.keys.add("stranger")
    theirs = await gw.http.get(f"/v1/inferences/{rid}", headers=auth(stranger))
    missing = await gw.http.get("/v1/inferences/999", headers=auth(stranger))
    err = assert_envelope(theirs, 404, param="request_id", code="not_found")
    assert err == {**assert_envelope(missing, 404), "message": err["message"]}
    assert err["message"] == missing.json()["error"]["message"].replace("999", str(rid))
    admin, _ = gw.keys.add("ops", admin=True)
    assert (await gw.http.get(f"/v1/inferences/{rid}", headers=auth(admin))).status_code == 200
    huge = await gw.http.get(f"/v1/inferences/{2**256}", headers=auth(admin))
    assert_envelope(huge, 400, param="request_id")


async def test_healthz_is_states_only(make_gw: Any) -> None:
    gw: Gateway = await make_gw()
    reply = await gw.http.get("/healthz", headers={"Authorization": ""})
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok", "chains": [{"chain_id": 31337, "ok": True}], "mqtt": None}


# ------------------------------------------------------------------ the real chain backend


async def _chain_gateway(anvil: Anvil, anvil_keys: list[str], data_dir: Path, **gateway: Any) -> Any:
    hub = await deploy_dev_hub(
        anvil.rpc_url, anvil_keys[0], [anvil_keys[5]], model_name=MODEL, timeout_blocks=200, base_fee=FEE,
        per_token_fee=PER_TOKEN,
    )  # fmt: skip
    settings = load_settings(
        data_dir=data_dir,
        chain={"rpc_url": anvil.rpc_url, "hub_address": hub.owner.address, "private_key": anvil_keys[9],
               "poll_interval_s": 0.1},
        stream={"enabled": False},
        gateway={"request_timeout_s": 0.3, **gateway},
    )  # fmt: skip
    keys = KeyStore(data_dir / "gateway" / "api_keys.json")
    server = GatewayServer(create_app(settings))
    await server.start()
    return server, keys, hub


async def _gas_since(w3: Any, block: int, wallet: str) -> tuple[int, int, int]:
    """(head, transactions, wei paid in gas) of `wallet`'s transactions in blocks after `block`."""
    head, count, wei = int(await w3.eth.block_number), 0, 0
    for number in range(block + 1, head + 1):
        for tx in (await w3.eth.get_block(number, full_transactions=True))["transactions"]:
            if tx["from"] == wallet:
                receipt = await w3.eth.get_transaction_receipt(tx["hash"])
                count, wei = count + 1, wei + int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
    return head, count, wei


async def _settled(st: GatewayState) -> None:
    """Until every call's spend settled (one whose drawn seat may answer settles once its background
    `assign` is mined: `GatewayState.settling`)."""
    async with asyncio.timeout(60):
        while st.settling:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_chain_spend_counts_fee_plus_gas_paid(
    anvil: Anvil, anvil_keys: list[str], tmp_path: Path
) -> None:
    server, keys, hub = await _chain_gateway(anvil, anvil_keys, tmp_path)
    owner = hub.owner
    st = state(server.app)
    w3 = owner.w3
    wallet = Account.from_key(anvil_keys[9]).address
    try:
        key, record = keys.add("payer")
        async with httpx.AsyncClient(base_url=server.url, headers=auth(key), timeout=30) as http:
            start = int(await w3.eth.block_number)
            reply = await http.post("/v1/chat/completions", json=CHAT)
            assert_envelope(reply, 504, code="timeout")  # no miner runs: the request stays open
            await _settled(st)
            block, sent, gas = await _gas_since(w3, start, wallet)
            assert sent == 2 and gas > 0  # requestInference, then assign in the next block
            assert await st.ledger.aspent(record.id) == PRICE + gas == await st.ledger.aspent(TOTAL)
            rid = reply.headers["X-Inferd-Request-Id"]
            inference = (await http.get(f"/v1/inferences/{rid}")).json()
            assert inference["fee_wei"] == str(PRICE)  # baseFee + perTokenFee x max_tokens 8
            assert inference["verification"] == "assigned" and inference["phase"] == "assigned"
            assert inference["assignment_addresses"] == hub.miners  # the gateway's assign drew them
            stranger, _ = keys.add("stranger")
            theirs = await http.get(f"/v1/inferences/{rid}", headers=auth(stranger))
            assert_envelope(theirs, 404, code="not_found")

            tight, _ = keys.add("tight", daily_budget_wei=PRICE + gas + PRICE)  # one more price, not its gas
            assert_envelope(await http.post("/v1/chat/completions", json=CHAT, headers=auth(tight)), 504)
            await _settled(st)
            block = int(await w3.eth.block_number)
            reply = await http.post("/v1/chat/completions", json=CHAT, headers=auth(tight))
            assert_envelope(reply, 429, code="insufficient_quota")
            assert int(await w3.eth.block_number) == block  # the refused call sent nothing

            health = (await http.get("/healthz")).json()
            text = str(health).lower()
            assert health["status"] == "ok" and health["chains"] == [{"chain_id": 31337, "ok": True}]
            for leak in ("http", "127.0.0.1", str(anvil.port), owner.address.lower(), "0x"):
                assert leak not in text, (leak, health)
    finally:
        await server.stop()
        await owner.w3.provider.disconnect()


async def test_gas_of_the_assign_after_a_drawn_seat_is_charged(
    anvil: Anvil, anvil_keys: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway draws a request's seat itself and returns at once; its `assign` is mined in the
    background, after the call's fee and request gas are known. That gas is the call's spend too:
    it is charged to the key when the `assign` ends. The test holds the `assign` back until the
    call has answered, so its order of events is fixed (no timing)."""
    release = hold_assign(monkeypatch)
    server, keys, hub = await _chain_gateway(anvil, anvil_keys, tmp_path)
    st = state(server.app)
    w3 = hub.owner.w3
    wallet = Account.from_key(anvil_keys[9]).address
    try:
        key, record = keys.add("payer")
        async with httpx.AsyncClient(base_url=server.url, headers=auth(key), timeout=30) as http:
            start = int(await w3.eth.block_number)
            reply = await http.post("/v1/chat/completions", json=CHAT)
            assert_envelope(reply, 504, code="timeout")  # answered (no miner) with the assign held
            _, sent, request_gas = await _gas_since(w3, start, wallet)
            assert sent == 1, "only requestInference is out"
            assert await st.ledger.aspent(record.id) == 0, "the reservation holds the call until its assign"
            release.set()
            await _settled(st)
            _, sent, gas = await _gas_since(w3, start, wallet)
            assert sent == 2 and gas > request_gas  # requestInference, then the held assign
            assert await st.ledger.aspent(record.id) == PRICE + gas == await st.ledger.aspent(TOTAL)
            rid = int(reply.headers["X-Inferd-Request-Id"])
            assert list((await hub.owner.get_request(rid)).assignees) == hub.miners
    finally:
        release.set()
        await server.stop()
        await hub.owner.w3.provider.disconnect()


async def test_gas_price_cap_refuses_before_signing(
    anvil: Anvil, anvil_keys: list[str], tmp_path: Path
) -> None:
    server, keys, hub = await _chain_gateway(anvil, anvil_keys, tmp_path)
    owner = hub.owner
    st = state(server.app)
    try:
        key, record = keys.add("payer")
        sender: TxSender = next(iter(server.app.state.gateway.backend.links.values())).sender
        assert sender.max_fee_per_gas == 500 * 10**9 and sender.max_replacements == 3  # the defaults
        base = int((await owner.w3.eth.get_block("latest"))["baseFeePerGas"])
        sender.max_fee_per_gas = max(1, base)  # gas is now "too dear" for this gateway
        before = int(await owner.w3.eth.block_number)
        async with httpx.AsyncClient(base_url=server.url, headers=auth(key), timeout=30) as http:
            reply = await http.post("/v1/chat/completions", json=CHAT)
        assert_envelope(reply, 503, code="gas_price_too_high")
        assert int(await owner.w3.eth.block_number) == before
        assert await st.ledger.aspent(record.id) == 0 and await st.ledger.aspent(TOTAL) == 0
    finally:
        await server.stop()
        await owner.w3.provider.disconnect()


async def test_sender_fee_cap_clamps_and_refuses(anvil: Anvil, anvil_keys: list[str]) -> None:
    w3 = HubClient.web3(anvil.rpc_url, 10)
    from eth_account import Account

    account = Account.from_key(anvil_keys[9])
    base = int((await w3.eth.get_block("latest"))["baseFeePerGas"])
    plain = TxSender(w3, account, chain_id=31337)
    max_fee, tip = await plain.fees()
    assert max_fee == 2 * base + tip  # no cap: unchanged behaviour
    capped = TxSender(w3, account, chain_id=31337, max_fee_per_gas=base + 1)
    max_fee, tip = await capped.fees()
    assert max_fee == base + 1 and 0 < tip <= 1
    with pytest.raises(TxFeeCapExceeded):
        await TxSender(w3, account, chain_id=31337, max_fee_per_gas=max(1, base)).fees()
    await w3.provider.disconnect()


async def test_sender_fee_bumps_are_capped(process_logs: Path, anvil_keys: list[str]) -> None:
    """On a chain that mines nothing, a stuck transaction is re-sent with bumped fees at most
    `max_replacements` times, and never above `max_fee_per_gas`; it is still found once mined."""
    from eth_account import Account

    from node.devnet.processes import anvil_process

    node = anvil_process(process_logs)
    node.start()
    try:
        w3 = HubClient.web3(node.rpc_url, 10)
        await w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        account = Account.from_key(anvil_keys[3])
        bumps = TxSender(w3, account, chain_id=31337, stuck_after_s=0.1, poll_s=0.02, max_replacements=2)
        task = asyncio.create_task(bumps.send(account.address, b"", value=1, gas=21_000))
        await until(lambda: bumps.stats.replaced >= 2, "two fee bumps")
        await asyncio.sleep(0.5)  # five more stuck periods: no third bump
        assert bumps.stats.replaced == 2 and not task.done()
        await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        receipt = await asyncio.wait_for(task, 10)
        assert int(receipt["status"]) == 1

        max_fee, _ = await bumps.fees()
        capped = TxSender(
            w3,
            account,
            chain_id=31337,
            stuck_after_s=0.1,
            poll_s=0.02,
            max_fee_per_gas=max_fee + max_fee // 20,
        )
        task = asyncio.create_task(capped.send(account.address, b"", value=1, gas=21_000))
        await asyncio.sleep(1.0)
        assert capped.stats.replaced == 0 and capped.stats.sent == 1  # a 12.5% bump would pass the cap
        await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        assert int((await asyncio.wait_for(task, 10))["status"]) == 1
        await w3.provider.disconnect()
    finally:
        node.stop()
