"""An in-memory `InferenceBackend` for tests and demos: a fake chain and miner, with the real
pending registry and the real EIP-712 signature check, so the HTTP layer and the verification rules
are exercised without anvil, a broker or vLLM.

`mode` makes the fake miner misbehave: `silent` never answers (504), `bad_digest` sends bytes that
do not match the finalized digest, `bad_signature` signs with a key that is not an assignee,
`error` answers with an error output document, `expire` has the chain refund the request (502),
`lying_stream` streams deltas that differ from the (valid) final output.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any, Literal

from eth_account import Account

from node.chain.signing import sign_result
from node.content.cid import cid_for_bytes, digest_of, digest_to_cid
from node.content.documents import (
    AssistantOutput,
    ChatChoice,
    ChatInputDocument,
    CompletionChoice,
    InputDocument,
    OutputDocument,
    OutputError,
    Usage,
    output_version,
    to_canonical_bytes,
)
from node.content.errors import ContentNotFound
from node.gateway.errors import NotFound, UpstreamError
from node.gateway.pending import PendingInference, PendingRegistry, ResultMessage, recover_submission_signer
from node.gateway.records import Delta, ModelInfo, Submission

Mode = Literal["ok", "silent", "bad_digest", "bad_signature", "error", "expire", "lying_stream"]
HUB = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def default_responder(doc: InputDocument, index: int) -> str:
    """Deterministic text: a function of the input bytes and the choice index (and the seed)."""
    seed = doc.params.seed
    h = hashlib.sha256(to_canonical_bytes(doc) + bytes([index])).hexdigest()
    return f"Hello from the fake miner {h[:8]}" + (f" seed {seed}" if seed is not None else "")


class FakeBackend:
    """A fake chain + miner; `mode` and `delay_s` steer what the miner does."""

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        models: list[str] | None = None,
        mode: Mode = "ok",
        delay_s: float = 0.0,
        responder: Callable[[InputDocument, int], str] = default_responder,
        stream_deltas: bool = True,
    ) -> None:
        self.chain_id = chain_id
        self.mode: Mode = mode
        self.delay_s = delay_s
        self.responder = responder
        self.stream_deltas = stream_deltas
        self.miner = Account.create()
        self.intruder = Account.create()
        self.blocks: dict[str, bytes] = {}
        self.records: dict[int, dict[str, Any]] = {}
        self.submitted: list[InputDocument] = []
        self._next_id = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self.models = {
            name: ModelInfo(
                chain_id=chain_id,
                name=name,
                model_id="0x" + hashlib.sha256(name.encode()).hexdigest(),
                min_fee=10**12,
                min_stake=10**18,
                timeout_blocks=20,
                redundancy=1,
                active_miners=1,
            )
            for name in (models or ["SmolLM2-135M-Instruct"])
        }
        self.registry: PendingRegistry | None = None
        self._listeners: list[Callable[[str], None]] = []

    def add_rejection_listener(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    @property
    def default_chain_id(self) -> int:
        return self.chain_id

    def chain_ids(self) -> list[int]:
        return [self.chain_id]

    async def start(self) -> None:
        self.registry = PendingRegistry(
            recover_submission_signer, self._fetch, grace_s=0.05, fetch_retry_s=0.05
        )
        for listener in self._listeners:
            self.registry.add_rejection_listener(listener)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.registry is not None:
            await self.registry.close()

    async def _fetch(self, cid: str) -> bytes:
        data = self.blocks.get(cid)
        if data is None:
            raise ContentNotFound(cid, "fake store")
        return data

    async def list_models(self, chain_id: int) -> list[ModelInfo]:
        return list(self.models.values())

    async def get_model(self, chain_id: int, name: str) -> ModelInfo | None:
        return self.models.get(name)

    async def submit(
        self,
        chain_id: int,
        document: InputDocument,
        document_bytes: bytes,
        model: ModelInfo,
        *,
        private: bool | None = None,  # the fake network has no seats to seal to: always public
        live: bool = True,
    ) -> PendingInference:
        assert self.registry is not None, "start() the backend first"
        request_id = self._next_id
        self._next_id += 1
        input_cid = cid_for_bytes(document_bytes)
        self.blocks[input_cid] = document_bytes
        self.submitted.append(document)
        sub = Submission(
            chain_id=chain_id,
            hub=HUB,
            request_id=request_id,
            infer_tx="0x" + hashlib.sha256(f"tx{request_id}".encode()).hexdigest(),
            assignees=(self.miner.address,),
            input_cid=input_cid,
            input_digest=digest_of(document_bytes),
            model=model.name,
            fee=model.min_fee,
            created=int(time.time()),
        )
        self.records[request_id] = {"status": "pending", "submission": sub}
        pending = self.registry.register(sub)
        task = asyncio.get_running_loop().create_task(self._mine(sub, document))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pending

    def output_for(self, sub: Submission, document: InputDocument) -> OutputDocument:
        n = document.params.n or 1
        texts = [self.responder(document, i) for i in range(n)]
        if self.mode == "error":
            return OutputDocument.for_error(
                request_id=sub.request_id,
                input_cid=sub.input_cid,
                model=sub.model,
                system_fingerprint="fake",
                created=sub.created,
                error=OutputError(code="engine_error", message="the fake engine failed"),
                object="chat.completion" if isinstance(document, ChatInputDocument) else "text_completion",
                v=output_version(document.v),
            )
        usage = Usage(prompt_tokens=5, completion_tokens=4 * n, total_tokens=5 + 4 * n)
        if isinstance(document, ChatInputDocument):
            return OutputDocument(
                v=output_version(document.v),
                request_id=sub.request_id,
                input_cid=sub.input_cid,
                model=sub.model,
                system_fingerprint="inferd-fake",
                object="chat.completion",
                created=sub.created,
                choices=[
                    ChatChoice(index=i, message=AssistantOutput(content=t), finish_reason="stop")
                    for i, t in enumerate(texts)
                ],
                usage=usage,
            )
        return OutputDocument(
            v=output_version(document.v),
            request_id=sub.request_id,
            input_cid=sub.input_cid,
            model=sub.model,
            system_fingerprint="inferd-fake",
            object="text_completion",
            created=sub.created,
            choices=[CompletionChoice(index=i, text=t, finish_reason="length") for i, t in enumerate(texts)],
            usage=usage,
        )

    async def _mine(self, sub: Submission, document: InputDocument) -> None:
        registry = self.registry
        assert registry is not None
        if self.mode == "silent":
            return
        await asyncio.sleep(self.delay_s)
        if self.mode == "expire":
            self.records[sub.request_id]["status"] = "refunded"
            registry.on_failed(
                sub.chain_id,
                sub.request_id,
                UpstreamError(
                    f"Request {sub.request_id} expired and was refunded.", request_id=sub.request_id
                ),
            )
            return
        output = self.output_for(sub, document)
        data = to_canonical_bytes(output)
        digest = digest_of(data)
        if self.stream_deltas and self.mode in ("ok", "lying_stream"):
            seq = 0
            for choice in output.choices:
                text = choice.message.content if isinstance(choice, ChatChoice) else choice.text
                if self.mode == "lying_stream":
                    text = "Transfer your funds to the miner"
                for i, word in enumerate((text or "").split(" ")):
                    piece = word if i == 0 else " " + word
                    registry.on_delta(
                        sub.chain_id,
                        sub.request_id,
                        Delta(seq=seq, choice=choice.index, text=piece, miner=self.miner.address),
                    )
                    seq += 1
                    await asyncio.sleep(0)
        sent = data
        signer = self.miner
        if self.mode == "bad_digest":
            sent = data.replace(b"Hello", b"Hallo")
        if self.mode == "bad_signature":
            signer = self.intruder
        signature = sign_result(
            signer.key,
            chain_id=sub.chain_id,
            hub=sub.hub,
            request_id=sub.request_id,
            input_digest=sub.input_digest,
            output_digest=digest_of(sent),
        )
        if self.mode in ("ok", "lying_stream"):
            self.blocks[digest_to_cid(digest)] = data
        registry.on_result_message(
            sub.chain_id,
            sub.request_id,
            # Published under the assignee's topic (the broker's ACL allows nothing else), signed by `signer`.
            ResultMessage(output_bytes=sent, signature=signature, miner=self.miner.address),
        )
        submit_tx = "0x" + hashlib.sha256(f"submit{sub.request_id}".encode()).hexdigest()
        registry.on_submitted(sub.chain_id, sub.request_id, self.miner.address, submit_tx, digest)
        registry.on_finalized(sub.chain_id, sub.request_id, digest, submit_tx)
        self.records[sub.request_id].update(status="finalized", output_digest=digest)

    async def get_inference(self, chain_id: int, request_id: int) -> dict[str, Any]:
        record = self.records.get(request_id)
        if record is None:
            raise NotFound(f"No inference request {request_id} on chain {chain_id}.", param="request_id")
        sub: Submission = record["submission"]
        out: dict[str, Any] = {
            "object": "inference",
            "chain_id": chain_id,
            "request_id": request_id,
            "status": record["status"],
            "input_cid": sub.input_cid,
        }
        if "output_digest" in record:
            out["output_cid"] = digest_to_cid(record["output_digest"])
        return out

    async def health(self) -> dict[str, Any]:
        return {"ok": True, "chains": [self.chain_id], "pending": len(self.registry or ())}


__all__ = ["HUB", "FakeBackend", "Mode", "default_responder"]
