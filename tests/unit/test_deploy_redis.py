"""deploy/: the `redis` compose profile (shared state for several gateways) is valid, keeps its
password out of the compose file, persists, and is not published."""

from __future__ import annotations

from tests.unit.test_deploy import COMPOSE_FILE, _compose_config


def test_redis_profile_is_valid_private_and_password_protected() -> None:
    assert "redis" not in _compose_config()["services"]  # type: ignore[operator]
    services = _compose_config("redis")["services"]
    assert isinstance(services, dict)
    redis = services["redis"]
    assert "ports" not in redis  # only the compose network reaches it
    command = " ".join(redis["command"])
    assert "--requirepass" in command and "/run/secrets/redis_password" in command
    assert "--appendonly yes" in command  # a Redis restart keeps the day's spend
    assert [s["source"] for s in redis["secrets"]] == ["redis_password"]
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    line = next(x for x in COMPOSE_FILE.read_text().splitlines() if "--requirepass" in x)
    assert line.endswith('--requirepass "$$(cat /run/secrets/redis_password)"')  # no literal password
