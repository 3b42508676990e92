"""One job's work: fetch the input by CID → run the engine → output document → sign → upload.

Every assigned request whose input can be fetched gets a result, and a refusal is an answer like any
other: an input that is not a valid document (malformed or hostile JSON, over a protocol cap,
invalid schema, over 1 MiB) or that the engine refuses (too long for the context, a template or
tokenizer that chokes on it) becomes an output document with `error` set, uploaded, signed and
submitted. Its text depends only on the input, so honest miners refusing it agree byte for byte.
Nothing from the input crashes the job or loops it: only `EngineError` (the engine is dead or shut
down) is raised, and the job is retried.

An input that cannot be fetched gets no output document: not found, a backend down, bytes that do
not match the CID. None of these is a property of the input, and a requester who makes an input
reachable for some seats only (or only later) would otherwise get honest miners to disagree and be
slashed. `produce` raises `InputUnavailable` instead, holding the job's concurrency slot only for a
short first try (`first_fetch_s`), then for one store read per attempt with a per-input backoff
(`retry_after_s`): the daemon keeps the job `new` and retries it until its deadline's margin.

The requester declares on chain how many tokens the request may generate (`maxTokens`, which its
fee pays for). A document that asks for more (`declared_tokens`: sequences × max_tokens, or the
protocol's default budget without max_tokens) is answered with the error document
`max_tokens_exceeds_declared` before the engine runs: the fee only paid for the declared amount, and
every honest seat refuses it byte for byte.

Then the seat commits and reveals `UNAVAILABLE` instead of staying silent (the daemon decides when;
see `unavailable_result`): never slashed as fraud, paid the base fee.

The step is deterministic for a given (request id, input, declared max tokens, request block
timestamp), so redoing it after a crash writes the very same bytes under the very same CID.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from node.chain.hub import MAX_DECLARED_TOKENS, UNAVAILABLE
from node.chain.signing import sign_result
from node.content.cid import digest_of, digest_to_cid
from node.content.documents import (
    InputDocument,
    OutputDocument,
    OutputError,
    default_max_tokens,
    output_version,
    parse_input_document,
    sequence_count,
    to_canonical_bytes,
)
from node.content.errors import (
    BackendUnavailable,
    ContentError,
    ContentNotFound,
    DocumentTooLarge,
    InputUnavailable,
)
from node.content.store import ContentStore
from node.engine.engine import UNPROCESSABLE, EngineError
from node.engine.params import ParamError
from node.log import get_logger
from node.miner.private import (
    NO_ENVELOPE_SOURCE,
    EnvelopeSource,
    deliver_output,
    encode_private,
    fetch_private,
    is_private,
    sealed_deltas,
)

log = get_logger("inferd.miner.pipeline")

MAX_TOKENS_EXCEEDS_DECLARED = "max_tokens_exceeds_declared"


def declared_tokens(doc: InputDocument, max_model_len: int | None = None) -> int:
    """The most tokens `doc` may generate: sequences × per-sequence budget, within 1..65536.

    The budget is `max_tokens`, or without it the protocol's default capped at the engine's
    `max_model_len` (part of the engine class, so equal on every seat). The same rule as the
    gateway's `declared_max_tokens` (what it declares on chain): keep the two in step.
    """
    per_sequence = doc.params.max_tokens
    if per_sequence is None:
        per_sequence = default_max_tokens(doc)
        if max_model_len is not None:
            per_sequence = min(per_sequence, max_model_len)
    return max(1, min(MAX_DECLARED_TOKENS, per_sequence * sequence_count(doc)))


def over_declared(doc: InputDocument, declared: int, max_model_len: int | None = None) -> ParamError | None:
    """The refusal of a document asking for more tokens than its request declared (None: fits)."""
    wanted = declared_tokens(doc, max_model_len)
    if wanted <= declared:
        return None
    return ParamError(
        MAX_TOKENS_EXCEEDS_DECLARED,
        f"the document may generate up to {wanted} tokens (sequences x max_tokens), more than the "
        f"{declared} its request declared on chain (maxTokens, which the fee pays for)",
    )


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
    sealed: bool = False
    """`output` is an envelope to the requester's gateway (a private request): `Pipeline.deliver`
    hands it in over HTTP, the path without MQTT."""


class JobInput(Protocol):
    """What the pipeline needs of a job (a journal `Job` fits)."""

    @property
    def request_id(self) -> int: ...
    @property
    def input_digest(self) -> bytes: ...
    @property
    def created(self) -> int: ...
    @property
    def max_tokens(self) -> int | None: ...


class Pipeline:
    """Turns one assignment into an uploaded, signed output document."""

    MAX_TRACKED_INPUTS = 4096
    """Unavailable inputs whose backoff is remembered (oldest forgotten first): bounded memory."""

    def __init__(
        self,
        *,
        engine: EngineLike,
        store: ContentStore,
        private_key: str,
        chain_id: int,
        hub: str,
        first_fetch_s: float = 2.0,
        fetch_retry_s: float = 0.5,
        max_backoff_s: float = 30.0,
        envelopes: EnvelopeSource | None = None,
    ) -> None:
        self.engine = engine
        self.envelopes = envelopes
        """Where sealed private inputs are found (`node.miner.private`); None: public inputs only."""
        self.store = store
        self._key = private_key
        self.chain_id = chain_id
        self.hub = hub
        self.first_fetch_s = first_fetch_s
        self.fetch_retry_s = fetch_retry_s
        self.max_backoff_s = max_backoff_s
        self._unavailable: OrderedDict[str, tuple[float, float]] = OrderedDict()  # cid -> (next try, backoff)
        ec = getattr(engine, "engine_class", None)
        self.max_model_len: int | None = getattr(ec, "max_model_len", None) or getattr(
            engine, "max_model_len", None
        )

    def _error_doc(
        self,
        job: JobInput,
        input_cid: str,
        exc: Exception,
        code: str | None = None,
        input_version: int | None = None,
    ) -> OutputDocument:
        """An error document; its `v` follows the input's (`output_version`; None: unreadable)."""
        if isinstance(exc, ParamError) and code is None:
            error = OutputError(code=exc.code, message=exc.message)
        else:
            error = OutputError.from_exception(exc, code)
        return OutputDocument.for_error(
            request_id=job.request_id,
            input_cid=input_cid,
            model=self.engine.model_name,
            system_fingerprint=self.engine.system_fingerprint,
            created=job.created,
            error=error,
            v=output_version(input_version),
        )

    def _not_yet(self, input_cid: str, reason: str) -> InputUnavailable:
        """Record one more failed fetch of `input_cid`; the error tells when to try again."""
        _, backoff = self._unavailable.pop(input_cid, (0.0, self.fetch_retry_s))
        backoff = min(backoff * 2, self.max_backoff_s)
        self._unavailable[input_cid] = (time.monotonic() + backoff, backoff)
        while len(self._unavailable) > self.MAX_TRACKED_INPUTS:
            self._unavailable.popitem(last=False)
        return InputUnavailable(input_cid, reason, backoff)

    def _why_unfetched(self, exc: ContentError) -> str:
        """The reason logged for an input not fetched; says what to configure when it is our fault."""
        if self.envelopes is None and isinstance(exc, ContentNotFound):
            return f"{type(exc).__name__}: {NO_ENVELOPE_SOURCE}"
        return type(exc).__name__

    async def fetch(
        self, job: JobInput, input_cid: str, give_up_at: float
    ) -> tuple[InputDocument | ContentError, bool]:
        """The parsed input, or the input's own error (invalid, too large) to answer with, and
        whether live deltas are wanted (False only when a private input's gateway says so).

        Raises `InputUnavailable` while the input cannot be fetched: retried here until `give_up_at`
        on a first try, once per call (and not before its backoff) after that.
        """
        known = self._unavailable.get(input_cid)
        if known is not None and time.monotonic() < known[0]:
            raise InputUnavailable(input_cid, "backing off", known[0] - time.monotonic())
        delay = self.fetch_retry_s
        while True:
            try:
                raw = await self.store.get(input_cid)
            except DocumentTooLarge as exc:  # no block of that CID fits the protocol: its own answer
                self._unavailable.pop(input_cid, None)
                return exc, True
            except ContentError as exc:  # not found, a backend down, bytes that do not match the CID
                if self.envelopes is not None and isinstance(exc, ContentNotFound):
                    opened = await fetch_private(self.envelopes, input_cid, job.input_digest, self._key)
                    if opened is not None:  # a private input sealed to us (or a tampered envelope)
                        self._unavailable.pop(input_cid, None)
                        return opened
                if known is not None or time.monotonic() + delay > give_up_at:
                    raise self._not_yet(input_cid, self._why_unfetched(exc)) from None
                if isinstance(exc, BackendUnavailable):
                    log.warning("content_unavailable", request_id=job.request_id, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._unavailable.pop(input_cid, None)
            try:
                return parse_input_document(raw), True
            except ContentError as exc:  # malformed, hostile, over a cap, invalid schema
                return exc, True

    async def produce(
        self, job: JobInput, *, give_up_at: float | None = None, deltas: DeltaSink | None = None
    ) -> Produced:
        """Fetch, infer, encode, upload and sign one job's output document.

        Raises `InputUnavailable` (input not fetched yet) or `EngineError` (engine gone): retry later.
        """
        input_cid = digest_to_cid(job.input_digest)
        t0 = time.monotonic()
        fetched, live = await self.fetch(
            job, input_cid, give_up_at if give_up_at is not None else t0 + self.first_fetch_s
        )
        t1 = time.monotonic()
        if not live:  # the requester's client does not stream: nobody reads deltas
            deltas = None
        private = fetched if not isinstance(fetched, ContentError) and is_private(fetched) else None
        if private is not None and deltas is not None:
            deltas = sealed_deltas(deltas, private, job.request_id, self._key)
        refusal = None
        if not isinstance(fetched, ContentError) and job.max_tokens is not None:
            refusal = over_declared(fetched, job.max_tokens, self.max_model_len)
        if isinstance(fetched, ContentError):
            log.info(
                "input_refused", request_id=job.request_id, input_cid=input_cid, error=str(fetched)[:300]
            )
            out = self._error_doc(job, input_cid, fetched)
        elif refusal is not None:
            log.info("input_refused", request_id=job.request_id, input_cid=input_cid, error=refusal.code)
            out = self._error_doc(job, input_cid, refusal, input_version=fetched.v)
        else:
            out = await self._answer(fetched, job, input_cid, deltas)
        t2 = time.monotonic()
        if private is not None:  # signed: the salted plaintext; stored and sent: its envelope
            too_large = functools.partial(self._error_doc, job, input_cid, code="output_too_large")
            out, data, stored = encode_private(out, private, lambda e, v: too_large(e, input_version=v))
        else:
            try:
                data = to_canonical_bytes(out)
            except ContentError as exc:  # e.g. an output over 1 MiB
                out = self._error_doc(job, input_cid, exc, "output_too_large", out.v)
                data = to_canonical_bytes(out)
            stored = data
        cid = await self._upload(stored, job)
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
            output=stored,
            output_cid=cid,
            output_digest=digest,
            signature=signature,
            error_code=out.error.code if out.error is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else 0,
            prompt_tokens=usage.prompt_tokens if usage is not None else 0,
            fetch_s=t1 - t0,
            infer_s=t2 - t1,
            upload_s=t3 - t2,
            sealed=private is not None,
        )

    async def deliver(self, produced: Produced) -> None:
        """Hand a sealed answer to the requester's gateway over HTTP (`POST /envelope/output`), the
        path without MQTT. Not part of `produce`: the daemon publishes the signed result over MQTT
        first (the gateway's fast path), then delivers, then journals (a journaled result may settle
        on chain after a crash, so its sealed answer must have reached the gateway by then)."""
        if produced.sealed and self.envelopes is not None:
            await deliver_output(self.envelopes, produced.output)

    def unavailable_result(self, job: JobInput) -> tuple[bytes, str]:
        """(UNAVAILABLE, our signature over it): what a seat commits when the input never came."""
        signature = sign_result(
            self._key,
            chain_id=self.chain_id,
            hub=self.hub,
            request_id=job.request_id,
            input_digest=job.input_digest,
            output_digest=UNAVAILABLE,
        )
        return UNAVAILABLE, signature

    async def _answer(
        self, doc: InputDocument, job: JobInput, input_cid: str, deltas: DeltaSink | None
    ) -> OutputDocument:
        """The engine's output document; whatever else it raises for this input is a fixed refusal.

        `EngineError` propagates: an "internal error" document would be a wrong answer that gets the
        miner slashed, so the job stays `new` and is retried.
        """
        try:
            return await self._generate(doc, job, input_cid, deltas)
        except (EngineError, MemoryError):
            raise
        except ParamError as exc:
            return self._error_doc(job, input_cid, exc, input_version=doc.v)
        except Exception as exc:
            log.warning("input_unprocessable", request_id=job.request_id, error=type(exc).__name__)
            refusal = ParamError("input_unprocessable", UNPROCESSABLE)
            return self._error_doc(job, input_cid, refusal, input_version=doc.v)

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
            raise EngineError("engine stream ended without an output document")
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


__all__ = [
    "MAX_TOKENS_EXCEEDS_DECLARED",
    "DeltaSink",
    "EngineLike",
    "JobInput",
    "Pipeline",
    "Produced",
    "declared_tokens",
    "over_declared",
]
