"""An async client for the InferenceHub contract over web3.py's `AsyncWeb3`.

A thin layer: each hub function has a method that builds, signs (locally, eth-account), sends and
waits for one transaction, and returns a `TxResult` with the receipt's gas figures and the decoded
hub events. Reverts raise `HubError` with the custom error's name and an actionable message.

Lower-level pieces are public for callers with their own sending policy (the miner's `TxSender`):
`hub.contract.functions.commitMany(ids, commitments)` gives the contract function,
`build_tx()` an unsigned EIP-1559 transaction, `sign()` raw bytes, `send_raw()` / `wait()` the rest.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection, Sequence
from dataclasses import replace
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
from web3.types import BlockIdentifier, Nonce, TxParams, Wei

from node.chain.abicall import FunctionCodec, checksum, codecs, eth_call, lean
from node.chain.artifacts import hub_artifact
from node.chain.errors import ChainError, TxFailed, decode_revert
from node.chain.events import InferenceFinalized, InferenceRequested, decode_logs, event_topic
from node.chain.hubtypes import (
    ASSIGN_GAS,
    AUTO_ASSIGN,
    MAX_BATCH,
    MAX_DECLARED_TOKENS,
    UNAVAILABLE,
    Digest,
    EscalationInfo,
    MinerInfo,
    ModelInfo,
    Phase,
    RequestFlag,
    RequestInfo,
    RequestResult,
    TxResult,
    VerificationState,
    _opt_digest,
    batch_root,
    commitment,
    model_id,
    to_digest,
)


def _secret(key: str | SecretStr) -> str:
    return key.get_secret_value() if isinstance(key, SecretStr) else key


@functools.cache
def _hub_codecs() -> dict[str, FunctionCodec]:
    return codecs(hub_artifact().abi)


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
        self._codecs = _hub_codecs()
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
        """An HTTP `AsyncWeb3` without the middleware that costs a round trip or a walk per call."""
        return lean(AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout})))

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

        Estimates gas on the pending block (x `gas_margin`) unless given: a call that would revert
        raises `HubError`.
        """
        sender = self._require_account().address
        if gas is None:
            try:
                estimate = await fn.estimate_gas({"from": sender, "value": Wei(value)}, "pending")
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
        own = [lg for lg in receipt["logs"] if checksum(lg["address"]) == self.address]
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
        self, fn: AsyncContractFunction, value: int = 0, *, gas: int | None = None, extra_gas: int = 0
    ) -> TxResult:
        """Build, sign, send `fn` and wait for its receipt (sends from this client are serialized).

        `extra_gas` is added to the estimate: for calls that may do more in their block than in the
        estimate's (materialising due assignments, whose seed block is the one being estimated on).
        """
        async with self._lock:
            tx = await self.build_tx(fn, value, gas=gas)
            if extra_gas:
                tx["gas"] = int(tx["gas"]) + extra_gas
            tx_hash = await self.send_raw(self.sign(tx))
        return await self.wait(tx_hash, tx=tx)

    # ---------------------------------------------------------------------------------------------
    # Models and miners
    # ---------------------------------------------------------------------------------------------

    async def register_model(
        self,
        name: str,
        engine_class: bytes,
        min_stake: int,
        base_fee: int,
        per_token_fee: int,
        timeout_blocks: int,
        redundancy: int,
        audit_bps: int,
        *,
        audit_seed: int = 0,
    ) -> tuple[bytes, TxResult]:
        """Owner only. r = 1 needs `audit_bps * min_stake >= 2 * (10000 - audit_bps) * max price`.
        `audit_seed` wei seed the model's audit pool (agreeing auditors are paid from it)."""
        fn = self.contract.functions.registerModel(
            name, to_digest(engine_class), min_stake, base_fee, per_token_fee, timeout_blocks, redundancy,
            audit_bps,
        )  # fmt: skip
        return model_id(name), await self.transact(fn, audit_seed)

    async def fund_audit_pool(self, model: bytes, amount: int) -> TxResult:
        """Add `amount` wei to `model`'s audit pool (anyone)."""
        return await self.transact(self.contract.functions.fundAuditPool(model), amount)

    async def register_miner(self, model: bytes, engine_class: bytes, stake: int) -> TxResult:
        """Stake `stake` wei on `model`; `engine_class` must equal the model's (EngineClassMismatch)."""
        fn = self.contract.functions.registerMiner(model, to_digest(engine_class))
        return await self.transact(fn, stake)

    async def add_stake(self, amount: int) -> TxResult:
        return await self.transact(self.contract.functions.addStake(), amount)

    async def request_exit(self) -> TxResult:
        return await self.transact(self.contract.functions.requestExit())

    async def withdraw_stake(self) -> TxResult:
        return await self.transact(self.contract.functions.withdrawStake())

    async def withdraw(self) -> TxResult:
        return await self.transact(self.contract.functions.withdraw())

    # ---------------------------------------------------------------------------------------------
    # Requests
    # ---------------------------------------------------------------------------------------------

    async def price(self, model: bytes, max_tokens: int) -> int:
        """The exact fee of a request declaring `max_tokens` (a view)."""
        return int(await self._view("price", model, max_tokens))

    async def request_inference(
        self, model: bytes, input_digest: Digest, max_tokens: int, *, fee: int | None = None
    ) -> RequestResult:
        """Pay for one request. `fee` defaults to `price(model, max_tokens)` (read from the hub)."""
        if fee is None:
            fee = await self.price(model, max_tokens)
        fn = self.contract.functions.requestInference(model, to_digest(input_digest), max_tokens)
        tx = await self.transact(fn, fee, extra_gas=AUTO_ASSIGN * ASSIGN_GAS)
        for ev in tx.of(InferenceRequested):
            if ev.requester == self.sender:
                return RequestResult(id=ev.id, fee=ev.fee, max_tokens=ev.max_tokens, tx=tx)
        raise ChainError(f"no InferenceRequested event in {tx.tx_hash}")

    async def request_inferences(
        self, model: bytes, requests: Sequence[tuple[Digest, int]], *, fee: int | None = None
    ) -> list[RequestResult]:
        """Pay for up to 64 requests `(input digest, max tokens)` in one transaction; in order."""
        digests = [to_digest(d) for d, _ in requests]
        tokens = [int(t) for _, t in requests]
        if fee is None:
            info = await self.get_model(model)
            fee = sum(info.price(t) for t in tokens)
        fn = self.contract.functions.requestInferences(model, digests, tokens)
        tx = await self.transact(fn, fee, extra_gas=AUTO_ASSIGN * ASSIGN_GAS)
        out = [
            RequestResult(id=ev.id, fee=ev.fee, max_tokens=ev.max_tokens, tx=tx)
            for ev in tx.of(InferenceRequested)
            if ev.requester == self.sender
        ]
        if len(out) != len(requests):
            raise ChainError(
                f"{len(out)} InferenceRequested events for {len(requests)} requests in {tx.tx_hash}"
            )
        return out

    async def assign(self, max_count: int = 16) -> TxResult:
        """Materialise up to `max_count` due requests (their seed block is mined): `InferenceAssigned`."""
        return await self.transact(
            self.contract.functions.assign(max_count), extra_gas=max_count * ASSIGN_GAS
        )

    # ---------------------------------------------------------------------------------------------
    # Results
    # ---------------------------------------------------------------------------------------------

    def commitment_for(self, request_id: int, output_digest: Digest) -> bytes:
        """This client's commitment to `output_digest` for `request_id`."""
        return commitment(output_digest, self._require_account().address, request_id)

    async def commit(self, request_id: int, output_digest: Digest) -> TxResult:
        """Commit to `output_digest` (the commitment is computed for this client's address)."""
        return await self.commit_raw(request_id, self.commitment_for(request_id, output_digest))

    async def commit_raw(self, request_id: int, value: bytes) -> TxResult:
        """Commit an already computed commitment (tests; other signers' tooling)."""
        return await self.transact(self.contract.functions.commit(request_id, to_digest(value)))

    async def commit_many(self, results: Sequence[tuple[int, Digest]]) -> TxResult:
        ids = [i for i, _ in results]
        values = [self.commitment_for(i, d) for i, d in results]
        return await self.transact(self.contract.functions.commitMany(ids, values))

    def _batch(self, results: Sequence[tuple[int, Digest]]) -> tuple[list[int], list[bytes], list[bytes]]:
        """`results` sorted by id: (ids, digests, this client's leaves); a repeated id is refused."""
        ordered = sorted(((int(i), to_digest(d)) for i, d in results), key=lambda r: r[0])
        ids = [i for i, _ in ordered]
        if len(set(ids)) != len(ids):
            raise ValueError("a batch holds each request id once")
        digests = [d for _, d in ordered]
        return ids, digests, [self.commitment_for(i, d) for i, d in ordered]

    async def commit_batch(self, results: Sequence[tuple[int, Digest]]) -> TxResult:
        """Commit many r = 1 assignee results `(id, digest)` as one root (`commitBatch`); any order.

        All must be this client's seats of one model in their commit window. Reveal them in a later
        block with `reveal_batch` (the same results), withholding the ids `audit_drawn` reports.
        """
        ids, _, leaves = self._batch(results)
        return await self.transact(self.contract.functions.commitBatch(ids, batch_root(ids, leaves)))

    async def reveal_batch(
        self, results: Sequence[tuple[int, Digest]], withheld: Collection[int] = ()
    ) -> TxResult:
        """Open the root `commit_batch(results)` committed (`revealBatch`): every id not in `withheld`
        is revealed, finalized and paid; a withheld id (its audit is drawn) passes its leaf and becomes
        a single commitment: `open_audit`, then `reveal` after the auditor commits."""
        ids, digests, leaves = self._batch(results)
        held = {int(i) for i in withheld}
        unknown = held - set(ids)
        if unknown:
            raise ValueError(f"withheld ids {sorted(unknown)} are not in the batch")
        items = [leaf if i in held else d for i, d, leaf in zip(ids, digests, leaves, strict=True)]
        mask = sum(1 << k for k, i in enumerate(ids) if i in held)
        return await self.transact(self.contract.functions.revealBatch(ids, items, mask))

    async def reveal(self, request_id: int, output_digest: Digest) -> TxResult:
        """Reveal a committed digest; for r = 1 check `audit_drawn` first (else AuditDrawn)."""
        return await self.transact(self.contract.functions.reveal(request_id, to_digest(output_digest)))

    async def reveal_many(self, results: Sequence[tuple[int, Digest]]) -> TxResult:
        ids = [i for i, _ in results]
        digests = [to_digest(d) for _, d in results]
        return await self.transact(self.contract.functions.revealMany(ids, digests))

    async def audit_drawn(self, request_id: int, block: BlockIdentifier = "pending") -> bool:
        """Whether the committed r = 1 result must be audited before it is revealed.

        Evaluated on the pending block by default: the reveal would be mined there, and the view
        answers false in the commit block itself.
        """
        return bool(await self._view("auditDrawn", request_id, block=block))

    async def open_audit(self, request_id: int) -> TxResult:
        """Seat the auditor of a drawn r = 1 result (anyone): `AuditOpened`, or unaudited if none."""
        return await self.transact(self.contract.functions.openAudit(request_id))

    async def timeout(self, request_id: int) -> TxResult:
        """Move a request past its passed phase deadline (anyone): slash, reassign, resolve, refund."""
        return await self.transact(self.contract.functions.timeout(request_id))

    async def timeout_many(self, request_ids: Sequence[int]) -> TxResult:
        return await self.transact(self.contract.functions.timeoutMany(list(request_ids)))

    # ---------------------------------------------------------------------------------------------
    # Escalation and equivocation
    # ---------------------------------------------------------------------------------------------

    async def escalate(self, request_id: int, *, bond: int | None = None) -> TxResult:
        """Challenge a provisional outcome our seat lost; the bond (default: minStake) is sent."""
        if bond is None:
            info = await self.get_request(request_id)
            bond = (await self.get_model(info.model_id)).min_stake
        return await self.transact(self.contract.functions.escalate(request_id), bond)

    async def commit_vote(self, request_id: int, digest: Digest) -> TxResult:
        """Commit a vote for `digest` (computed as `commitment(digest, self, id)`)."""
        value = commitment(digest, self._require_account().address, request_id)
        return await self.transact(self.contract.functions.commitVote(request_id, value))

    async def reveal_vote(self, request_id: int, digest: Digest) -> TxResult:
        return await self.transact(self.contract.functions.revealVote(request_id, to_digest(digest)))

    async def claim_vote(self, request_id: int) -> TxResult:
        return await self.transact(self.contract.functions.claimVote(request_id))

    async def prove_equivocation(
        self, request_id: int, miner: str, signed_digest: Digest, signature: str | bytes
    ) -> TxResult:
        """Slash `miner` with its EIP-712 signature over a digest it did not commit/reveal."""
        sig = bytes.fromhex(signature.removeprefix("0x")) if isinstance(signature, str) else bytes(signature)
        fn = self.contract.functions.proveEquivocation(
            request_id, to_checksum_address(miner), to_digest(signed_digest), sig
        )
        return await self.transact(fn)

    async def prove_batch_equivocation(
        self,
        request_id: int,
        miner: str,
        signed_digest: Digest,
        signature: str | bytes,
        ids: Sequence[int],
        leaves: Sequence[Digest],
    ) -> TxResult:
        """`prove_equivocation` for a batch-committed seat (`RequestFlag.BATCH`): `ids`/`leaves` are the
        miner's root (a `BatchRevealed` event's); its leaf for `request_id` must differ from the signed
        digest's."""
        sig = bytes.fromhex(signature.removeprefix("0x")) if isinstance(signature, str) else bytes(signature)
        fn = self.contract.functions.proveBatchEquivocation(
            request_id, to_checksum_address(miner), to_digest(signed_digest), sig,
            [int(i) for i in ids], [to_digest(x) for x in leaves],
        )  # fmt: skip
        return await self.transact(fn)

    # ---------------------------------------------------------------------------------------------
    # Views
    # ---------------------------------------------------------------------------------------------

    async def _view(self, name: str, *args: Any, block: BlockIdentifier = "latest") -> Any:
        """Call view `name` (see `node.chain.abicall`: one RPC, no per-call ABI work)."""
        codec = self._codecs[name]
        return codec.decode(await eth_call(self.w3, self.address, codec.encode(args), block))

    def encode(self, name: str, *args: Any) -> str:
        """The 0x-hex calldata of hub function `name`: what `contract.encode_abi(name, args)` gives,
        without web3's per-call ABI lookup and argument normalisation."""
        return "0x" + self._codecs[name].encode(args).hex()

    async def get_model(self, model: bytes) -> ModelInfo:
        v = await self._view("getModel", model)
        return ModelInfo(
            model_id=bytes(v[0]),
            name=str(v[1]),
            engine_class=bytes(v[2]),
            min_stake=int(v[3]),
            base_fee=int(v[4]),
            per_token_fee=int(v[5]),
            timeout_blocks=int(v[6]),
            redundancy=int(v[7]),
            audit_bps=int(v[8]),
            active_miner_count=int(v[9]),
            audit_pool=int(v[10]),
        )

    async def model_ids(self) -> list[bytes]:
        return [bytes(m) for m in await self._view("modelIds")]

    async def active_miners(self, model: bytes, *, block: BlockIdentifier = "latest") -> list[str]:
        """The model's active pool in the hub's order (the draw's positions), as of `block`."""
        return [miner for miner, _ in await self.active_pool(model, block=block)]

    async def active_pool(self, model: bytes, *, block: BlockIdentifier = "latest") -> list[tuple[str, int]]:
        """The model's active pool in the hub's order, each miner with its activation block, as of
        `block`: what the hub's draw (`_pick`) reads, in one call."""
        entries = await self._view("activeMiners", model, block=block)
        return [(checksum(miner), int(since)) for miner, since in entries]

    async def get_miner(self, address: str, *, block: BlockIdentifier = "latest") -> MinerInfo:
        addr = checksum(address)
        v = await self._view("getMiner", addr, block=block)
        return MinerInfo(
            address=addr,
            model_id=_opt_digest(bytes(v[0])),
            stake=int(v[1]),
            credits=int(v[2]),
            active=bool(v[3]),
            exit_unlock_block=int(v[4]),
            active_since=int(v[5]),
        )

    async def credits_of(self, address: str) -> int:
        return int(await self._view("creditsOf", checksum(address)))

    async def burned(self) -> int:
        """Slashed wei gone for good."""
        return int(await self._view("burned"))

    async def request_count(self) -> int:
        return int(await self._view("requestCount"))

    async def next_assign(self) -> int:
        """The lowest request id not materialised yet."""
        return int(await self._view("nextAssign"))

    async def domain_separator(self) -> bytes:
        return bytes(await self._view("domainSeparator"))

    async def get_request(self, request_id: int) -> RequestInfo:
        """`getRequest(id)`. A batch-revealed r = 1 request (`RequestFlag.BATCH`, Final) has no digest
        in storage: its `output_digest` is read from its `InferenceFinalized` log (one `eth_getLogs`)."""
        v = await self._view("getRequest", request_id)
        info = RequestInfo(
            id=int(v[0]),
            phase=Phase(int(v[1])),
            requester=checksum(v[2]),
            model_id=bytes(v[3]),
            input_digest=bytes(v[4]),
            output_digest=_opt_digest(bytes(v[5])),
            fee=int(v[6]),
            mark=int(v[7]),
            redundancy=int(v[8]),
            flags=RequestFlag(int(v[9])),
            committed=int(v[10]),
            revealed=int(v[11]),
            seats=tuple(checksum(a) for a in v[12]),
            digests=tuple(bytes(d) for d in v[13]),
        )
        if info.phase == Phase.FINAL and RequestFlag.BATCH in info.flags and info.output_digest is None:
            digest = await self._finalized_digest(request_id, info.mark)
            # the seat's revealed digest too, so `revealed_digest` reads as for any other final request
            info = replace(info, output_digest=digest, digests=(digest, *info.digests[1:]))
        return info

    async def _finalized_digest(self, request_id: int, commit_block: int) -> bytes:
        """The digest of `request_id`'s `InferenceFinalized` log, emitted after `commit_block`."""
        logs = await self.w3.eth.get_logs(
            {
                "address": self.address,
                "fromBlock": commit_block + 1,
                "toBlock": "latest",
                "topics": [
                    HexStr(event_topic("InferenceFinalized")),
                    HexStr("0x" + request_id.to_bytes(32, "big").hex()),
                ],
            }
        )
        for ev in decode_logs(cast(list[dict[str, Any]], logs)):
            if isinstance(ev, InferenceFinalized) and ev.id == request_id:
                return bytes(ev.output_digest)
        raise ChainError(f"request {request_id} is final but its InferenceFinalized log was not found")

    async def get_escalation(self, request_id: int) -> EscalationInfo:
        v = await self._view("getEscalation", request_id)
        challenger = checksum(v[0])
        return EscalationInfo(
            challenger=None if int(challenger, 16) == 0 else challenger,
            commit_end=int(v[1]),
            reveal_end=int(v[2]),
            votes_for=int(v[3]),
            votes_against=int(v[4]),
            challenger_digest=bytes(v[5]),
            bond=int(v[6]),
            voter_share=int(v[7]),
            overturned=bool(v[8]),
        )

    async def block_number(self) -> int:
        return int(await self.w3.eth.block_number)

    async def mine(self, blocks: int = 1) -> None:
        """Dev chains only (anvil): mine `blocks` empty blocks."""
        await self.w3.provider.make_request(cast(Any, "anvil_mine"), [hex(blocks)])


__all__ = [
    "ASSIGN_GAS",
    "AUTO_ASSIGN",
    "MAX_BATCH",
    "MAX_DECLARED_TOKENS",
    "UNAVAILABLE",
    "Digest",
    "EscalationInfo",
    "HexStr",
    "HubClient",
    "MinerInfo",
    "ModelInfo",
    "Phase",
    "RequestFlag",
    "RequestInfo",
    "RequestResult",
    "TxResult",
    "VerificationState",
    "batch_root",
    "commitment",
    "model_id",
    "to_digest",
]
