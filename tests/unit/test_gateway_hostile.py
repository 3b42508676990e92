"""Hostile request bodies against a real gateway process: each is a 4xx in OpenAI's error envelope,
and the process that answered them is still the same one, still healthy.

The gateway runs as `inferd gateway serve` in a subprocess (against anvil and a freshly deployed
hub), so a C-stack overflow in a JSON parser would show as a dead pid, not as a test exception, and
a memory blow-up as a killed one. Bodies go over raw sockets where the transport matters: a 5 MiB
body streamed with chunked encoding and no Content-Length (refused while it streams in), a
Content-Length far over the cap (refused before reading), and a client that stalls mid-body (408).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from node.devnet.processes import Anvil, free_port
from node.gate import HTTP_BODY_LIMITS
from node.gateway.auth import KeyStore
from node.miner.testing import deploy_dev_hub

pytestmark = pytest.mark.timeout(300)

MODEL = "SmolLM2-135M-Instruct"
CHAT_HEAD = b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "hi"}]'


def chat(extra: bytes) -> bytes:
    """A chat body with `extra` (raw JSON members) appended."""
    return CHAT_HEAD + b", " + extra + b"}"


MIB = 1 << 20
HOSTILE: dict[str, tuple[bytes, int]] = {
    "nested_arrays_200k": (b"[" * 200_000, 400),
    "nested_objects_200k": (b'{"a":' * 40_000, 400),
    "nested_in_a_field": (chat(b'"tools": ' + b"[" * 100_000), 400),
    "float_overflow": (chat(b'"temperature": 1e999999'), 400),
    "huge_int": (chat(b'"max_tokens": 1' + b"0" * 100_000), 400),
    "huge_int_seed": (chat(b'"seed": -' + b"9" * 5000), 400),
    "lone_surrogate": (CHAT_HEAD.replace(b'"hi"', b'"\\ud800"') + b"}", 400),
    "lone_low_surrogate_key": (chat(b'"\\udfff": 1'), 400),
    "duplicate_keys": (chat(b'"model": "other"'), 400),
    "giant_string": (CHAT_HEAD.replace(b'"hi"', b'"' + b"x" * (MIB + 4096) + b'"') + b"}", 400),
    "nan": (chat(b'"temperature": NaN'), 400),
    "infinity": (chat(b'"temperature": -Infinity'), 400),
    "invalid_utf8": (CHAT_HEAD.replace(b"hi", b"\xff\xfe\xc3\x28") + b"}", 400),
    "too_many_items": (chat(b'"stop": [' + b"0," * 300_000 + b"0]"), 400),
    "oversized_n": (chat(b'"n": 1000000'), 400),
    "oversized_max_tokens": (chat(b'"max_tokens": 1000000000000'), 400),
    "oversized_work": (chat(b'"n": 8, "max_tokens": 60000'), 400),
    "not_an_object": (b"[1, 2, 3]", 400),
    "empty": (b"", 400),
    "truncated": (CHAT_HEAD, 400),
    "over_the_byte_limit": (b'{"x": "' + b"y" * (HTTP_BODY_LIMITS.max_bytes + 10) + b'"}', 413),
}


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    key: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module")
async def gateway(
    anvil: Anvil, anvil_keys: list[str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("hostile-gateway")
    hub = await deploy_dev_hub(anvil.rpc_url, anvil_keys[0], [anvil_keys[4]], model_name=MODEL)
    await hub.owner.w3.provider.disconnect()
    key, _ = KeyStore(data_dir / "gateway" / "api_keys.json").add("hostile-tests")
    port = free_port()
    env = {
        **os.environ,
        "INFERD_DATA_DIR": str(data_dir),
        "INFERD_LOG_FORMAT": "json",
        "INFERD_CHAIN__RPC_URL": anvil.rpc_url,
        "INFERD_CHAIN__HUB_ADDRESS": str(hub.owner.address),
        "INFERD_CHAIN__PRIVATE_KEY": anvil_keys[8],
        "INFERD_GATEWAY__BODY_TIMEOUT_S": "1",
        "INFERD_GATEWAY__REQUEST_TIMEOUT_S": "2",
    }
    env.pop("INFERD_CONFIG", None)
    log_path = data_dir / "gateway.log"
    inferd = Path(sys.executable).with_name("inferd")
    argv = [str(inferd), "gateway", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-broker"]
    gw = Gateway(_spawn(argv, env, log_path), port, key, log_path)
    proc = gw.proc
    try:
        await _wait_healthy(gw)
        yield gw
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


async def _wait_healthy(gw: Gateway, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=gw.url) as http:
        while time.monotonic() < deadline:
            assert gw.alive(), gw.log_path.read_text()[-4000:]
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the gateway did not become healthy:\n" + gw.log_path.read_text()[-4000:])


def assert_envelope(status: int, body: dict[str, object], expected: int) -> None:
    assert status == expected, body
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) >= {"message", "type", "param", "code"}, err
    assert err["type"] == "invalid_request_error" and isinstance(err["message"], str), err
    assert len(err["message"]) < 1000, "an error message must not echo a hostile body back"


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_body_is_4xx_envelope_and_gateway_survives(gateway: Gateway, name: str) -> None:
    body, expected = HOSTILE[name]
    pid = gateway.proc.pid
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        reply = await http.post(
            "/v1/chat/completions",
            content=body,
            headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"},
        )
        assert_envelope(reply.status_code, reply.json(), expected)
        assert gateway.alive() and gateway.proc.pid == pid
        assert (await http.get("/healthz")).status_code == 200


# ------------------------------------------------------------------ transport-level attacks


async def _raw(port: int, head: bytes, chunks: Iterator[bytes], pause_s: float = 0.0) -> tuple[int, bytes]:
    """Send `head` then `chunks` on one socket while reading the reply; (status, body). Writes that
    fail because the server already answered and closed are expected and ignored."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        try:
            writer.write(head)
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                if pause_s:
                    await asyncio.sleep(pause_s)
        except (ConnectionError, OSError):
            pass

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(60):
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        sender.cancel()
        writer.close()
    return int(status_line.split()[1]), body


def _head(gateway: Gateway, extra: str) -> bytes:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {gateway.key}\r\n{extra}\r\n"
    ).encode()


async def test_5mib_chunked_body_without_length_is_413_while_streaming(gateway: Gateway) -> None:
    import json

    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        piece = b"[" + b"0," * 32_000 + b"0]"
        block = b"%x\r\n%s\r\n" % (len(piece), piece)
        while sent < 5 * MIB:
            sent += len(piece)
            yield block
        yield b"0\r\n\r\n"

    status, body = await _raw(gateway.port, _head(gateway, "Transfer-Encoding: chunked\r\n"), chunks())
    assert_envelope(status, json.loads(body), 413)
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert gateway.alive()


async def test_endless_chunked_body_is_refused_midstream(gateway: Gateway) -> None:
    """A body that never ends gets its 413 while it is still streaming in: the cap applies while
    reading, not after buffering (which would wait forever here)."""
    import json

    piece = b"x" * 65_536
    block = b"%x\r\n%s\r\n" % (len(piece), piece)

    def forever() -> Iterator[bytes]:
        while True:
            yield block

    head = _head(gateway, "Transfer-Encoding: chunked\r\n")
    status, body = await _raw(gateway.port, head, forever())
    assert_envelope(status, json.loads(body), 413)
    assert gateway.alive()


async def test_huge_content_length_is_413_before_reading(gateway: Gateway) -> None:
    import json

    status, body = await _raw(
        gateway.port, _head(gateway, f"Content-Length: {50 * 1024 * MIB}\r\n"), iter([b"{"])
    )
    assert_envelope(status, json.loads(body), 413)
    assert gateway.alive()


async def test_stalled_body_is_408(gateway: Gateway) -> None:
    import json

    start = time.monotonic()
    head = _head(gateway, "Content-Length: 1000\r\n")
    status, body = await _raw(gateway.port, head, iter([b'{"model": "x", ', b""]), pause_s=30)
    assert_envelope(status, json.loads(body), 408)
    assert time.monotonic() - start < 20
    assert gateway.alive()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/inferences/" + "9" * 50_000,
        "/v1/inferences/1?chain_id=" + "9" * 50_000,
        "/v1/models?chain_id=-" + "1" * 5000,
        "/v1/inferences/%F0%28%8C%28",
    ],
)
async def test_hostile_urls_are_4xx(gateway: Gateway, path: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers={"X-API-Key": gateway.key}) as http:
        reply = await http.get(path)
    assert 400 <= reply.status_code < 500 and gateway.alive()
    if reply.headers.get("content-type", "").startswith("application/json"):
        assert_envelope(reply.status_code, reply.json(), reply.status_code)


async def test_huge_header_is_refused_and_gateway_survives(gateway: Gateway) -> None:
    head = _head(gateway, "X-Junk: " + "j" * (8 * MIB) + "\r\nContent-Length: 2\r\n")
    try:
        status, _ = await _raw(gateway.port, head, iter([b"{}"]))
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        status = 400  # the server dropped the connection: refused, fine
    assert 400 <= status < 500
    assert gateway.alive()
    await _wait_healthy(gateway, 10)


async def test_unauthenticated_big_body_is_401_without_reading_it(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        reply = await http.post("/v1/chat/completions", content=b"[" * 200_000)
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "missing_api_key"


async def test_gateway_still_serves_and_logged_no_crash(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers={"X-API-Key": gateway.key}) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        models = await http.get("/v1/models")
        assert models.status_code == 200 and models.json()["data"][0]["id"] == MODEL
    assert gateway.alive()
    log = gateway.log_path.read_text()
    assert "unhandled_error" not in log and "Traceback" not in log, log[-4000:]
    assert gateway.key not in log
