"""deploy/alerts.yml is valid, loaded by deploy/prometheus.yml, and every alert fires when it should.

`promtool` (installed by `make setup` into .venv/bin) checks the rules and the config and runs the
rule unit tests in deploy/alerts.test.yml. Without promtool these tests FAIL: the alerts are what
tells an operator that money is leaking, so they are never skipped. The metric names the rules and
their tests use must be ones the miner and gateway really export.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

from node.devnet.processes import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts.test.yml"
_NAME = re.compile(r"\b(inferd_[a-z_]*[a-z])\b")


def promtool() -> str:
    beside = Path(sys.executable).parent / "promtool"
    found = str(beside) if beside.is_file() else shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: run `make setup` (or `make promtool`, which unpacks it from "
            "Debian's prometheus package into .venv/bin)",
            pytrace=False,
        )
    return found


def run(*args: str) -> str:
    proc = subprocess.run(
        [promtool(), *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_rules_and_config_check() -> None:
    out = run("check", "rules", "alerts.yml")
    assert "SUCCESS" in out
    out = run("check", "config", "prometheus.yml")  # rule_files resolves to alerts.yml
    assert "1 rule files found" in out


def test_every_alert_fires_in_the_rule_unit_tests() -> None:
    out = run("test", "rules", "alerts.test.yml")
    assert "SUCCESS" in out
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    firing = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert alerts == firing, f"alerts without a firing test: {sorted(alerts - firing)}"
    wanted = {
        "InferdMinerWalletLow",
        "InferdMinerStakeBelowMinimum",
        "InferdMinerInactive",
        "InferdMinerSlashed",
        "InferdChainHeadStalled",
        "InferdMinerEngineDown",
        "InferdLoopRestarting",
        "InferdGatewayWalletLow",
    }
    assert wanted <= alerts


def _exported_names() -> set[str]:
    """Every series name the miner and gateway export, loops included."""
    from node.gateway.metrics import GatewayMetrics
    from node.miner.metrics import MinerMetrics
    from node.supervise import LoopCollector, Supervisor

    loops = Supervisor("test")
    loops._status("watcher")  # one loop, so that the collector's families have a sample
    miner = MinerMetrics(include_default=False)
    miner.track_loops(loops)
    gateway = GatewayMetrics()
    gateway.registry.register(LoopCollector(loops, "inferd_gateway"))
    names: set[str] = set()
    for registry in (miner.registry, gateway.registry):
        for family in registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
            else:
                names.add(family.name)
    return names


def test_rules_and_their_tests_use_exported_metric_names() -> None:
    exported = _exported_names()
    exprs = [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    used = {n for e in exprs for n in _NAME.findall(e)}
    series = [
        s["series"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for s in test["input_series"]
    ]
    fed = {s.split("{")[0] for s in series} - {"up"}
    assert used and fed
    assert used <= exported, f"alerts on metrics nobody exports: {sorted(used - exported)}"
    assert fed <= exported, f"alert tests feed metrics nobody exports: {sorted(fed - exported)}"
    for loop_metric in ("inferd_miner_loop_restarts_total", "inferd_gateway_loop_up"):
        assert loop_metric in exported
