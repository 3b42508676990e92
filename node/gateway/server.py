"""Run the gateway app under uvicorn inside an existing event loop (tests, the devnet, benchmarks).

`inferd gateway serve` uses `uvicorn.run` directly; this is for callers that already own a loop.
Both cap open connections at `gateway.max_connections`:

    server = GatewayServer(create_app(settings), port=0)
    await server.start()          # lifespan ran: chain backend started, MQTT subscribing
    ... server.url ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from fastapi import FastAPI


class GatewayServer:
    """One uvicorn server as an asyncio task; `port=0` picks a free port."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        if port == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
        self.app = app
        self.host = host
        self.port = port
        state = getattr(app.state, "gateway", None)
        limit = state.settings.gateway.max_connections if state is not None else None
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                lifespan="on",
                limit_concurrency=limit,
                timeout_keep_alive=5,
            )
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, timeout_s: float = 30.0) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(), name="gateway-uvicorn")
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("the gateway server exited during startup (see its logs)")
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


__all__ = ["GatewayServer"]
