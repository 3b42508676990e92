"""Settings precedence (CLI > env > file > defaults) and secret masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli.main import app
from node.config import ConfigFileError, load_settings, masked_dump

SECRET_KEY = "0x" + "ab" * 32


def _write_toml(path: Path) -> Path:
    path.write_text(
        '[chain]\nrpc_url = "http://127.0.0.1:1111"\nconfirmations = 3\n'
        f'private_key = "{SECRET_KEY}"\n'
        "[engine]\nmax_model_len = 1024\n"
        "[gateway]\nport = 9001\n"
    )
    return path


def test_defaults_when_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERD_CHAIN__RPC_URL", raising=False)
    settings = load_settings()
    assert settings.chain.rpc_url == "http://127.0.0.1:8545"
    assert settings.chain.confirmations == 0
    assert settings.content.backend == "local"


def test_file_overrides_defaults(tmp_path: Path) -> None:
    settings = load_settings(_write_toml(tmp_path / "inferd.toml"))
    assert settings.chain.rpc_url == "http://127.0.0.1:1111"
    assert settings.chain.confirmations == 3
    assert settings.engine.max_model_len == 1024
    assert settings.gateway.port == 9001
    assert settings.gateway.host == "127.0.0.1"


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_CHAIN__RPC_URL", "http://127.0.0.1:2222")
    monkeypatch.setenv("INFERD_GATEWAY__PORT", "9002")
    settings = load_settings(_write_toml(tmp_path / "inferd.toml"))
    assert settings.chain.rpc_url == "http://127.0.0.1:2222"
    assert settings.gateway.port == 9002
    assert settings.chain.confirmations == 3


def test_cli_overrides_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_CHAIN__RPC_URL", "http://127.0.0.1:2222")
    settings = load_settings(
        _write_toml(tmp_path / "inferd.toml"), chain={"rpc_url": "http://127.0.0.1:3333"}
    )
    assert settings.chain.rpc_url == "http://127.0.0.1:3333"
    assert settings.chain.confirmations == 3


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_masked_dump_hides_secrets(tmp_path: Path) -> None:
    settings = load_settings(_write_toml(tmp_path / "inferd.toml"))
    assert settings.chain.private_key is not None
    assert settings.chain.private_key.get_secret_value() == SECRET_KEY
    dumped = json.dumps(masked_dump(settings))
    assert SECRET_KEY not in dumped
    assert "ab" * 32 not in dumped


def test_config_show_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_key = "0x" + "cd" * 32
    monkeypatch.setenv("INFERD_GATEWAY__PORT", "9100")
    monkeypatch.setenv("INFERD_STREAM__PASSWORD", "hunter2-broker-pass")
    monkeypatch.setenv("INFERD_CHAIN__PRIVATE_KEY", env_key)
    result = CliRunner().invoke(
        app,
        [
            "--config",
            str(_write_toml(tmp_path / "x.toml")),
            "config",
            "show",
            "--rpc-url",
            "http://127.0.0.1:4444",
        ],
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["chain"]["rpc_url"] == "http://127.0.0.1:4444"
    assert shown["gateway"]["port"] == 9100
    assert shown["chain"]["private_key"] == "**********"
    assert shown["stream"]["password"] == "**********"
    assert env_key not in result.output
    assert "hunter2-broker-pass" not in result.output


def test_version_flag() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("inferd ")
    assert result.output.split()[1][0].isdigit()
