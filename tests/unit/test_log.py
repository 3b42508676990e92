"""Log lines are JSON off a TTY, carry bound context, and never show a private key."""

from __future__ import annotations

import io
import json
import sys

import pytest
import typer
from typer.testing import CliRunner

from node.cli import main as cli_main
from node.log import bound, configure_logging, get_logger, register_secret

KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"


@pytest.fixture()
def sink() -> io.StringIO:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    return out


def _lines(sink: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in sink.getvalue().splitlines() if line.strip()]


def test_private_key_in_message_is_redacted(sink: io.StringIO) -> None:
    get_logger("t").info(f"loaded key {KEY} from env")
    (line,) = _lines(sink)
    assert KEY not in json.dumps(line)
    assert KEY[2:] not in json.dumps(line)
    assert "[REDACTED]" in str(line["event"])


def test_secret_named_fields_are_redacted(sink: io.StringIO) -> None:
    get_logger("t").info("start", private_key="whatever-format", api_key="sk-live-123", port=8000)
    (line,) = _lines(sink)
    assert line["private_key"] == "[REDACTED]"
    assert line["api_key"] == "[REDACTED]"
    assert line["port"] == 8000


def test_registered_secret_redacted_anywhere(sink: io.StringIO) -> None:
    register_secret("sk-inferd-very-secret-value")
    get_logger("t").warning("auth failed", detail={"header": "Bearer sk-inferd-very-secret-value"})
    (line,) = _lines(sink)
    assert "sk-inferd-very-secret-value" not in json.dumps(line)


def test_tx_hash_fields_survive(sink: io.StringIO) -> None:
    tx = "0x" + "12" * 32
    get_logger("t").info("submitted", tx_hash=tx)
    (line,) = _lines(sink)
    assert line["tx_hash"] == tx


def test_exception_text_is_redacted(sink: io.StringIO) -> None:
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        get_logger("t").exception("boom")
    (line,) = _lines(sink)
    assert KEY not in json.dumps(line)
    assert "ValueError" in str(line["exception"])


def test_bound_context_is_attached(sink: io.StringIO) -> None:
    with bound(job_id=42, request_id="r-1"):
        get_logger("t").info("working")
    get_logger("t").info("after")
    first, second = _lines(sink)
    assert first["job_id"] == 42 and first["request_id"] == "r-1"
    assert "job_id" not in second
    assert first["level"] == "info"


def test_a_command_logs_to_stderr_and_leaves_stdout_to_its_output() -> None:
    """`inferd ... --json` prints one document on stdout; a warning logged meanwhile (an RPC retry, say)
    must go to stderr (it once landed on stdout and broke `miner status --json`)."""
    probe = typer.Typer()

    @probe.command("emit")
    def emit() -> None:
        get_logger("t").warning("rpc_retry", what="eth_chainId")
        typer.echo(json.dumps({"ok": True}))

    app = typer.Typer()
    app.callback()(cli_main.root)  # the real root callback, which sets up logging for every command
    app.add_typer(probe, name="probe")
    try:
        result = CliRunner().invoke(app, ["probe", "emit"])
    finally:
        configure_logging("info", "json", stream=sys.__stderr__)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"ok": True}
    assert "rpc_retry" in result.stderr
