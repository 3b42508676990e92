"""`inferd devnet up` shows what it waits for on stderr: in place on a terminal, a line per 30 s elsewhere."""

from __future__ import annotations

import io
from pathlib import Path

from node.devnet.options import UpOptions
from node.devnet.progress import Progress, waiting_line
from node.devnet.service import Service
from node.devnet.up import Devnet


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_one_line_per_interval() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=False, every_s=30.0, clock=clock)
    for t in range(0, 95):  # called every second for 95 s
        clock.now = float(t)
        p.update(f"waiting {t} s")
    assert out.getvalue().splitlines() == ["waiting 0 s", "waiting 30 s", "waiting 60 s", "waiting 90 s"]
    p.clear()  # nothing to erase in a log
    assert "\r" not in out.getvalue()


def test_a_terminal_gets_one_line_rewritten_in_place() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=True, clock=clock)
    for t in (0.0, 0.5, 1.0, 2.0):
        clock.now = t
        p.update(f"waiting {t:.0f} s")
    assert out.getvalue() == "\r\x1b[Kwaiting 0 s\r\x1b[Kwaiting 1 s\r\x1b[Kwaiting 2 s"
    assert "\n" not in out.getvalue()
    p.clear()
    assert out.getvalue().endswith("\r\x1b[K")


def test_waiting_line_says_what_and_how_long() -> None:
    line = waiting_line(["miner-0", "gateway"], 42.4, loading_model=True)
    assert line.startswith("waiting    miner-0, gateway to answer /healthz  42 s")
    assert "load the model" in line
    assert "model" not in waiting_line(["gateway"], 3, loading_model=False)


class SlowService(Service):
    """Healthy at the third check, like a miner whose model finished loading."""

    checks: int = 0

    def exited(self) -> int | None:
        return None

    def healthy(self) -> bool:
        self.checks += 1
        return self.checks >= 3


def test_devnet_shows_progress_until_every_part_is_healthy(tmp_path: Path) -> None:
    said: list[str] = []
    dev = Devnet(UpOptions(data_dir=tmp_path / "devnet"), say=said.append)
    out = io.StringIO()
    dev.progress = Progress(out, tty=False, every_s=0.0)
    dev.services = [SlowService(name="miner-0", argv=["true"], log_path=tmp_path / "miner-0.log")]
    dev._await_healthy()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # checks 1 and 2 were not healthy: one line each, on stderr's stream
    assert all(line.startswith("waiting    miner-0 to answer /healthz") for line in lines)
    assert "load the model" in lines[0]
    assert len(said) == 1 and said[0].startswith("healthy    miner-0")
