"""Console logs never print a traceback's local variables: a frame can hold a key or a prompt;
and a log sink that fails never raises into the code that logs.

structlog's ConsoleRenderer (rich tracebacks) shows locals by default; `node.log` turns that off.
The control renders the same exception with structlog's defaults and finds the secret, so the
test would notice if the console stopped rendering tracebacks at all.
"""

from __future__ import annotations

import io
import logging
import sys

import pytest
import structlog

from node.log import configure_logging, get_logger

SECRET = "prompt-text-" + "hunter2" * 4


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    yield None
    configure_logging("info", "json")


def _raise_with_secret_local() -> None:
    api_key = SECRET  # a local variable of the failing frame
    raise RuntimeError(f"boom ({len(api_key)} chars)")


def test_console_traceback_has_no_locals() -> None:
    out = io.StringIO()
    configure_logging("debug", "console", stream=out)
    try:
        _raise_with_secret_local()
    except RuntimeError:
        get_logger("t").exception("request_failed")
        logging.getLogger("uvicorn.error").exception("asgi_failed")  # stdlib path, same renderer
    text = out.getvalue()
    assert "request_failed" in text and "asgi_failed" in text
    assert "boom" in text and "_raise_with_secret_local" in text  # the traceback is there
    assert SECRET not in text and "hunter2" not in text


def test_control_default_console_renderer_shows_locals() -> None:
    try:
        _raise_with_secret_local()
    except RuntimeError:
        exc_info = sys.exc_info()
    renderer = structlog.dev.ConsoleRenderer(colors=False)
    text = str(renderer(None, "error", {"event": "x", "exc_info": exc_info}))
    assert "hunter2" in text


def test_a_failing_log_sink_never_raises_into_the_caller() -> None:
    sink = io.StringIO()
    configure_logging("debug", "json", stream=sink)
    sink.close()  # e.g. the pipe to a log collector broke
    get_logger("t").info("still_serving", n=1)
    get_logger("t").debug("still_serving")
    logging.getLogger("uvicorn.error").error("stdlib path")  # stdlib reports its own errors, no raise
