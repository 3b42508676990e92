"""Private prompts (issue 16) on a devnet, as a user runs it: `inferd devnet up`, the openai SDK with
`extra_body={"private": True}`, and a spy that reads every MQTT topic with the gateway's login.

A prompt carrying a unique marker (and, on the real engine, an answer that repeats it) must appear
in no file of the devnet (content store blocks, journals, logs, settings), in no MQTT payload, and
not at `/ipfs/{cid}?format=raw` for the input or output CID; the SDK still gets the answer in
plaintext, streamed or not, and `inferd verify` accepts the requester's saved response. The stored
input envelope opens for an assignee (to the document whose digest is on chain) and not for anyone
else.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from node.chain.hub import HubClient
from node.cli.verify import verify
from node.content.cid import cid_to_digest, digest_of
from node.content.envelope import NotARecipient, open_envelope, recipients_of
from tests.integration.devnet_cli import devnet, info_of

pytestmark = pytest.mark.timeout(900)


class MqttSpy:
    """Every message on `inferd/#` (what a gateway login may read), collected in a thread."""

    def __init__(self, broker_url: str, username: str, password: str) -> None:
        self.payloads: list[tuple[str, bytes]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._args = (broker_url, username, password)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import aiomqtt

        url, username, password = self._args
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        async with aiomqtt.Client(host, int(port), username=username, password=password) as client:
            await client.subscribe("inferd/#", qos=1)
            self._ready.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                self.payloads.append((str(message.topic), payload))
                if self._stop.is_set():
                    return

    def __enter__(self) -> MqttSpy:
        self._thread.start()
        assert self._ready.wait(20), "the spy could not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def _gateway_login(data_dir: Path) -> tuple[str, str]:
    config = next(p for p in data_dir.rglob("inferd.toml") if "gateway" in p.parent.name)
    stream = tomllib.loads(config.read_text())["stream"]
    return stream["username"], stream["password"]


def _miner_keys(data_dir: Path) -> list[str]:
    keys = []
    for config in sorted(data_dir.rglob("inferd.toml")):
        if "miner" in config.parent.name:
            keys.append(tomllib.loads(config.read_text())["chain"]["private_key"])
    return keys


def _files_with(data_dir: Path, marker: bytes) -> list[str]:
    return [str(p) for p in data_dir.rglob("*") if p.is_file() and marker in p.read_bytes()]


def _envelopes(data_dir: Path) -> Iterator[bytes]:
    for path in data_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 2_000_000:
            data = path.read_bytes()
            if data.startswith(b'{"alg":"ecies-secp256k1+aes-256-gcm"'):
                yield data


def _cli() -> typer.Typer:
    cli = typer.Typer()

    @cli.callback()
    def _root() -> None:
        """inferd (test shim)."""

    cli.command("verify")(verify)
    return cli


def _private_round(data_dir: Path, *, prompt: str, marker: str, max_tokens: int, repeats: bool) -> None:
    from openai import OpenAI

    info = info_of(data_dir)
    username, password = _gateway_login(data_dir)
    client = OpenAI(base_url=info["openai_base_url"], api_key=info["api_key"], max_retries=0, timeout=600)
    messages: Any = [{"role": "user", "content": prompt}]
    with MqttSpy(info["broker_url"], username, password) as spy:
        raw = client.chat.completions.with_raw_response.create(
            model=info["model"], messages=messages, max_tokens=max_tokens, temperature=0,
            extra_body={"private": True},
        )  # fmt: skip
        body = json.loads(raw.http_response.text)
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model=info["model"],
                messages=messages,
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
                extra_body={"private": True},
            )
            if chunk.choices
        )
        time.sleep(1.0)  # let the spy drain what the broker already relayed
    answer = body["choices"][0]["message"]["content"]
    assert answer and streamed  # the SDK reads the answer in plaintext, streamed or not
    if repeats:  # greedy: the same text although each private document has its own salt (and seed)
        assert marker in answer and streamed == answer, (answer, streamed)
    onchain = body["onchain_data"]
    assert onchain["output_salt"]  # private: the requester alone can rebuild the digested bytes
    request_topics = [t for t, _ in spy.payloads if f"/req/{onchain['request_id']}/" in t]
    assert any(t.endswith("/result") for t in request_topics), "the spy saw no result message"
    assert not [t for t, p in spy.payloads if marker.encode() in p]

    gateway = info["gateway_url"]
    for cid in (onchain["input_cid"], onchain["output_cid"]):
        reply = httpx.get(f"{gateway}/ipfs/{cid}?format=raw", timeout=10)
        assert reply.status_code == 404 or marker.encode() not in reply.content
    assert httpx.get(f"{gateway}/ipfs/{onchain['input_cid']}?format=raw", timeout=10).status_code == 404

    # the stored input envelope: an assignee opens it to the input on chain, an outsider cannot
    input_digest = cid_to_digest(onchain["input_cid"])
    miner_keys = _miner_keys(data_dir)
    sealed = [
        e for e in _envelopes(data_dir) if len(recipients_of(e)) == len(onchain["assignment_addresses"])
    ]
    from eth_account import Account

    opened = False
    for envelope in sealed:
        for key in miner_keys:
            address = Account.from_key(key).address
            if address.lower() not in recipients_of(envelope):
                continue
            if digest_of(open_envelope(envelope, key, address)) == input_digest:
                opened = True
                outsider = Account.from_key("0x" + secrets.token_hex(32))
                with pytest.raises(NotARecipient):
                    open_envelope(envelope, "0x" + bytes(outsider.key).hex(), outsider.address)
    assert opened, "no stored envelope of the input opened for an assignee"

    # inferd verify, for the requester, on its saved response
    saved = data_dir.parent / "private-response.json"
    saved.write_text(json.dumps(body))
    result = CliRunner().invoke(_cli(), ["verify", str(saved), "--rpc-url", info["rpc_url"]])
    assert result.exit_code == 0, result.output
    assert "VALID" in result.output and "INVALID" not in result.output
    request = asyncio.run(HubClient.connect(info["rpc_url"], info["hub"]).get_request(onchain["request_id"]))
    assert request.output_digest is not None

    leaks = _files_with(data_dir, marker.encode())
    assert not leaks, f"the marker is stored in {leaks}"


def test_private_request_on_fake_engine_devnet(devnet_dir: Path) -> None:
    out = devnet(
        "up", "--detach", "--fake-engine", "--miners", "2", "--data-dir", str(devnet_dir), timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    marker = f"marker-{secrets.token_hex(8)}"
    _private_round(devnet_dir, prompt=f"Remember {marker}.", marker=marker, max_tokens=6, repeats=False)
    assert devnet("down", "--data-dir", str(devnet_dir)).returncode == 0


@pytest.mark.engine
def test_private_request_on_real_engine_devnet(devnet_dir: Path) -> None:
    from node.engine.model_fetch import fetch_default_model

    fetch_default_model()
    out = devnet(
        "up", "--detach", "--miners", "1", "--data-dir", str(devnet_dir), "--timeout", "600", timeout=700
    )
    assert out.returncode == 0, out.stdout + out.stderr
    marker = f"ZQX{secrets.randbelow(10**6):06d}"
    prompt = f"Repeat exactly this word and nothing else: {marker}"
    _private_round(devnet_dir, prompt=prompt, marker=marker, max_tokens=16, repeats=True)
    assert devnet("down", "--data-dir", str(devnet_dir), timeout=180).returncode == 0
