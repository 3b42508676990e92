"""The InferenceHub ABI and bytecode, exported from contracts/ by `make contracts` (committed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

ARTIFACT_NAME = "InferenceHub.json"


@dataclass(frozen=True)
class Artifact:
    """A compiled contract: ABI, creation bytecode and runtime bytecode (0x-prefixed hex)."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str


@cache
def hub_artifact() -> Artifact:
    """Load `node/chain/artifacts/InferenceHub.json` from the installed package."""
    text = resources.files("node.chain").joinpath("artifacts", ARTIFACT_NAME).read_text("utf-8")
    raw = json.loads(text)
    return Artifact(
        name=str(raw.get("contractName", "InferenceHub")),
        abi=list(raw["abi"]),
        bytecode=str(raw["bytecode"]),
        deployed_bytecode=str(raw["deployedBytecode"]),
    )


def hub_abi() -> list[dict[str, Any]]:
    """The InferenceHub ABI."""
    return hub_artifact().abi
