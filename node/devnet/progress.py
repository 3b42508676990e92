"""A waiting line on stderr while `inferd devnet up` waits for its parts (the model load takes minutes).

On a terminal the line is rewritten in place about once a second (`waiting    miner-0, gateway
… 42 s`), so a person sees that something is happening and what it waits for. Anywhere else (the
detached supervisor's log, CI) a full line is written only every `every_s` seconds, so logs get a
heartbeat rather than a flood. stdout is left alone: it carries the banner and `say` lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """`update(text)` as often as you like; `clear()` before printing anything else."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        every_s: float = 30.0,
        tty_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            try:
                tty = self.stream.isatty()
            except (AttributeError, ValueError):
                tty = False
        self.tty = tty
        self.every_s = tty_every_s if tty else every_s
        self.clock = clock
        self._last: float | None = None
        self._shown = False

    def update(self, text: str) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        try:
            if self.tty:
                self.stream.write("\r\x1b[K" + text)
                self._shown = True
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not stop the devnet
            pass

    def clear(self) -> None:
        """Erase the in-place line (terminal only), so the next output starts on a clean line."""
        if self._shown:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._shown = False


def waiting_line(pending: list[str], elapsed_s: float, loading_model: bool) -> str:
    """`waiting    miner-0, gateway (/healthz) 42 s — the miners load the model first`."""
    text = f"waiting    {', '.join(pending)} to answer /healthz  {elapsed_s:.0f} s"
    if loading_model:
        text += " (the miners load the model first: minutes on a CPU)"
    return text


__all__ = ["Progress", "waiting_line"]
