"""An async client for the InferenceHub contract over web3.py's `AsyncWeb3`.

A thin layer: each hub function has a method that builds, signs (locally, eth-account), sends and
waits for one transaction, and returns a `TxResult` with the receipt's gas figures and the decoded
hub events. Reverts raise `HubError` with the custom error's name and an actionable message.

Lower-level pieces are public for callers with their own sending policy (the miner's `TxSender`):
`hub.contract.functions.submitResults(ids, digests)` gives the contract function,
`build_tx()` an unsigned EIP-1559 transaction, `sign()` raw bytes, `send_raw()` / `wait()` the rest.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from pydantic import SecretStr
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.contract.async_contract import AsyncContractFunction
from web3.exceptions import ContractLogicError
from web3.types import Nonce, TxParams, TxReceipt, Wei

from node.chain.artifacts import hub_artifact
from node.chain.errors import ChainError, TxFailed, decode_revert
from node.chain.events import HubEvent, InferenceRequested, decode_logs

Digest = bytes | str
"""A 32-byte digest as bytes or 0x-hex."""


class RequestStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    FINALIZED = 2
    REFUNDED = 3


@dataclass(frozen=True)
class ModelInfo:
    model_id: bytes
    name: str
    min_stake: int
    min_fee: int
    timeout_blocks: int
    redundancy: int
    active_miner_count: int

    @property
    def quorum(self) -> int:
        return self.redundancy // 2 + 1


@dataclass(frozen=True)
class MinerInfo:
    address: str
    model_id: bytes | None  # None: not registered
    stake: int
    credits: int
    active: bool
    exit_unlock_block: int  # 0: no exit requested


@dataclass(frozen=True)
class RequestInfo:
    id: int
    status: RequestStatus
    requester: str
    model_id: bytes
    input_digest: bytes
    output_digest: bytes | None  # None until finalized
    fee: int
    deadline: int
    redundancy: int
    reassigned: bool
    assignees: tuple[str, ...]
    submitted: tuple[bytes | None, ...]  # per assignee


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    block_number: int
    gas_used: int
    effective_gas_price: int
    events: list[HubEvent] = field(default_factory=list)
    receipt: TxReceipt | None = field(default=None, repr=False, compare=False)

    @property
    def fee_paid(self) -> int:
        """Wei spent on gas by the sender: gasUsed * effectiveGasPrice."""
        return self.gas_used * self.effective_gas_price


@dataclass(frozen=True)
class RequestResult:
    id: int
    assignees: tuple[str, ...]
    deadline: int
    tx: TxResult


def model_id(name: str) -> bytes:
    """`keccak256(bytes(name))`, the hub's model id."""
    return bytes(AsyncWeb3.keccak(text=name))


def to_digest(value: Digest) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"a digest is 32 bytes, got {len(raw)}")
    return raw


def _opt_digest(value: bytes) -> bytes | None:
    return None if value == bytes(32) else bytes(value)


def _secret(key: str | SecretStr) -> str:
    return key.get_secret_value() if isinstance(key, SecretStr) else key


def _revert_data(exc: ContractLogicError) -> str | None:
    data = exc.data
    if isinstance(data, dict):
        data = data.get("data")
    return data if isinstance(data, str) else None


class HubClient:
    """Client for one deployed InferenceHub; signs with `private_key` when one is given."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        address: str,
        private_key: str | SecretStr | None = None,
        *,
        receipt_timeout: float = 120.0,
        gas_margin: float = 1.2,
    ) -> None:
        self.w3 = w3
        self.address: ChecksumAddress = to_checksum_address(address)
        self.contract: AsyncContract = w3.eth.contract(address=self.address, abi=hub_artifact().abi)
        self._account: LocalAccount | None = (
            Account.from_key(_secret(private_key)) if private_key is not None else None
        )
        self.receipt_timeout = receipt_timeout
        self.gas_margin = gas_margin
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"HubClient(address={self.address}, sender={self.sender})"

    @staticmethod
    def web3(rpc_url: str, timeout: float = 30.0) -> AsyncWeb3[Any]:
        return AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))

    @classmethod
    def connect(cls, rpc_url: str, address: str, private_key: str | SecretStr | None = None) -> HubClient:
        return cls(cls.web3(rpc_url), address, private_key)

    @classmethod
    async def deploy(cls, w3: AsyncWeb3[Any] | str, private_key: str | SecretStr) -> HubClient:
        """Deploy a fresh hub (the deployer becomes its owner) and return a client for it."""
        web3 = cls.web3(w3) if isinstance(w3, str) else w3
        account: LocalAccount = Account.from_key(_secret(private_key))
        art = hub_artifact()
        factory = web3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        nonce = await web3.eth.get_transaction_count(account.address, "pending")
        tx = await factory.constructor().build_transaction({"from": account.address, "nonce": nonce})
        raw = account.sign_transaction(cast(dict[str, Any], tx)).raw_transaction
        tx_hash = await web3.eth.send_raw_transaction(raw)
        receipt = await web3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1 or receipt["contractAddress"] is None:
            raise TxFailed("0x" + bytes(tx_hash).hex(), int(receipt["blockNumber"]))
        return cls(web3, receipt["contractAddress"], private_key)

    # ---------------------------------------------------------------------------------------------
    # Sending
    # ---------------------------------------------------------------------------------------------

    @property
    def sender(self) -> ChecksumAddress | None:
        return self._account.address if self._account is not None else None

    def _require_account(self) -> LocalAccount:
        if self._account is None:
            raise ChainError("this HubClient has no private key; it can only read")
        return self._account

    async def build_tx(
        self,
        fn: AsyncContractFunction,
        value: int = 0,
        *,
        nonce: int | None = None,
        gas: int | None = None,
    ) -> TxParams:
        """An unsigned EIP-1559 transaction for `fn` from this client's key.

        Estimates gas (x `gas_margin`) unless given: a call that would revert raises `HubError`.
        """
        sender = self._require_account().address
        if gas is None:
            try:
                estimate = await fn.estimate_gas({"from": sender, "value": Wei(value)})
            except ContractLogicError as exc:
                raise decode_revert(_revert_data(exc)) from exc
            gas = int(estimate * self.gas_margin)
        block = await self.w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas", 0) or 0)
        tip = int(await self.w3.eth.max_priority_fee)
        if nonce is None:
            nonce = await self.w3.eth.get_transaction_count(sender, "pending")
        params: TxParams = {
            "from": sender,
            "value": Wei(value),
            "gas": gas,
            "nonce": Nonce(nonce),
            "maxPriorityFeePerGas": Wei(tip),
            "maxFeePerGas": Wei(2 * base + tip),
            "chainId": await self.w3.eth.chain_id,
        }
        return await fn.build_transaction(params)

    def sign(self, tx: TxParams) -> bytes:
        """Sign locally; returns the raw transaction bytes."""
        signed = self._require_account().sign_transaction(cast(dict[str, Any], tx))
        return bytes(signed.raw_transaction)

    async def send_raw(self, raw: bytes) -> str:
        tx_hash = await self.w3.eth.send_raw_transaction(raw)
        return "0x" + bytes(tx_hash).hex()

    async def wait(self, tx_hash: str, *, tx: TxParams | None = None) -> TxResult:
        """Wait for the receipt. A reverted tx raises `HubError` (replayed to decode) or `TxFailed`."""
        receipt = await self.w3.eth.wait_for_transaction_receipt(
            HexBytes(tx_hash), timeout=self.receipt_timeout
        )
        block = int(receipt["blockNumber"])
        if receipt["status"] != 1:
            if tx is not None:
                await self._raise_replayed(tx, block)
            raise TxFailed(tx_hash, block)
        own = [lg for lg in receipt["logs"] if to_checksum_address(lg["address"]) == self.address]
        return TxResult(
            tx_hash=tx_hash,
            block_number=block,
            gas_used=int(receipt["gasUsed"]),
            effective_gas_price=int(receipt["effectiveGasPrice"]),
            events=decode_logs(cast(list[dict[str, Any]], own)),
            receipt=receipt,
        )

    async def _raise_replayed(self, tx: TxParams, block: int) -> None:
        call: TxParams = {k: v for k, v in tx.items() if k in ("from", "to", "data", "value")}  # type: ignore[assignment]
        try:
            await self.w3.eth.call(call, block_identifier=block)
        except ContractLogicError as exc:
            raise decode_revert(_revert_data(exc)) from exc

    async def transact(
        self, fn: AsyncContractFunction, value: int = 0, *, gas: int | None = None
    ) -> TxResult:
        """Build, sign, send `fn` and wait for its receipt (sends from this client are serialized)."""
        async with self._lock:
            tx = await self.build_tx(fn, value, gas=gas)
            tx_hash = await self.send_raw(self.sign(tx))
        return await self.wait(tx_hash, tx=tx)

    # ---------------------------------------------------------------------------------------------
    # Hub functions
    # ---------------------------------------------------------------------------------------------

    async def register_model(
        self, name: str, min_stake: int, min_fee: int, timeout_blocks: int, redundancy: int
    ) -> tuple[bytes, TxResult]:
        fn = self.contract.functions.registerModel(name, min_stake, min_fee, timeout_blocks, redundancy)
        return model_id(name), await self.transact(fn)

    async def register_miner(self, model: bytes, stake: int) -> TxResult:
        return await self.transact(self.contract.functions.registerMiner(model), stake)

    async def add_stake(self, amount: int) -> TxResult:
        return await self.transact(self.contract.functions.addStake(), amount)

    async def request_exit(self) -> TxResult:
        return await self.transact(self.contract.functions.requestExit())

    async def withdraw_stake(self) -> TxResult:
        return await self.transact(self.contract.functions.withdrawStake())

    async def request_inference(self, model: bytes, input_digest: Digest, fee: int) -> RequestResult:
        fn = self.contract.functions.requestInference(model, to_digest(input_digest))
        tx = await self.transact(fn, fee)
        for ev in tx.events:
            if isinstance(ev, InferenceRequested):
                return RequestResult(id=ev.id, assignees=ev.assignees, deadline=ev.deadline, tx=tx)
        raise ChainError(f"no InferenceRequested event in {tx.tx_hash}")

    async def submit_result(self, request_id: int, output_digest: Digest) -> TxResult:
        fn = self.contract.functions.submitResult(request_id, to_digest(output_digest))
        return await self.transact(fn)

    async def submit_results(self, results: Sequence[tuple[int, Digest]]) -> TxResult:
        ids = [i for i, _ in results]
        digests = [to_digest(d) for _, d in results]
        return await self.transact(self.contract.functions.submitResults(ids, digests))

    async def expire(self, request_id: int) -> TxResult:
        return await self.transact(self.contract.functions.expire(request_id))

    async def withdraw(self) -> TxResult:
        return await self.transact(self.contract.functions.withdraw())

    # ---------------------------------------------------------------------------------------------
    # Views
    # ---------------------------------------------------------------------------------------------

    async def _call(self, fn: AsyncContractFunction) -> Any:
        try:
            return await fn.call()
        except ContractLogicError as exc:
            raise decode_revert(_revert_data(exc)) from exc

    async def get_model(self, model: bytes) -> ModelInfo:
        v = await self._call(self.contract.functions.getModel(model))
        return ModelInfo(
            model_id=bytes(v[0]),
            name=str(v[1]),
            min_stake=int(v[2]),
            min_fee=int(v[3]),
            timeout_blocks=int(v[4]),
            redundancy=int(v[5]),
            active_miner_count=int(v[6]),
        )

    async def model_ids(self) -> list[bytes]:
        return [bytes(m) for m in await self._call(self.contract.functions.modelIds())]

    async def active_miners(self, model: bytes) -> list[str]:
        return [to_checksum_address(a) for a in await self._call(self.contract.functions.activeMiners(model))]

    async def get_miner(self, address: str) -> MinerInfo:
        addr = to_checksum_address(address)
        v = await self._call(self.contract.functions.getMiner(addr))
        return MinerInfo(
            address=addr,
            model_id=_opt_digest(bytes(v[0])),
            stake=int(v[1]),
            credits=int(v[2]),
            active=bool(v[3]),
            exit_unlock_block=int(v[4]),
        )

    async def credits_of(self, address: str) -> int:
        return int(await self._call(self.contract.functions.creditsOf(to_checksum_address(address))))

    async def request_count(self) -> int:
        return int(await self._call(self.contract.functions.requestCount()))

    async def get_request(self, request_id: int) -> RequestInfo:
        v = await self._call(self.contract.functions.getRequest(request_id))
        return RequestInfo(
            id=int(v[0]),
            status=RequestStatus(int(v[1])),
            requester=to_checksum_address(v[2]),
            model_id=bytes(v[3]),
            input_digest=bytes(v[4]),
            output_digest=_opt_digest(bytes(v[5])),
            fee=int(v[6]),
            deadline=int(v[7]),
            redundancy=int(v[8]),
            reassigned=bool(v[9]),
            assignees=tuple(to_checksum_address(a) for a in v[10]),
            submitted=tuple(_opt_digest(bytes(d)) for d in v[11]),
        )

    async def block_number(self) -> int:
        return int(await self.w3.eth.block_number)

    async def mine(self, blocks: int = 1) -> None:
        """Dev chains only (anvil): mine `blocks` empty blocks."""
        await self.w3.provider.make_request(cast(Any, "anvil_mine"), [hex(blocks)])


__all__ = [
    "Digest",
    "HexStr",
    "HubClient",
    "MinerInfo",
    "ModelInfo",
    "RequestInfo",
    "RequestResult",
    "RequestStatus",
    "TxResult",
    "model_id",
    "to_digest",
]
