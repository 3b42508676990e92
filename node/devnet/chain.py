"""Put a dev chain in the state a devnet needs: a hub, the model registered, miners staked.

Idempotent, so a devnet restarted on its saved anvil state (or compose's bootstrap container run
on every `up`) only does what is missing. Uses `node.chain.hub.HubClient` for every hub call.

Protocol v2: the model is registered with the engine class its miners run (the caller computes it
from the miners' engine settings, `node.engine.engine_class`; the fake engine has a fixed one) and
with prices that make cheating lose money at the devnet's stake: for r = 1 the hub requires
`auditBps * minStake >= 2 * (10000 - auditBps) * (baseFee + perTokenFee * 65536)`, and the defaults
(1 ETH stake, 0.001 ETH base fee, 100 gwei per token, 5% audits) meet it about 3.5 times over.
Miners register with the same class; a saved chain whose model has another class is refused with
the way out (`--fresh`), since an engine upgrade is a new model entry on chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from eth_account import Account
from web3 import AsyncWeb3

from node.chain.hub import HubClient, model_id
from node.gateway.work import audit_inequality_holds
from node.log import get_logger

log = get_logger("inferd.devnet.chain")

ETH = 10**18
# Devnet economics: small, round numbers that make slashing and fees visible in `miner status`.
DEFAULT_MIN_STAKE = 1 * ETH
DEFAULT_BASE_FEE = 10**15  # 0.001 ETH
DEFAULT_PER_TOKEN_FEE = 10**11  # 100 gwei: 65536 tokens = 0.0066 ETH
DEFAULT_AUDIT_BPS = 500  # 5% of r = 1 results re-executed by an auditor
DEFAULT_MIN_FEE = DEFAULT_BASE_FEE  # v1 name, kept for callers
DEFAULT_TIMEOUT_BLOCKS = 200  # the hub allows at most 200
GAS_RESERVE = ETH // 10  # what a miner keeps beyond its stake for submit transactions


class BootstrapError(RuntimeError):
    """The chain is in a state the devnet cannot use as is (e.g. the model's redundancy)."""


@dataclass(frozen=True)
class ChainPlan:
    """What the chain must hold once `bootstrap` returns."""

    rpc_url: str
    model: str
    owner_key: str
    miner_keys: list[str]
    engine_class: bytes
    """The bytes32 class of the miners' engine (`EngineClass.id`, or the fake engine's)."""
    redundancy: int = 1
    stake: int = DEFAULT_MIN_STAKE
    min_stake: int = DEFAULT_MIN_STAKE
    base_fee: int = DEFAULT_BASE_FEE
    per_token_fee: int = DEFAULT_PER_TOKEN_FEE
    audit_bps: int = DEFAULT_AUDIT_BPS
    timeout_blocks: int = DEFAULT_TIMEOUT_BLOCKS
    hub_address: str | None = None  # reuse this hub when it has code; deploy otherwise
    fund_keys: list[str] = field(default_factory=list)  # other accounts to top up (the gateway's)
    check_redundancy: bool = True  # refuse a model whose redundancy exceeds len(miner_keys)

    def __post_init__(self) -> None:
        if self.redundancy == 1 and not audit_inequality_holds(
            self.min_stake, self.base_fee, self.per_token_fee, self.audit_bps
        ):
            raise BootstrapError(
                "the devnet's prices fail the hub's audit rule for r = 1 (auditBps x minStake >= "
                "2 x (10000 - auditBps) x max price): raise the stake or the audit rate"
            )


@dataclass(frozen=True)
class ChainState:
    """The hub a bootstrap left behind."""

    hub: str
    chain_id: int
    model: str
    model_id: str
    redundancy: int
    min_fee: int
    """The model's base fee (what the cheapest request costs)."""
    miners: list[str]
    deployed: bool
    per_token_fee: int = 0
    engine_class: str = ""
    audit_bps: int = 0


async def _balance(w3: AsyncWeb3[Any], address: str) -> int:
    return int(await w3.eth.get_balance(cast(Any, address)))


async def fund(w3: AsyncWeb3[Any], from_key: str, to: str, amount: int) -> None:
    """Send `amount` wei from `from_key` to `to` and wait for the receipt."""
    sender = Account.from_key(from_key)
    nonce = await w3.eth.get_transaction_count(sender.address, "pending")
    block = await w3.eth.get_block("latest")
    base = int(block.get("baseFeePerGas", 0) or 0)
    tip = 10**9
    tx = {
        "to": to,
        "value": amount,
        "gas": 21_000,
        "nonce": nonce,
        "maxFeePerGas": 2 * base + tip,
        "maxPriorityFeePerGas": tip,
        "chainId": await w3.eth.chain_id,
        "type": 2,
    }
    raw = sender.sign_transaction(tx).raw_transaction
    receipt = await w3.eth.wait_for_transaction_receipt(await w3.eth.send_raw_transaction(raw), timeout=60)
    if receipt["status"] != 1:
        raise BootstrapError(f"funding {to} failed")


async def _ensure_funds(w3: AsyncWeb3[Any], owner_key: str, address: str, needed: int) -> None:
    have = await _balance(w3, address)
    if have < needed:
        await fund(w3, owner_key, address, needed - have + GAS_RESERVE)


async def bootstrap(plan: ChainPlan) -> ChainState:
    """Deploy (or reuse) the hub, register the model, fund and stake every miner key."""
    w3 = HubClient.web3(plan.rpc_url)
    chain_id = int(await w3.eth.chain_id)
    deployed = False
    hub: HubClient
    if plan.hub_address and len(await w3.eth.get_code(cast(Any, plan.hub_address))) > 0:
        hub = HubClient(w3, plan.hub_address, plan.owner_key)
        log.info("devnet_hub_reused", hub=hub.address)
    else:
        hub = await HubClient.deploy(w3, plan.owner_key)
        deployed = True
        log.info("devnet_hub_deployed", hub=hub.address)

    mid = model_id(plan.model)
    if mid not in await hub.model_ids():
        await hub.register_model(
            plan.model, plan.engine_class, plan.min_stake, plan.base_fee, plan.per_token_fee,
            plan.timeout_blocks, plan.redundancy, plan.audit_bps,
        )  # fmt: skip
        log.info(
            "devnet_model_registered", model=plan.model, redundancy=plan.redundancy,
            engine_class="0x" + plan.engine_class.hex(), audit_bps=plan.audit_bps,
        )  # fmt: skip
    info = await hub.get_model(mid)
    if info.engine_class != plan.engine_class:
        raise BootstrapError(
            f"model {plan.model} is registered on this chain for engine class 0x{info.engine_class.hex()}, "
            f"but the devnet's miners run 0x{plan.engine_class.hex()} (another engine build, device, "
            "model files or --fake-engine): start over with --fresh"
        )
    if plan.check_redundancy and info.redundancy > len(plan.miner_keys):
        raise BootstrapError(
            f"model {plan.model} was registered with redundancy {info.redundancy} but the devnet "
            f"runs {len(plan.miner_keys)} miner(s): start over with --fresh, or run more --miners"
        )

    miners: list[str] = []
    for key in plan.miner_keys:
        address = Account.from_key(key).address
        miners.append(address)
        client = HubClient(w3, hub.address, key)
        current = await client.get_miner(address)
        if current.model_id is None:
            stake = max(plan.stake, info.min_stake)
            await _ensure_funds(w3, plan.owner_key, address, stake + GAS_RESERVE)
            await client.register_miner(mid, plan.engine_class, stake)
            log.info("devnet_miner_registered", miner=address, stake=stake)
        elif current.model_id != mid:
            raise BootstrapError(f"{address} is registered for another model; start over with --fresh")
        elif not current.active:
            log.warning("devnet_miner_inactive", miner=address, hint="stake below minimum or exit requested")
    for key in plan.fund_keys:
        await _ensure_funds(w3, plan.owner_key, Account.from_key(key).address, ETH)
    return ChainState(
        hub=hub.address,
        chain_id=chain_id,
        model=plan.model,
        model_id="0x" + mid.hex(),
        redundancy=info.redundancy,
        min_fee=info.base_fee,
        miners=miners,
        deployed=deployed,
        per_token_fee=info.per_token_fee,
        engine_class="0x" + info.engine_class.hex(),
        audit_bps=info.audit_bps,
    )


async def chain_health(rpc_url: str, hub: str, model: str) -> dict[str, Any]:
    """Block number, whether the hub has code, and the model's active miners (for `status`)."""
    w3 = HubClient.web3(rpc_url, timeout=3.0)
    block = int(await w3.eth.block_number)
    has_code = len(await w3.eth.get_code(cast(Any, hub))) > 0
    active: list[str] = []
    if has_code:
        active = await HubClient(w3, hub).active_miners(model_id(model))
    return {"block": block, "hub_code": has_code, "active_miners": active}
