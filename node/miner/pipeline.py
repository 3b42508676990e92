"""One job's work: fetch the input by CID → run the engine → output document → sign → upload.

Every assigned request gets a result: an input that cannot be fetched or read (unknown CID,
tampered bytes, malformed JSON, oversized, invalid schema) becomes an output document with `error`
set, which is uploaded, signed and submitted like any other. Only a content backend that is down
is retried (the input may well exist), until the job's time runs out.

The step is deterministic for a given (request id, input, request block timestamp), so redoing it
after a crash writes the very same bytes under the very same CID.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from node.chain.signing import sign_result
from node.content.cid import digest_of, digest_to_cid
from node.content.documents import (
    InputDocument,
    OutputDocument,
    OutputError,
    parse_input_document,
    to_canonical_bytes,
)
from node.content.errors import BackendUnavailable, ContentError, ContentNotFound
from node.content.store import ContentStore
from node.log import get_logger

log = get_logger("inferd.miner.pipeline")


@runtime_checkable
class EngineLike(Protocol):
    """What the pipeline needs from `node.engine.Engine` (a fake in unit tests)."""

    @property
    def model_name(self) -> str: ...

    @property
    def system_fingerprint(self) -> str: ...

    async def generate(
        self, input_doc: InputDocument, *, request_id: int, input_cid: str, created: int
    ) -> OutputDocument: ...


DeltaSink = Callable[[int, int, dict[str, Any]], None]
"""(seq, choice, delta) for one request; must not block."""


@dataclass(frozen=True)
class Produced:
    """A finished, uploaded, signed result, ready to be journaled and submitted."""

    request_id: int
    output: bytes
    output_cid: str
    output_digest: bytes
    signature: str
    error_code: str | None
    completion_tokens: int
    prompt_tokens: int
    fetch_s: float
    infer_s: float
    upload_s: float


class JobInput(Protocol):
    """What the pipeline needs of a job (a journal `Job` fits)."""

    @property
    def request_id(self) -> int: ...
    @property
    def input_digest(self) -> bytes: ...
    @property
    def created(self) -> int: ...


class Pipeline:
    """Turns one assignment into an uploaded, signed output document."""

    def __init__(
        self,
        *,
        engine: EngineLike,
        store: ContentStore,
        private_key: str,
        chain_id: int,
        hub: str,
        fetch_not_found_retries: int = 2,
        fetch_retry_s: float = 0.5,
    ) -> None:
        self.engine = engine
        self.store = store
        self._key = private_key
        self.chain_id = chain_id
        self.hub = hub
        self.fetch_not_found_retries = fetch_not_found_retries
        self.fetch_retry_s = fetch_retry_s

    def _error_doc(
        self, job: JobInput, input_cid: str, exc: Exception, code: str | None = None
    ) -> OutputDocument:
        return OutputDocument.for_error(
            request_id=job.request_id,
            input_cid=input_cid,
            model=self.engine.model_name,
            system_fingerprint=self.engine.system_fingerprint,
            created=job.created,
            error=OutputError.from_exception(exc, code),
        )

    async def fetch(self, job: JobInput, input_cid: str, give_up_at: float) -> InputDocument | Exception:
        """The verified, parsed input document, or the error that makes it unusable."""
        not_found = 0
        delay = self.fetch_retry_s
        while True:
            try:
                raw = await self.store.get(input_cid)
                return parse_input_document(raw)
            except ContentNotFound as exc:
                not_found += 1
                if not_found > self.fetch_not_found_retries:
                    return exc
            except BackendUnavailable as exc:
                if time.monotonic() > give_up_at:
                    return exc
                log.warning(
                    "content_unavailable", request_id=job.request_id, error=str(exc), retry_in_s=delay
                )
            except ContentError as exc:  # integrity, too large, malformed, invalid schema
                return exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def produce(
        self, job: JobInput, *, give_up_at: float | None = None, deltas: DeltaSink | None = None
    ) -> Produced:
        """Fetch, infer, encode, upload and sign one job's output document."""
        input_cid = digest_to_cid(job.input_digest)
        t0 = time.monotonic()
        fetched = await self.fetch(job, input_cid, give_up_at if give_up_at is not None else t0 + 60)
        t1 = time.monotonic()
        if isinstance(fetched, Exception):
            log.info("input_unusable", request_id=job.request_id, input_cid=input_cid, error=str(fetched))
            out = self._error_doc(job, input_cid, fetched)
        else:
            # An engine failure raises: an "internal error" document would be a wrong answer that
            # gets the miner slashed, so the job stays `new` and is retried.
            out = await self._generate(fetched, job, input_cid, deltas)
        t2 = time.monotonic()
        try:
            data = to_canonical_bytes(out)
        except ContentError as exc:  # e.g. an output over 1 MiB
            out = self._error_doc(job, input_cid, exc, "output_too_large")
            data = to_canonical_bytes(out)
        cid = await self._upload(data, job)
        digest = digest_of(data)
        t3 = time.monotonic()
        signature = sign_result(
            self._key,
            chain_id=self.chain_id,
            hub=self.hub,
            request_id=job.request_id,
            input_digest=job.input_digest,
            output_digest=digest,
        )
        usage = out.usage
        return Produced(
            request_id=job.request_id,
            output=data,
            output_cid=cid,
            output_digest=digest,
            signature=signature,
            error_code=out.error.code if out.error is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else 0,
            prompt_tokens=usage.prompt_tokens if usage is not None else 0,
            fetch_s=t1 - t0,
            infer_s=t2 - t1,
            upload_s=t3 - t2,
        )

    async def _generate(
        self, doc: InputDocument, job: JobInput, input_cid: str, deltas: DeltaSink | None
    ) -> OutputDocument:
        stream = getattr(self.engine, "stream", None)
        if deltas is None or stream is None:
            return await self.engine.generate(
                doc, request_id=job.request_id, input_cid=input_cid, created=job.created
            )
        final: OutputDocument | None = None
        seq = 0
        events: AsyncIterator[Any] = stream(
            doc, request_id=job.request_id, input_cid=input_cid, created=job.created
        )
        async for item in events:
            if isinstance(item, OutputDocument):
                final = item
                continue
            choice, delta = _as_delta(item)
            if delta:
                deltas(seq, choice, delta)
                seq += 1
        if final is None:
            raise RuntimeError("engine stream ended without an output document")
        return final

    async def _upload(self, data: bytes, job: JobInput) -> str:
        delay = 0.2
        while True:
            try:
                return await self.store.put(data)
            except BackendUnavailable as exc:
                log.warning("upload_retry", request_id=job.request_id, error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def _as_delta(item: Any) -> tuple[int, dict[str, Any]]:
    """(choice index, delta dict) from whatever the engine streams (dict or object)."""
    if isinstance(item, dict):
        return int(item.get("choice", item.get("index", 0)) or 0), dict(item.get("delta") or {})
    choice = int(getattr(item, "choice", getattr(item, "index", 0)) or 0)
    delta: Any = getattr(item, "delta", None)
    if delta is not None and hasattr(delta, "model_dump"):
        delta = delta.model_dump(exclude_none=True)
    return choice, dict(delta or {})


__all__ = ["DeltaSink", "EngineLike", "JobInput", "Pipeline", "Produced"]
