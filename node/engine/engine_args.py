"""vLLM's engine arguments: what inferd sets itself, and `[engine] vllm_args` passed through.

Operators need vLLM's own knobs (quantization, kv_cache_dtype, pipeline parallelism, Ray, ...)
without inferd re-declaring each one, so `engine.vllm_args` goes to `AsyncEngineArgs` unchanged.
Three rules keep that safe, checked before vLLM starts (`check_vllm_args`):

- a key must be a field of vLLM's own `EngineArgs` dataclass (a typo fails at start, by name);
- a key inferd sets from its own settings (model, dtype, max_model_len, ...) is refused with a
  pointer to the inferd setting, so one value has one place;
- a key that makes outputs depend on what else the engine runs (prefix caching, chunked prefill,
  speculative decoding, dual-batch overlap) is refused unless `engine.allow_nondeterministic`;
  the engine class then says `batch_invariant=0`.

Every passthrough key that can change output bytes is recorded in the engine class
(`class_vllm_args`): all keys except a short list known to change only speed and memory
(`SPEED_ONLY`). Unknown effect means "in the class": a false difference costs a miner a
restart with matching settings, a false match costs honest miners their stake.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any

from node.config import EngineSettings

# keys inferd sets from its own settings: the setting to use instead
INFERD_KEYS: dict[str, str] = {
    "model": "engine.model / engine.model_path",
    "served_model_name": "engine.model",
    "tokenizer": "engine.model_path (inferd uses the model folder's tokenizer)",
    "dtype": "engine.dtype",
    "seed": "engine.seed",
    "max_model_len": "engine.max_model_len",
    "max_num_seqs": "engine.max_num_seqs",
    "gpu_memory_utilization": "engine.gpu_memory_utilization",
    "tensor_parallel_size": "engine.tensor_parallel_size",
    "structured_outputs_config": "nothing: inferd fixes xgrammar with compact JSON (see engine_args)",
}

# keys whose value (other than the safe one) makes a request's output depend on the rest of the batch
NONDETERMINISTIC_SAFE: dict[str, Any] = {
    "enable_prefix_caching": False,
    "enable_chunked_prefill": False,
    "speculative_config": None,
    "spec_method": None,
    "spec_model": None,
    "spec_tokens": None,
    "enable_dbo": False,
}

# keys that change only speed, memory or where work runs, never a token (in batch-invariant mode)
SPEED_ONLY = frozenset(
    {
        "max_num_batched_tokens",  # chunked prefill is off in batch-invariant mode: scheduling only
        "distributed_executor_backend",
        "disable_log_stats",
        "enable_log_requests",
        "download_dir",
        "max_parallel_loading_workers",
        "kv_cache_memory_bytes",
        "num_gpu_blocks_override",
        "cpu_offload_gb",
        "use_tqdm_on_load",
        "scheduling_policy",
        "ray_workers_use_nsight",
        "shutdown_timeout",
        "distributed_timeout_seconds",
        "numa_bind",
        "numa_bind_nodes",
        "numa_bind_cpus",
    }
)


class VllmArgsError(ValueError):
    """`engine.vllm_args` names a key vLLM does not have, one inferd sets, or one that breaks determinism."""


@functools.cache
def _vllm_fields() -> dict[str, dataclasses.Field[Any]]:
    from vllm.engine.arg_utils import EngineArgs

    return {f.name: f for f in dataclasses.fields(EngineArgs)}


def _vllm_default(name: str) -> Any:
    f = _vllm_fields()[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def check_vllm_args(vllm_args: Mapping[str, Any], *, allow_nondeterministic: bool) -> None:
    """Raise `VllmArgsError` naming the first bad key (in sorted order) of `engine.vllm_args`."""
    fields = _vllm_fields()
    for key in sorted(vllm_args):
        if key in INFERD_KEYS:
            raise VllmArgsError(
                f"engine.vllm_args.{key} is set by inferd itself: use {INFERD_KEYS[key]} instead"
            )
        if key not in fields:
            raise VllmArgsError(
                f"engine.vllm_args.{key} is not an argument of vLLM's EngineArgs (vLLM "
                f"{_vllm_version()}): check the spelling against `vllm serve --help`"
            )
        if key in NONDETERMINISTIC_SAFE and not allow_nondeterministic:
            safe = NONDETERMINISTIC_SAFE[key]
            if vllm_args[key] != safe:
                raise VllmArgsError(
                    f"engine.vllm_args.{key}={json.dumps(vllm_args[key])} makes outputs depend on the "
                    f"rest of the batch, so miners of one engine class would disagree: leave it unset "
                    f"(or {json.dumps(safe)}), or set engine.allow_nondeterministic = true knowingly"
                )


def breaks_batch_invariance(vllm_args: Mapping[str, Any]) -> bool:
    """True when a passthrough value is one of the known batch-variant settings."""
    return any(key in vllm_args and vllm_args[key] != safe for key, safe in NONDETERMINISTIC_SAFE.items())


def class_vllm_args(vllm_args: Mapping[str, Any], inferd_args: Mapping[str, Any]) -> dict[str, Any]:
    """The passthrough args the engine class records: output-affecting, and not a default.

    A value equal to what the engine would get anyway (inferd's own value for keys it sets, else
    vLLM's dataclass default) is dropped, so spelling out a default does not change the class.
    """
    recorded: dict[str, Any] = {}
    for key in sorted(vllm_args):
        if key in SPEED_ONLY:
            continue
        value = vllm_args[key]
        baseline = inferd_args[key] if key in inferd_args else _vllm_default(key)
        if value == baseline:
            continue
        recorded[key] = value
    return recorded


def _vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def effective_dtype(settings: EngineSettings, on_cpu: bool) -> str:
    """`auto` means float32 on the CPU (batch-invariant there) and bfloat16 on GPUs."""
    if settings.dtype != "auto":
        return settings.dtype
    return "float32" if on_cpu else "bfloat16"


def batch_invariant_mode(settings: EngineSettings, on_cpu: bool) -> bool:
    """Whether the engine runs batch-invariant: float32 on the CPU, `batch_invariant` on GPUs,
    and never with a batch-variant passthrough arg (allowed only by `allow_nondeterministic`)."""
    base = effective_dtype(settings, on_cpu) == "float32" if on_cpu else settings.batch_invariant
    return base and not breaks_batch_invariance(settings.vllm_args)


def inferd_engine_kwargs(
    settings: EngineSettings, model_path: str, *, on_cpu: bool, dtype: str, batch_invariant: bool
) -> dict[str, Any]:
    """What inferd itself passes to `AsyncEngineArgs` (before `vllm_args`); see `engine_args`."""
    strict = batch_invariant or on_cpu
    return {
        "model": model_path,
        "served_model_name": [settings.model],
        "dtype": dtype,
        "max_model_len": settings.max_model_len,
        "max_num_seqs": settings.max_num_seqs,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "seed": settings.seed,
        "enforce_eager": on_cpu,  # torch.compile on a small CPU costs minutes and buys little
        "enable_chunked_prefill": not strict,
        "enable_prefix_caching": not strict,
        "max_num_batched_tokens": max(settings.max_model_len, 2048) if strict else None,
        "disable_log_stats": True,
    }


def engine_args(
    settings: EngineSettings, model_path: str, *, on_cpu: bool, dtype: str, batch_invariant: bool
) -> Any:
    """vLLM's `AsyncEngineArgs` for these settings (shared with the engine benchmark).

    Chunked prefill and prefix caching are off in batch-invariant mode: a prompt split across
    steps, or partly served from another request's cache, is computed in different shapes, so
    its output would depend on what else the miner was running. (On the CPU, chunked prefill of a
    seeded request also crashes vLLM 0.32: "CPU Generator does not use offset".)

    Structured outputs (forced tool calls) use xgrammar only: with vLLM's `auto` a schema xgrammar
    refuses falls back to llguidance, where `{"minItems": 1000000000}` took 17 GiB in the miner's
    own process (OOM-killed). A schema xgrammar cannot compile is refused (`refusal`). JSON is
    generated compact (`disable_any_whitespace`): a small model under a grammar that allows any
    whitespace can spend its whole budget on newlines, and compact output is one spelling.

    `settings.vllm_args` are checked (`check_vllm_args`, raises `VllmArgsError`) and then win over
    inferd's own values for the keys both set (e.g. `max_num_batched_tokens`, `enforce_eager`).
    """
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    check_vllm_args(settings.vllm_args, allow_nondeterministic=settings.allow_nondeterministic)
    kwargs = inferd_engine_kwargs(
        settings, model_path, on_cpu=on_cpu, dtype=dtype, batch_invariant=batch_invariant
    )
    kwargs.update(settings.vllm_args)
    return AsyncEngineArgs(
        **kwargs,
        structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
    )


__all__ = [
    "INFERD_KEYS",
    "NONDETERMINISTIC_SAFE",
    "SPEED_ONLY",
    "VllmArgsError",
    "batch_invariant_mode",
    "breaks_batch_invariance",
    "check_vllm_args",
    "class_vllm_args",
    "effective_dtype",
    "engine_args",
    "inferd_engine_kwargs",
]
