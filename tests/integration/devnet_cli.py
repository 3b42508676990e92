"""Driving `inferd devnet` as a user does, from the devnet tests: the CLI, its files, and cleanup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "node.cli.devnet"]


def devnet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERD_ENGINE__CPU_KVCACHE_GIB": "1", "VLLM_NO_USAGE_STATS": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def info_of(data_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((data_dir / "devnet.json").read_text())
    return data
