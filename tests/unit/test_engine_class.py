"""Engine classes and `engine.vllm_args`, without starting vLLM (its EngineArgs fields are read)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from eth_utils.crypto import keccak

from node.config import EngineSettings, load_settings
from node.engine.engine_args import VllmArgsError, check_vllm_args, engine_args
from node.engine.engine_class import (
    EngineClass,
    EngineClassError,
    EngineClassMismatch,
    check_engine_class,
    engine_class,
    model_files_hash,
    weights_hash,
)
from node.engine.model_fetch import MANIFEST

BUILD = ("0.32.0", "2.13.0+cpu")
DEVICE = "cpu-x86_64-avx2"
PINNED = EngineClass(
    weights="ab" * 32,
    model_files="cd" * 32,
    vllm="0.32.0",
    torch="2.13.0+cpu",
    device=DEVICE,
    dtype="float32",
    batch_invariant=True,
    max_model_len=2048,
    tool_parser="auto",
    vllm_args=(("kv_cache_dtype", '"fp8"'),),
)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "README.md").write_text("not an output-shaping file")
    return tmp_path


def cls(model_dir: Path, **settings: Any) -> EngineClass:
    return engine_class(EngineSettings(**settings), str(model_dir), on_cpu=True, device=DEVICE, build=BUILD)


def test_text_and_id_are_pinned() -> None:
    assert PINNED.text == (
        f"inferd-ec1;weights=sha256:{'ab' * 32};model_files=sha256:{'cd' * 32};vllm=0.32.0;"
        "torch=2.13.0+cpu;inferd_outputs=1;device=cpu-x86_64-avx2;dtype=float32;batch_invariant=1;"
        'max_model_len=2048;tool_parser=auto;tensor_parallel_size=1;vllm.kv_cache_dtype="fp8"'
    )
    assert PINNED.id == bytes(keccak(text=PINNED.text)) and len(PINNED.id) == 32
    assert PINNED.id.hex() == "aeb0dee6eaf5c3a31d65d6ca44e79eaa6d02e1dab87820c7565768265189eacd"
    assert PINNED.to_json() == {"text": PINNED.text, "id": "0x" + PINNED.id.hex()}


def test_same_settings_same_class_and_speed_only_settings_do_not_count(model_dir: Path) -> None:
    base = cls(model_dir)
    assert base == cls(model_dir)
    assert (
        base.weights
        == hashlib.sha256(
            f"model.safetensors\t{hashlib.sha256(b'weights').hexdigest()}\n".encode()
        ).hexdigest()
    )
    same = cls(
        model_dir,
        max_num_seqs=8,
        gpu_memory_utilization=0.5,
        cpu_kvcache_gib=4,
        seed=7,
        vllm_args={"max_num_batched_tokens": 8192, "distributed_executor_backend": "ray"},
    )
    assert same.id == base.id
    # spelling out what the engine gets anyway (inferd's own value, or vLLM's default) is no change
    assert cls(model_dir, vllm_args={"enforce_eager": True, "kv_cache_dtype": "auto"}).id == base.id


@pytest.mark.parametrize(
    "settings",
    [
        {"dtype": "bfloat16"},
        {"max_model_len": 4096},
        {"tool_parser": "llama3_json"},
        {"tensor_parallel_size": 2},
        {"vllm_args": {"kv_cache_dtype": "fp8"}},
        {"vllm_args": {"pipeline_parallel_size": 2}},
        {"vllm_args": {"quantization": "fp8"}},
        {"vllm_args": {"enable_prefix_caching": True}, "allow_nondeterministic": True},
    ],
)
def test_an_output_affecting_setting_changes_the_id(model_dir: Path, settings: dict[str, Any]) -> None:
    assert cls(model_dir, **settings).id != cls(model_dir).id


def test_changed_bytes_change_the_id(model_dir: Path) -> None:
    base = cls(model_dir)
    (model_dir / "model.safetensors").write_bytes(b"weightz")
    changed = cls(model_dir)
    assert changed.weights != base.weights and changed.model_files == base.model_files
    (model_dir / "tokenizer.json").write_text('{"x": 1}')  # a tokenizer or chat template shapes outputs too
    assert cls(model_dir).model_files != changed.model_files
    (model_dir / "README.md").write_text("docs only")
    assert (
        cls(model_dir).id
        == cls(model_dir).id
        == engine_class(EngineSettings(), str(model_dir), on_cpu=True, device=DEVICE, build=BUILD).id
    )
    assert (
        cls(model_dir).id
        != engine_class(
            EngineSettings(), str(model_dir), on_cpu=True, device="cpu-x86_64-avx512", build=BUILD
        ).id
    )
    assert (
        cls(model_dir).id
        != engine_class(
            EngineSettings(), str(model_dir), on_cpu=True, device=DEVICE, build=("0.33.0", BUILD[1])
        ).id
    )


def test_the_manifest_and_the_files_give_the_same_hashes(model_dir: Path) -> None:
    direct = (weights_hash(str(model_dir)), model_files_hash(str(model_dir)))
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model_dir.iterdir()}
    files["original/model.safetensors"] = "ef" * 32  # vLLM loads the top level only
    (model_dir / MANIFEST).write_text(json.dumps({"files": files}))
    assert (weights_hash(str(model_dir)), model_files_hash(str(model_dir))) == direct


def test_a_name_is_never_hashed(tmp_path: Path) -> None:
    with pytest.raises(EngineClassError, match="not on this machine"):
        weights_hash(str(tmp_path / "org--absent-model"))
    with pytest.raises(EngineClassError, match="no weight files"):
        weights_hash(str(tmp_path))


def test_nondeterministic_args_need_the_explicit_allowance(model_dir: Path) -> None:
    with pytest.raises(VllmArgsError, match=r"enable_prefix_caching=true .*allow_nondeterministic"):
        cls(model_dir, vllm_args={"enable_prefix_caching": True})
    cls(model_dir, vllm_args={"enable_chunked_prefill": False})  # the safe value is fine
    allowed = cls(model_dir, vllm_args={"enable_chunked_prefill": True}, allow_nondeterministic=True)
    assert "batch_invariant=0" in allowed.text and "vllm.enable_chunked_prefill=true" in allowed.text


def test_bad_keys_are_named() -> None:
    with pytest.raises(VllmArgsError, match=r"vllm_args\.max_num_batched_tokenz is not an argument of vLLM"):
        check_vllm_args({"max_num_batched_tokenz": 1}, allow_nondeterministic=False)
    with pytest.raises(VllmArgsError, match=r"vllm_args\.dtype is set by inferd itself: use engine\.dtype"):
        check_vllm_args({"dtype": "half"}, allow_nondeterministic=True)
    with pytest.raises(VllmArgsError, match=r"use engine\.tensor_parallel_size"):
        check_vllm_args({"tensor_parallel_size": 2}, allow_nondeterministic=False)


def test_vllm_args_reach_the_engine_arguments(tmp_path: Path) -> None:
    config = tmp_path / "inferd.toml"
    config.write_text('[engine.vllm_args]\nmax_num_batched_tokens = 4096\nkv_cache_dtype = "fp8"\n')
    settings = load_settings(config).engine
    assert settings.vllm_args == {"max_num_batched_tokens": 4096, "kv_cache_dtype": "fp8"}
    args = engine_args(settings, str(tmp_path), on_cpu=True, dtype="float32", batch_invariant=True)
    assert args.max_num_batched_tokens == 4096 and args.kv_cache_dtype == "fp8"
    assert args.enable_prefix_caching is False and args.structured_outputs_config.backend == "xgrammar"
    bad = EngineSettings(vllm_args={"nope": 1})
    with pytest.raises(VllmArgsError, match="nope"):
        engine_args(bad, str(tmp_path), on_cpu=True, dtype="float32", batch_invariant=True)


def test_check_engine_class() -> None:
    check_engine_class(PINNED.id, PINNED)
    other = bytes(32)
    with pytest.raises(EngineClassMismatch) as err:
        check_engine_class(other, PINNED)
    message = str(err.value)
    assert "0x" + PINNED.id.hex() in message and "0x" + other.hex() in message and PINNED.text in message
    assert err.value.expected_id == other and err.value.actual == PINNED
    with pytest.raises(ValueError, match="32 bytes"):
        check_engine_class(b"\x01", PINNED)
