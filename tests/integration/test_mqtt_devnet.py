"""The devnet's broker is locked down, and the miner and gateway still stream through it.

`inferd devnet up --fake-engine` as a user runs it: anonymous MQTT clients are refused, each miner
and the gateway log in with their own credentials (from their settings files, mode 0600), and a
`stream: true` request gets live deltas relayed from the miner through the broker.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from node.devnet.status import mqtt_ping
from tests.integration.devnet_cli import devnet


def _devnet(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return devnet(*args, timeout=timeout)


async def _anonymous_connect(host: str, port: int) -> None:
    async with aiomqtt.Client(host, port, timeout=5):
        pass


def test_devnet_broker_is_locked_down_and_streams(devnet_dir: Path) -> None:
    import json

    from openai import OpenAI

    out = _devnet("up", "--detach", "--fake-engine", "--data-dir", str(devnet_dir), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    info: dict[str, Any] = json.loads((devnet_dir / "devnet.json").read_text())
    host, _, port = info["broker_url"].removeprefix("mqtt://").partition(":")
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(_anonymous_connect(host, int(port)))
    assert mqtt_ping(host, int(port))  # `devnet status` still sees a live broker

    miner = info["miners"][0]
    miner_stream = tomllib.loads(Path(miner["config"]).read_text())["stream"]
    gateway_stream = tomllib.loads(Path(info["gateway"]["config"]).read_text())["stream"]
    assert miner_stream["username"] == miner["address"] and gateway_stream["username"] == "gateway-devnet"
    assert miner_stream["password"] != gateway_stream["password"]
    assert stat.S_IMODE(Path(miner["config"]).stat().st_mode) == 0o600

    client = OpenAI(base_url=info["openai_base_url"], api_key=info["api_key"], max_retries=0, timeout=120)
    chunks = list(
        client.chat.completions.create(
            model=info["model"], messages=[{"role": "user", "content": "hello there"}], stream=True
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1, "no live deltas came through the broker"

    logs = Path(info["logs"])
    broker_log = (logs / "mosquitto.log").read_text()
    assert f"u'{miner['address']}'" in broker_log and "u'gateway-devnet'" in broker_log
    for part in ("mosquitto.log", "gateway.log", "miner-0.log"):
        text = (logs / part).read_text()
        assert miner_stream["password"] not in text and gateway_stream["password"] not in text
    assert _devnet("down", "--data-dir", str(devnet_dir)).returncode == 0
