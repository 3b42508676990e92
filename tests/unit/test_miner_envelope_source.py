"""The miner's `HttpEnvelopeSource` honours the environment as aiohttp's `trust_env` did, looked up
once per gateway URL: a proxy from `HTTP_PROXY` (unless `NO_PROXY` names the host) and `.netrc`
credentials for the gateway's host, on both the envelope fetch and the answer's delivery. A local
aiohttp server plays the gateway (and, in one test, the proxy in front of it)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from node.content.cid import cid_for_bytes
from node.miner.private import HttpEnvelopeSource, env_options

pytestmark = pytest.mark.timeout(60)

ENVELOPE = b'{"v":1}'
CID = cid_for_bytes(b"input")


class Gateway:
    """Serves one envelope and takes answers; records (method, target, Authorization) of each request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        self.headers: dict[str, str] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, str(request.rel_url), request.headers.get("Authorization")))
        if request.method == "GET":
            return web.Response(body=ENVELOPE, headers=self.headers)
        await request.read()
        return web.Response(status=202)


async def serve(gateway: Gateway) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")  # no entries yet
    monkeypatch.setenv("NETRC", str(netrc))
    return netrc


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    gw = Gateway()
    runner, url = await serve(gw)
    try:
        yield gw, url
    finally:
        await runner.cleanup()


async def exchange(url: str) -> bytes | None:
    source = HttpEnvelopeSource([url])
    try:
        got = await source.envelope(CID)
        await source.deliver(b'{"sealed":1}')
        return None if got is None else got.body
    finally:
        await source.close()


async def test_no_environment_goes_direct(clean_env: Path, gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    assert env_options(url) == {}
    assert await exchange(url) == ENVELOPE
    assert gw.seen == [("GET", f"/envelope/{CID}", None), ("POST", "/envelope/output", None)]


async def test_the_gateways_deltas_header_is_read(clean_env: Path, gateway: tuple[Gateway, str]) -> None:
    """`x-inferd-deltas: off` (any case) marks the envelope not live; no header: live."""
    gw, url = gateway
    source = HttpEnvelopeSource([url])
    try:
        got = await source.envelope(CID)
        assert got is not None and got.live and got.body == ENVELOPE
        gw.headers = {"X-Inferd-Deltas": "OFF"}
        got = await source.envelope(CID)
        assert got is not None and not got.live and got.body == ENVELOPE
    finally:
        await source.close()


@pytest.fixture
def netrc_login(clean_env: Path) -> None:
    clean_env.write_text("machine 127.0.0.1 login miner password s3cret\n")
    clean_env.chmod(0o600)


async def test_netrc_credentials_for_the_gateway_host(
    netrc_login: None, gateway: tuple[Gateway, str]
) -> None:
    gw, url = gateway
    assert await exchange(url) == ENVELOPE
    basic = "Basic " + base64.b64encode(b"miner:s3cret").decode()
    assert [auth for _, _, auth in gw.seen] == [basic, basic]
    assert "auth" not in env_options(url.replace("http://", "http://user:pw@"))  # the URL's own wins


async def test_proxy_from_the_environment_unless_no_proxy(
    clean_env: Path, gateway: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, url = gateway
    proxy = Gateway()
    runner, proxy_url = await serve(proxy)
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        assert await exchange(url) == ENVELOPE
        assert [(m, target) for m, target, _ in proxy.seen] == [
            ("GET", f"/envelope/{CID}"),
            ("POST", "/envelope/output"),
        ]
        assert gw.seen == []  # both went to the proxy
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert await exchange(url) == ENVELOPE
        assert len(proxy.seen) == 2 and len(gw.seen) == 2
    finally:
        await runner.cleanup()
