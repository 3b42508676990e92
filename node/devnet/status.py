"""`inferd devnet status`: each part's health, checked live rather than trusted from files.

The chain is asked for its block and the hub's active miners, the broker gets a real MQTT
CONNECT, the miners and the gateway their `/healthz`; pids, and what the supervisor did to keep
each part up (restarts, the last exit, `running` / `restarting` / `gave-up`), come from run.json.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from node.devnet.chain import chain_health
from node.devnet.groups import pid_alive
from node.devnet.layout import Layout, read_json


@dataclass
class PartStatus:
    """One row of the status table."""

    part: str
    endpoint: str
    pid: int | None
    healthy: bool
    detail: str
    state: str | None = None  # the supervisor's view: running, restarting, gave-up (None: not tracked)
    restarts: int = 0
    last_exit: str | None = None  # e.g. "signal SIGKILL", "code 1"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mqtt_ping(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True if an MQTT 3.1.1 CONNECT gets a CONNACK (a real broker, not just a port): accepted, or
    refused for want of credentials (4, 5) by a locked-down broker, which is just as alive."""
    client_id = b"inferd-status"
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, keepalive 10
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    packet = b"\x10" + bytes([len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(packet)
            reply = sock.recv(4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return len(reply) == 4 and reply[0] == 0x20 and reply[3] in (0, 4, 5)


def _http(url: str) -> tuple[bool, str]:
    try:
        reply = httpx.get(url, timeout=3.0)
    except httpx.HTTPError as exc:
        return False, f"unreachable ({type(exc).__name__})"
    detail = f"HTTP {reply.status_code}"
    try:
        data = reply.json()
        if isinstance(data, dict):
            extras = [
                f"{k}={v}" for k, v in data.items() if k != "ok" and isinstance(v, str | int | float | bool)
            ]
            if extras:
                detail += " " + " ".join(extras[:4])
    except ValueError:
        pass
    return reply.status_code == 200, detail


def _pid(parts: dict[str, Any], name: str) -> int | None:
    part = parts.get(name)
    pid = part.get("pid") if isinstance(part, dict) else None
    return pid if isinstance(pid, int) else None


def _with_restarts(row: PartStatus, parts: dict[str, Any]) -> PartStatus:
    """Add the supervisor's restart record of `row.part` (from run.json) to the row."""
    part = parts.get(row.part)
    if not isinstance(part, dict):
        return row
    state, restarts, last_exit = part.get("state"), part.get("restarts"), part.get("last_exit")
    row.state = state if isinstance(state, str) else None
    row.restarts = restarts if isinstance(restarts, int) else 0
    row.last_exit = last_exit if isinstance(last_exit, str) else None
    if row.state is not None and row.state != "running":
        row.healthy = False
    return row


def collect(layout: Layout) -> tuple[list[PartStatus], dict[str, Any] | None]:
    """Every part's status, and devnet.json (None when this data dir never got ready)."""
    info = read_json(layout.devnet_json)
    run = read_json(layout.run_json) or {}
    parts: dict[str, Any] = run.get("parts") if isinstance(run.get("parts"), dict) else {}  # type: ignore[assignment]
    rows: list[PartStatus] = []
    sup_pid = run.get("pid") if isinstance(run.get("pid"), int) else None
    sup_alive = sup_pid is not None and pid_alive(sup_pid)
    rows.append(
        PartStatus(
            "supervisor",
            str(layout.root),
            sup_pid,
            sup_alive and run.get("phase") == "ready",
            f"phase {run.get('phase')}" if sup_alive else "not running",
        )
    )
    if info is None:
        return rows, None

    rpc, hub, model = str(info["rpc_url"]), str(info["hub"]), str(info["model"])
    try:
        chain = asyncio.run(chain_health(rpc, hub, model))
        rows.append(PartStatus("anvil", rpc, _pid(parts, "anvil"), True, f"block {chain['block']}"))
        expected = len(info.get("miners", []))
        active = len(chain["active_miners"])
        rows.append(
            PartStatus(
                "hub",
                hub,
                None,
                bool(chain["hub_code"]) and active >= int(info.get("redundancy", 1)),
                f"model {model}, {active}/{expected} miners active"
                if chain["hub_code"]
                else "no contract code",
            )
        )
    except Exception as exc:
        rows.append(
            PartStatus("anvil", rpc, _pid(parts, "anvil"), False, f"unreachable ({type(exc).__name__})")
        )

    broker = str(info["broker_url"])
    host, _, port = broker.removeprefix("mqtt://").partition(":")
    ok = mqtt_ping(host, int(port or 1883))
    rows.append(
        PartStatus("mosquitto", broker, _pid(parts, "mosquitto"), ok, "MQTT CONNACK" if ok else "no answer")
    )

    for miner in info.get("miners", []):
        ok, detail = _http(str(miner["health_url"]))
        rows.append(
            PartStatus(
                str(miner["name"]),
                str(miner["metrics_url"]),
                _pid(parts, str(miner["name"])),
                ok,
                f"{miner['address']} {detail}",
            )
        )
    gateway = str(info["gateway_url"])
    ok, detail = _http(f"{gateway}/healthz")
    rows.append(PartStatus("gateway", gateway, _pid(parts, "gateway"), ok, detail))
    return [_with_restarts(row, parts) for row in rows], info
