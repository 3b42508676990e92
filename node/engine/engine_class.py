"""Engine classes: what must match for two miners to produce the same output bytes.

A model on chain names the engine class its miners must run (`bytes32 engineClass`). The class is a
canonical text and its keccak256: two engines with the same class answer every input document with
the same output document, and anything that only changes speed is left out, so miners with
different hardware budgets can still share a class. What it records, and why:

- `weights`: sha256 over the weight files' sha256s, from bytes (the verified fetch manifest, or the
  files hashed here), never from a model name; `model_files`: the same over the other files that
  shape outputs (config, tokenizer, chat template, generation config, remote code);
- `vllm`, `torch`: the engine build (kernels decide the floats), and `inferd_outputs`: the revision
  of inferd's own output shaping (prompt rendering, tool-call parsing, document encoding, error
  texts). Not inferd's package version, which changes with every release whether or not a byte of
  output does: `OUTPUT_REVISION` is bumped by hand with any change that alters an output document
  for some input (the developer guide says so);
- `device`: `cpu-<arch>-<isa>` (torch's kernel dispatch level: AVX2 and AVX512 builds compute
  float32 sums differently) or the GPU family (`nvidia-sm90`);
- `dtype`, `batch_invariant`, `max_model_len` (which prompts are refused, where outputs stop),
  `tool_parser`, `tensor_parallel_size` (it splits reductions), and every `engine.vllm_args` value
  that can change output bytes, as `vllm.<key>=<canonical JSON>` (see `engine_args`).

Left out because they change speed only: max_num_seqs, gpu_memory_utilization, cpu_kvcache_gib,
`engine_args.SPEED_ONLY` args (max_num_batched_tokens, Ray, ...), and `engine.seed` (every request
carries its own seed, derived from the input digest when the user gives none).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak

from node.config import EngineSettings
from node.engine.engine_args import (
    batch_invariant_mode,
    check_vllm_args,
    class_vllm_args,
    effective_dtype,
    inferd_engine_kwargs,
)
from node.engine.model_fetch import MANIFEST, read_manifest, sha256_file

SCHEME = "inferd-ec1"
OUTPUT_REVISION = 1  # bump with any inferd change that alters an output document's bytes for some input
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MODEL_FILE_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")


class EngineClassError(Exception):
    """The engine class cannot be computed (e.g. the model's files are not on this machine)."""


class EngineClassMismatch(EngineClassError):
    """This engine's class differs from the one the model requires on chain."""

    def __init__(self, expected_id: bytes, actual: EngineClass) -> None:
        self.expected_id = expected_id
        self.actual = actual
        super().__init__(
            f"this engine's class 0x{actual.id.hex()} is not the model's on-chain engine class "
            f"0x{expected_id.hex()}, so its outputs would not match the other miners' (and be slashed). "
            f"This engine is: {actual.text}. Compare it with the class text the model was registered with "
            "(`inferd model class` on a reference machine): make the vLLM/torch build, device family, "
            "model files, dtype, max_model_len, tool_parser and output-affecting engine.vllm_args match."
        )


@dataclass(frozen=True)
class EngineClass:
    """One engine class: its fields, canonical `text` and `id` = keccak256(text)."""

    weights: str  # hex sha256
    model_files: str  # hex sha256
    vllm: str
    torch: str
    device: str
    dtype: str
    batch_invariant: bool
    max_model_len: int
    tool_parser: str
    tensor_parallel_size: int = 1
    vllm_args: tuple[tuple[str, str], ...] = ()  # (key, canonical JSON value), sorted by key
    inferd_outputs: int = OUTPUT_REVISION

    @property
    def text(self) -> str:
        """The canonical text: `system_fingerprint` of every output document, hashed into `id`."""
        parts = [
            SCHEME,
            f"weights=sha256:{self.weights}",
            f"model_files=sha256:{self.model_files}",
            f"vllm={self.vllm}",
            f"torch={self.torch}",
            f"inferd_outputs={self.inferd_outputs}",
            f"device={self.device}",
            f"dtype={self.dtype}",
            f"batch_invariant={int(self.batch_invariant)}",
            f"max_model_len={self.max_model_len}",
            f"tool_parser={self.tool_parser}",
            f"tensor_parallel_size={self.tensor_parallel_size}",
            *(f"vllm.{key}={value}" for key, value in self.vllm_args),
        ]
        return ";".join(parts)

    @property
    def id(self) -> bytes:
        """bytes32: keccak256 of the UTF-8 text (what `registerModel` stores)."""
        return bytes(keccak(text=self.text))

    def to_json(self) -> dict[str, str]:
        return {"text": self.text, "id": "0x" + self.id.hex()}


def check_engine_class(expected_id: bytes, actual: EngineClass) -> None:
    """Raise `EngineClassMismatch` unless `actual` is the class the model requires (a bytes32 id)."""
    if len(expected_id) != 32:
        raise ValueError(f"an engine class id is 32 bytes, not {len(expected_id)}")
    if expected_id != actual.id:
        raise EngineClassMismatch(expected_id, actual)


# --------------------------------------------------------------------------- the model's bytes


def _folder_hash(files: dict[str, str]) -> str:
    lines = "".join(f"{name}\t{files[name]}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def _file_hashes(folder: str) -> dict[str, str]:
    """name -> sha256 of the top-level files: from the verified fetch manifest (`model_fetch`,
    `hf_fetch`) where there is one, else read from the files themselves."""
    path = Path(folder)
    manifest = read_manifest(path)
    if manifest and isinstance(manifest.get("files"), dict):  # top level only, as vLLM loads it
        return {str(k): str(v) for k, v in manifest["files"].items() if "/" not in str(k)}
    return {
        p.name: sha256_file(p)
        for p in sorted(path.iterdir())
        if p.is_file() and p.name != MANIFEST and p.name.endswith(WEIGHT_SUFFIXES + MODEL_FILE_SUFFIXES)
    }


def local_model_dir(model_path: str) -> Path:
    """The folder holding the model's files: the path itself, or vLLM's Hugging Face cache copy."""
    path = Path(model_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_path, local_files_only=True))
    except Exception as exc:
        raise EngineClassError(
            f"the model {model_path!r} is not on this machine, so its engine class (which hashes its "
            "files) cannot be computed: download it first, or set engine.model_path to its folder"
        ) from exc


def weights_hash(model_path: str) -> str:
    """Hex sha256 over the weight files' sha256s (the fetch manifest's, or read here)."""
    files = {
        k: v for k, v in _file_hashes(str(local_model_dir(model_path))).items() if k.endswith(WEIGHT_SUFFIXES)
    }
    if not files:
        raise EngineClassError(f"{model_path} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return _folder_hash(files)


def model_files_hash(model_path: str) -> str:
    """Hex sha256 over the other output-shaping files (config, tokenizer, chat template, ...)."""
    hashes = _file_hashes(str(local_model_dir(model_path)))
    return _folder_hash({k: v for k, v in hashes.items() if k.endswith(MODEL_FILE_SUFFIXES)})


# --------------------------------------------------------------------------- the build and device


def engine_build() -> tuple[str, str]:
    """(vLLM version, torch version): the kernels that compute every float."""
    import torch
    import vllm

    return str(getattr(vllm, "__version__", "unknown")), str(torch.__version__)


def device_class() -> str:
    """`cpu-<arch>-<isa>` or `<vendor>-sm<major><minor>`, without initialising CUDA in this process."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        import torch

        isa = str(torch.backends.cpu.get_cpu_capability()).lower()
        return f"cpu-{platform.machine().lower()}-{isa}"
    cap = current_platform.get_device_capability()
    vendor = (
        "nvidia"
        if current_platform.is_cuda()
        else "amd"
        if current_platform.is_rocm()
        else str(current_platform.device_type)
    )
    if cap is None:
        return f"{vendor}-{current_platform.get_device_name().lower().replace(' ', '_')}"
    return f"{vendor}-sm{cap.major}{cap.minor}"


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def engine_class(
    settings: EngineSettings,
    model_path: str,
    *,
    on_cpu: bool | None = None,
    device: str | None = None,
    build: tuple[str, str] | None = None,
) -> EngineClass:
    """The class of an engine started with `settings` on `model_path` here (vLLM is not started).

    `on_cpu`, `device` and `build` default to this machine's; tests pass them. Raises
    `VllmArgsError` for bad `engine.vllm_args` and `EngineClassError` when the model's files are
    not here.
    """
    check_vllm_args(settings.vllm_args, allow_nondeterministic=settings.allow_nondeterministic)
    cpu = _on_cpu() if on_cpu is None else on_cpu
    dtype = effective_dtype(settings, cpu)
    invariant = batch_invariant_mode(settings, cpu)
    inferd = inferd_engine_kwargs(settings, model_path, on_cpu=cpu, dtype=dtype, batch_invariant=invariant)
    recorded = class_vllm_args(settings.vllm_args, inferd)
    vllm_version, torch_version = build or engine_build()
    return EngineClass(
        weights=weights_hash(model_path),
        model_files=model_files_hash(model_path),
        vllm=vllm_version,
        torch=torch_version,
        device=device or device_class(),
        dtype=dtype,
        batch_invariant=invariant,
        max_model_len=settings.max_model_len,
        tool_parser=settings.tool_parser,
        tensor_parallel_size=settings.tensor_parallel_size,
        vllm_args=tuple((k, _canonical(v)) for k, v in recorded.items()),
    )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


__all__ = [
    "OUTPUT_REVISION",
    "SCHEME",
    "EngineClass",
    "EngineClassError",
    "EngineClassMismatch",
    "check_engine_class",
    "device_class",
    "engine_build",
    "engine_class",
    "local_model_dir",
    "model_files_hash",
    "weights_hash",
]
