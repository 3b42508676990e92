"""Where a devnet keeps its state, and the two files other commands read: devnet.json and run.json.

Everything lives under one data dir so `--fresh` is one `rm -rf` and a stopped devnet resumes
where it was (anvil state, content store, miner journals, API keys).

- `devnet.json` (0600): what scripts and tests need to use a running devnet — endpoints, the
  devnet API key, the hub address. Written once everything is healthy.
- `run.json`: the supervisor's pid, its phase (starting / ready / stopping / failed) and every
  child's pid and process group, so `down` and `status` work from another shell and `down` can
  clean up even after the supervisor was killed.
- each part's `inferd.toml` (0600, `dump_toml`): the settings the devnet gives a miner or the gateway.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHASE_STARTING, PHASE_READY, PHASE_STOPPING, PHASE_FAILED = "starting", "ready", "stopping", "failed"
"""The supervisor's phases, as run.json says them."""

DEFAULT_DATA_DIR = Path.home() / ".inferd" / "devnet"
"""Under the home dir, so `inferd devnet status|down` find it from any working directory."""


@dataclass(frozen=True)
class Layout:
    """Paths of one devnet data dir."""

    root: Path

    @property
    def devnet_json(self) -> Path:
        return self.root / "devnet.json"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def anvil_state(self) -> Path:
        return self.root / "anvil-state.json"

    @property
    def blocks(self) -> Path:
        """The content store shared by gateway and miners (one machine, atomic writes)."""
        return self.root / "blocks"

    @property
    def gateway_dir(self) -> Path:
        return self.root / "gateway"

    @property
    def supervisor_log(self) -> Path:
        return self.logs / "devnet.log"

    def miner_dir(self, index: int) -> Path:
        return self.root / f"miner-{index}"

    def config_path(self, part_dir: Path) -> Path:
        """The TOML settings file of a miner or the gateway (`inferd --config` it to inspect)."""
        return part_dir / "inferd.toml"

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def write_private(path: Path, text: str) -> None:
    """Write a file readable only by its owner, atomically (it may hold keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when missing or unreadable (a half-written file)."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """TOML for a settings dict: top-level keys, then one table per component."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and v is not None]
    for table, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
