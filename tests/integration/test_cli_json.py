"""`--json` CLI output is the only thing on stdout, even while vLLM (and its subprocess) logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eth_utils.crypto import keccak

pytestmark = pytest.mark.engine

INFERD = str(Path(sys.executable).parent / "inferd")


def test_model_try_json_is_the_only_thing_on_stdout() -> None:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "INFO"}
    proc = subprocess.run(
        [INFERD, "model", "try", "Say hi", "--max-tokens", "4", "--seed", "1", "--json"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)  # the whole of stdout parses: no log line before or after
    assert doc["object"] == "chat.completion"
    assert doc["usage"]["completion_tokens"] == 4
    assert "INFO" in proc.stderr  # vLLM did log, and it went to stderr
    # `inferd model class` (vLLM not started) names the class whose text the engine's outputs carry
    proc = subprocess.run(
        [INFERD, "model", "class", "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    engine_class = json.loads(proc.stdout)
    assert engine_class["text"] == doc["system_fingerprint"]
    assert engine_class["id"] == "0x" + keccak(text=doc["system_fingerprint"]).hex()
