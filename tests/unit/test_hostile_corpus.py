"""Every hostile sample (tests/unit/hostile_corpus.py) fed to every parser of untrusted bytes, in a child.

The child runs with `sys.setrecursionlimit(10**6)` and an 8 MiB C stack, as a long-running node with
a raised limit would: a parser that hands deep input to a recursive decoder dies there with SIGSEGV,
and that shows up here as a failed pair (naming it), not as a dead test runner. The control test
proves the harness can fail: plain `json.loads` — what the document, HTTP and MQTT parsers called
before `node.gate` — does die with SIGSEGV on the deep samples under exactly these conditions.

Each pair must end in its parser's typed refusal (`UntrustedJSON` with the expected reason,
`DocumentError`/`DocumentTooLarge`, `InvalidRequest`, None for MQTT) or, for the controls, be accepted.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from functools import cache

import pytest

from node.devnet.processes import REPO_ROOT
from tests.unit.hostile_corpus import LONG_INTS, MQTT_SAMPLES, SAMPLES, Sample

PARSERS = ("gate", "input", "output", "http", "mqtt_delta", "mqtt_result")
PAIRS = [f"{p}:{name}" for name in SAMPLES for p in PARSERS] + [
    f"{p}:{name}" for name in MQTT_SAMPLES for p in ("mqtt_delta", "mqtt_result")
]
STACK_BYTES = 8 << 20  # the usual default `ulimit -s`: fixed, so the control crashes the same everywhere


def _child_limits() -> None:
    resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES, resource.getrlimit(resource.RLIMIT_STACK)[1]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from the control's SIGSEGV


def run_child(pairs: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """One child running `pairs` in order (see the runner in hostile_corpus)."""
    return subprocess.run(
        [sys.executable, "-m", "tests.unit.hostile_corpus", *pairs],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        preexec_fn=_child_limits,
        timeout=600,  # a hang guard only: a stalled parser fails the test instead of blocking CI
        check=False,
    )


@cache
def outcomes() -> dict[str, str]:
    """Every pair's outcome line; a child that dies is restarted after the pair it died on."""
    results: dict[str, str] = {}
    remaining = list(PAIRS)
    while remaining:
        proc = run_child(remaining)
        started: str | None = None
        for line in proc.stdout.decode(errors="replace").splitlines():
            pair, _, out = line.partition("\t")
            if out == "start":
                started = pair
            else:
                results[pair] = out
                started = None
        if proc.returncode != 0:
            culprit = started or remaining[0]
            tail = proc.stderr.decode(errors="replace")[-400:]
            results[culprit] = f"died with exit code {proc.returncode} {tail}"
        left = [p for p in remaining if p not in results]
        if proc.returncode == 0 and left:
            results.update({p: "no outcome printed" for p in left})
            left = []
        remaining = left
    return results


def expected(parser: str, sample: Sample) -> tuple[str, str]:
    """(prefix the outcome must start with, fragment it must contain)."""
    if parser.startswith("mqtt"):
        return "none", ""
    if parser == "gate":
        return (f"refused UntrustedJSON {sample.gate} ", sample.says) if sample.gate else ("accepted", "")
    if parser == "http":  # documents are not request bodies: refused either way, by the body parser
        return "refused InvalidRequest", sample.says if sample.gate and sample.gate != "too_large" else ""
    if sample.gate == "too_large":
        return "refused DocumentTooLarge", "over the 1048576-byte limit"
    if sample.gate:
        return "refused DocumentError", sample.says
    if parser == "input" and sample.valid_input:
        return "accepted", ""
    return "refused DocumentError", ""


@pytest.mark.parametrize("pair", [p for p in PAIRS if p.split(":", 1)[1] in SAMPLES])
def test_hostile_sample_gets_a_typed_refusal(pair: str) -> None:
    parser, name = pair.split(":", 1)
    got = outcomes()[pair]
    prefix, fragment = expected(parser, SAMPLES[name])
    assert got.startswith(prefix) and fragment in got, (
        f"{pair}: expected {prefix!r} with {fragment!r}, got {got!r}"
    )


@pytest.mark.parametrize("pair", [p for p in PAIRS if p.split(":", 1)[1] in MQTT_SAMPLES])
def test_hostile_mqtt_message_is_dropped(pair: str) -> None:
    parser, name = pair.split(":", 1)
    want = "routed" if name == f"control_{parser.removeprefix('mqtt_')}" else "none"
    assert outcomes()[pair] == want, pair


@pytest.mark.parametrize(
    "name", ["deep_array_open", "deep_object_open", "deep_object_closed", "deep_in_tool_parameters"]
)
def test_control_plain_json_loads_segfaults_under_the_same_conditions(name: str) -> None:
    """The harness can fail: without the gate, the same child dies of SIGSEGV on these samples."""
    proc = run_child([f"plain_json:{name}"])
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout[-300:], proc.stderr[-300:])


@pytest.mark.parametrize("name", sorted(LONG_INTS))
def test_verdict_on_long_ints_does_not_depend_on_the_interpreter_int_limit(name: str) -> None:
    """Honest miners must refuse or accept the same bytes with the same message, or their output
    documents differ and one is slashed: the int-digit limit is per-process configuration
    (PYTHONINTMAXSTRDIGITS, -X int_max_str_digits, sys.set_int_max_str_digits), not part of the input."""
    seen: dict[str, list[str]] = {}
    for setting in ("", "0", "640", "100000"):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONINTMAXSTRDIGITS"}
        if setting:
            env["PYTHONINTMAXSTRDIGITS"] = setting
        proc = run_child([f"{parser}:{name}" for parser in ("gate", "input")], env)
        assert proc.returncode == 0, proc.stderr[-400:]
        lines = [line for line in proc.stdout.decode().splitlines() if not line.endswith("\tstart")]
        seen.setdefault("\n".join(lines), []).append(setting or "unset")
    assert len(seen) == 1, "verdicts differ by PYTHONINTMAXSTRDIGITS:\n" + "\n".join(
        f"{settings}: {out}" for out, settings in seen.items()
    )
