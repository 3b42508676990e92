"""`inferd content put|get|cid` through typer's runner, on the local store in a temp data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli.content import app

HELLO = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
runner = CliRunner()


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return {"INFERD_DATA_DIR": str(tmp_path / "data"), "INFERD_CONTENT__BACKEND": "local"}


def test_cid_put_get(tmp_path: Path, env: dict[str, str]) -> None:
    doc = tmp_path / "hello.txt"
    doc.write_bytes(b"hello")
    r = runner.invoke(app, ["cid", str(doc), "--digest"], env=env)
    assert r.exit_code == 0, r.output
    assert r.stdout.split() == [HELLO, "0x2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"]
    assert not (tmp_path / "data").exists()  # cid stores nothing

    r = runner.invoke(app, ["put", str(doc)], env=env)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == HELLO
    assert (tmp_path / "data" / "blocks" / HELLO[-3:-1] / HELLO).read_bytes() == b"hello"

    r = runner.invoke(app, ["get", HELLO], env=env)
    assert r.exit_code == 0 and r.stdout_bytes == b"hello"
    out = tmp_path / "out.bin"
    r = runner.invoke(app, ["get", HELLO, "-o", str(out)], env=env)
    assert r.exit_code == 0 and out.read_bytes() == b"hello"


def test_put_from_stdin(env: dict[str, str]) -> None:
    r = runner.invoke(app, ["put", "-"], input=b"hello", env=env)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == HELLO


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["get", "not-a-cid"], "not a valid CID"),
        (["get", "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"], "no block for CID"),
        (["get", "QmT5NvUtoM5nWFfrQdVrFtvGfKFmG7AHE8P34isapyhCxX"], "CIDv0"),
    ],
)
def test_errors_are_one_clear_line(env: dict[str, str], args: list[str], message: str) -> None:
    r = runner.invoke(app, args, env=env)
    assert r.exit_code == 1
    assert message in r.stderr
    assert "Traceback" not in r.output


def test_oversized_file_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * ((1 << 20) + 1))
    for command in ("put", "cid"):
        r = runner.invoke(app, [command, str(big)], env=env)
        assert r.exit_code == 1
        assert "1048576-byte limit" in r.stderr


def test_missing_file(tmp_path: Path, env: dict[str, str]) -> None:
    r = runner.invoke(app, ["put", str(tmp_path / "nope")], env=env)
    assert r.exit_code == 2
    assert "cannot read" in r.stderr


def test_tampered_block_is_not_printed(tmp_path: Path, env: dict[str, str]) -> None:
    r = runner.invoke(app, ["put", "-"], input=b"hello", env=env)
    (tmp_path / "data" / "blocks" / HELLO[-3:-1] / HELLO).write_bytes(b"HELLO")
    r = runner.invoke(app, ["get", HELLO], env=env)
    assert r.exit_code == 1
    assert b"HELLO" not in r.stdout_bytes
    assert "does not match its CID" in r.stderr
