"""Settings from secret files: one file per setting, named like its env var, in Docker's
`/run/secrets`, systemd's `$CREDENTIALS_DIRECTORY` or `$INFERD_SECRETS_DIR` (precedence: CLI > env >
secret files > TOML file > defaults), never printed by `config show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.config import ConfigFileError, load_settings, masked_dump

KEY = "0x" + "cd" * 32
REDIS_URL = "redis://:s3cret-pass@127.0.0.1:6390/2"


@pytest.fixture(autouse=True)
def _no_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INFERD_SECRETS_DIR", "CREDENTIALS_DIRECTORY", "INFERD_STREAM__PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def _secrets(folder: Path, **files: str) -> Path:
    folder.mkdir(mode=0o700)
    for name, value in files.items():
        (folder / name).write_text(value + "\n")  # a trailing newline, as `echo` and editors leave
    return folder


def test_secret_files_fill_secrets_and_merge_with_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _secrets(
        tmp_path / "secrets",
        inferd_chain__private_key=KEY,
        INFERD_CHAIN__KEYSTORE_PASSWORD="keystore-pw",  # any case, as env var names are
        inferd_stream__password="mqtt-pw",
        inferd_gateway__redis_url=REDIS_URL,
    )
    monkeypatch.setenv("INFERD_SECRETS_DIR", str(folder))
    toml = tmp_path / "inferd.toml"
    toml.write_text('[chain]\nrpc_url = "http://127.0.0.1:1111"\n[stream]\nusername = "gateway-a"\n')
    settings = load_settings(toml)
    assert settings.chain.private_key is not None and settings.chain.private_key.get_secret_value() == KEY
    assert settings.chain.keystore_password is not None
    assert settings.chain.keystore_password.get_secret_value() == "keystore-pw"
    assert settings.gateway.redis_url is not None
    assert settings.gateway.redis_url.get_secret_value() == REDIS_URL
    assert settings.stream.password is not None and settings.stream.password.get_secret_value() == "mqtt-pw"
    assert settings.chain.rpc_url == "http://127.0.0.1:1111" and settings.stream.username == "gateway-a"
    shown = json.dumps(masked_dump(settings))
    for secret in (KEY, "keystore-pw", "mqtt-pw", "s3cret-pass"):
        assert secret not in shown


def test_env_and_cli_win_over_secret_files_and_systemd_credentials_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = _secrets(tmp_path / "creds", inferd_stream__password="from-systemd", inferd_gateway__port="9100")
    explicit = _secrets(tmp_path / "explicit", inferd_gateway__port="9200")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_settings().stream.password.get_secret_value() == "from-systemd"  # type: ignore[union-attr]
    assert load_settings().gateway.port == 9100
    monkeypatch.setenv("INFERD_SECRETS_DIR", str(explicit))
    assert load_settings().gateway.port == 9200  # the named folder comes last and wins
    monkeypatch.setenv("INFERD_STREAM__PASSWORD", "from-env")
    assert load_settings().stream.password.get_secret_value() == "from-env"  # type: ignore[union-attr]
    assert load_settings(gateway={"port": 9300}).gateway.port == 9300


def test_a_named_secrets_dir_that_does_not_exist_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERD_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigFileError, match="INFERD_SECRETS_DIR"):
        load_settings()
