"""`node.chain.keepalive.request`: the direct JSON-RPC path sends what web3's provider would send
(body, headers), keeps web3's retries of read-only methods only, and steps aside (to the provider's
`make_request`) wherever `keep_alive` did not set up the session. A local aiohttp server stands in
for the node."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponseError, web
from web3 import AsyncHTTPProvider, AsyncWeb3

from node.chain import keepalive
from node.chain.abicall import rpc

pytestmark = pytest.mark.timeout(60)


class Node:
    """Answers every JSON-RPC POST with `result` = the method name; `fail` first answers 500."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], str]] = []
        self.fail = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.seen.append((body, request.headers.get("User-Agent", "")))
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=500)
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": body["method"]})


@pytest.fixture
async def node() -> AsyncIterator[tuple[Node, str]]:
    fake = Node()
    app = web.Application()
    app.router.add_post("/", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake, f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


def no_make_request(w3: AsyncWeb3[Any]) -> None:
    async def refuse(method: Any, params: Any) -> Any:
        raise AssertionError(f"{method} went through make_request")

    w3.provider.make_request = refuse  # type: ignore[method-assign]


async def test_direct_path_sends_what_web3_sends(node: tuple[Node, str]) -> None:
    fake, url = node
    plain = AsyncWeb3(AsyncHTTPProvider(url))
    via_web3 = await plain.provider.make_request("eth_getBlockByNumber", ["0x1", False])  # type: ignore[arg-type]
    w3 = AsyncWeb3(AsyncHTTPProvider(url))
    assert await keepalive.keep_alive(w3)
    no_make_request(w3)
    assert await rpc(w3, "eth_getBlockByNumber", ["0x1", False]) == via_web3["result"]
    (web3_body, web3_agent), (body, agent) = fake.seen
    assert {k: v for k, v in body.items() if k != "id"} == {k: v for k, v in web3_body.items() if k != "id"}
    assert agent == web3_agent and agent.startswith("web3.py/")
    await keepalive.close(w3)
    await plain.provider.disconnect()  # type: ignore[attr-defined]


async def test_retries_read_only_methods_only(node: tuple[Node, str]) -> None:
    fake, url = node
    w3 = AsyncWeb3(AsyncHTTPProvider(url))
    assert await keepalive.keep_alive(w3)
    no_make_request(w3)
    fake.fail = 2
    assert await rpc(w3, "eth_blockNumber", []) == "eth_blockNumber"  # two 500s, then the answer
    assert len(fake.seen) == 3
    fake.fail = 1
    with pytest.raises(ClientResponseError):
        await rpc(w3, "eth_sendTransaction", [{}])  # not on web3's retry list: one attempt, as web3
    assert len(fake.seen) == 4
    await keepalive.close(w3)


async def test_other_providers_and_closed_sessions_use_make_request(node: tuple[Node, str]) -> None:
    fake, url = node
    plain = AsyncWeb3(AsyncHTTPProvider(url))  # no keep_alive: web3's own path
    assert await rpc(plain, "eth_chainId", []) == "eth_chainId"
    kept = AsyncWeb3(AsyncHTTPProvider(url))
    assert await keepalive.keep_alive(kept)
    await keepalive.close(kept)  # the session is closed: back to web3's path, which opens its own
    assert await rpc(kept, "eth_chainId", []) == "eth_chainId"
    assert len(fake.seen) == 2
    await plain.provider.disconnect()  # type: ignore[attr-defined]
    await kept.provider.disconnect()  # type: ignore[attr-defined]
