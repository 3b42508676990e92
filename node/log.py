"""Structured logging: JSON lines off a TTY, a pretty console on one, secrets always redacted.

Exception renderings never show local variables: structlog's console renderer (rich tracebacks)
shows them by default, and a frame of a node can hold a private key, an API key or a prompt. Console
output is redacted after rendering too, so a secret inside an exception's message is masked. A log
sink that fails (closed stream, broken pipe) drops the line; it never raises into the caller.

Bind request/job ids with `structlog.contextvars.bind_contextvars(job_id=...)` or `bound(...)`;
every line logged inside carries them.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

REDACTED = "[REDACTED]"

_HEX_KEY = re.compile(r"(?<![0-9a-fA-F])(0x)?[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_SECRET_FIELD = re.compile(r"(private_?key|secret|password|passphrase|mnemonic|api_?key|token)", re.I)
_HASH_FIELDS = frozenset(
    {
        "tx",
        "tx_hash",
        "block_hash",
        "hash",
        "digest",
        "input_digest",
        "output_digest",
        "model_id",
        "infer_tx",
        "submit_tx",
    }
)
_known_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Redact this exact value anywhere it appears in a log line (e.g. a loaded private key)."""
    if len(value) >= 8:
        _known_secrets.add(value)
        if value.startswith("0x"):
            _known_secrets.add(value[2:])


def redact_text(text: str) -> str:
    """Mask registered secrets and anything shaped like a 32-byte hex private key."""
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _HEX_KEY.sub(REDACTED, text)


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_FIELD.search(key) and value is not None:
        return REDACTED
    if isinstance(value, str):
        if key in _HASH_FIELDS:
            return value if value not in _known_secrets else REDACTED
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: no private key or API key ever reaches a log sink."""
    redacted: MutableMapping[str, Any] = {}
    for key, value in event_dict.items():
        if key == "exc_info" or key == "exception":
            redacted[key] = redact_text(value) if isinstance(value, str) else value
            continue
        redacted[key] = _redact_value(key, value)
    return dict(redacted)


def _redact_rendered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = redact_text(exc)
    return event_dict


class _SafeLogger:
    """structlog's PrintLogger, except that a sink that fails (closed, broken pipe, full disk) loses
    the line instead of raising into the caller: a log call must never take a request down."""

    def __init__(self, file: TextIO | None, lock: threading.Lock) -> None:
        self._file = file
        self._lock = lock

    def msg(self, message: str) -> None:
        try:
            with self._lock:
                out = self._file if self._file is not None else sys.stderr  # None: stderr as it is now
                out.write(message + "\n")
                out.flush()
        except (OSError, ValueError):
            pass

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = log = msg


class _SafeLoggerFactory:
    def __init__(self, file: TextIO | None) -> None:
        self._file = file
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> _SafeLogger:
        return _SafeLogger(self._file, self._lock)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stdlib logging to `sys.stderr` as it is at each record (a test or a CLI runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _exception_formatter() -> Any:
    """Tracebacks for the console, never with local variables."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return structlog.dev.plain_traceback
    return structlog.dev.RichTracebackFormatter(show_locals=False)


def _redacting(renderer: Any) -> Any:
    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        return redact_text(str(renderer(logger, name, event_dict)))

    return render


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Set up structlog (and route stdlib logging through it) once per process.

    Without `stream`, lines go to whatever `sys.stderr` is when each is written: never stdout, which
    a command's `--json` output owns (unconfigured, structlog would print there)."""
    use_console = fmt == "console" or (fmt == "auto" and (stream or sys.stderr).isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any
    if use_console:
        renderer = _redacting(structlog.dev.ConsoleRenderer(exception_formatter=_exception_formatter()))
    else:
        shared += [structlog.processors.format_exc_info, _redact_rendered]
        renderer = structlog.processors.JSONRenderer()
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_SafeLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


def get_logger(name: str | None = None, **context: Any) -> Any:
    """A bound structlog logger; `context` is attached to every line it writes."""
    return structlog.get_logger(name).bind(**context)


@contextmanager
def bound(**context: Any) -> Iterator[None]:
    """Bind ids (request_id, job_id, ...) to every log line inside the block."""
    with structlog.contextvars.bound_contextvars(**context):
        yield
