"""One real gateway process over the fake chain and miner of `node.gateway.testing`, for tests that
need several gateway processes at once (shared state in Redis) without anvil or vLLM.

Settings come from `INFERD_*` env and `INFERD_CONFIG` like `inferd gateway serve`; it listens on
127.0.0.1:`gateway.port`. Run it as `python -m tests.integration.fake_gateway`.
"""

from __future__ import annotations

import os
from pathlib import Path

import uvicorn

from node.config import load_settings
from node.content.local import LocalStore
from node.gateway.app import create_app
from node.gateway.testing import FakeBackend
from node.log import configure_logging


def main() -> None:
    config = os.environ.get("INFERD_CONFIG")
    settings = load_settings(Path(config) if config else None)
    configure_logging(settings.log_level, "json")
    app = create_app(settings, backend=FakeBackend(), store=LocalStore(settings.content_path()))
    uvicorn.run(app, host="127.0.0.1", port=settings.gateway.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
