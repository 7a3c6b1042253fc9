"""At worker start the store's Redis is checked for what would make it forget or evict."""

from __future__ import annotations

import logging

import fakeredis
import pytest
import redis

from worker.durability import check_durability, durability_warnings, read_config


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"appendonly": "yes", "maxmemory-policy": "noeviction"}, []),
        ({"appendonly": "no", "maxmemory-policy": "noeviction"}, ["appendonly no"]),
        ({"appendonly": "yes", "maxmemory-policy": "volatile-lru"}, ["volatile-lru"]),
        ({"appendonly": "yes", "maxmemory-policy": "allkeys-lfu"}, ["allkeys-lfu"]),
        (
            {"appendonly": "no", "maxmemory-policy": "volatile-ttl"},
            ["appendonly no", "volatile-ttl"],
        ),
    ],
)
def test_each_risk_gets_one_warning_naming_the_setting(
    config: dict[str, str], expected: list[str]
) -> None:
    # Given a server's appendonly and maxmemory-policy / When judged
    warnings = durability_warnings(config)
    # Then one line per risk, naming the setting and the fix
    assert len(warnings) == len(expected)
    for warning, setting in zip(warnings, expected, strict=True):
        assert setting in warning
        assert "\n" not in warning
        assert "appendonly yes" in warning or "maxmemory-policy noeviction" in warning


def test_a_redis_that_refuses_config_is_reported_as_unchecked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a Redis that refuses CONFIG (fakeredis does not implement it, like many
    # managed services that forbid it)
    client = fakeredis.FakeRedis()
    # When checked
    with caplog.at_level(logging.INFO, logger="worker.durability"):
        warnings = check_durability(client)
    # Then one info line says it could not be checked, and nothing is warned
    assert warnings == []
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "could not be checked" in caplog.records[0].getMessage()


def test_the_real_redis_is_judged_by_its_own_configuration(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the test Redis (started here with appendonly no, like CI's)
    client = redis.Redis.from_url(redis_url)
    config = read_config(client)
    # When checked
    with caplog.at_level(logging.INFO, logger="worker.durability"):
        warnings = check_durability(client)
    client.close()
    # Then the warnings logged are exactly those its configuration calls for
    assert set(config) == {"appendonly", "maxmemory-policy"}
    assert warnings == durability_warnings(config)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == warnings
    if config["appendonly"] == "no":
        assert any("appendonly no" in warning for warning in warnings)
