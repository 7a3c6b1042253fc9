"""One resolver for the broker and store URLs: both or neither (contract §2.7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from subswitch.embedded import stop_embedded_redis
from subswitch.settings import Settings
from subswitch.urls import MissingUrlError, resolve_broker_url, resolve_endpoints

BROKER = "amqp://svc:pw@mq//"
STORE = "redis://:pw@redis:6379/1"


def test_both_urls_are_used_as_given() -> None:
    # Given a fleet's settings / When resolved
    endpoints = resolve_endpoints(Settings(broker_url=BROKER, store_url=STORE))
    # Then both are used, and the repr masks their passwords
    assert (endpoints.broker_url, endpoints.store_url) == (BROKER, STORE)
    assert "pw" not in repr(endpoints)


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"broker_url": BROKER}, "SUBSWITCH_STORE_URL"),
        ({"store_url": STORE}, "SUBSWITCH_BROKER_URL"),
    ],
)
def test_one_url_without_the_other_is_refused_naming_the_missing_variable(
    given: dict[str, str], missing: str, tmp_path: Path
) -> None:
    # Given only one of the two URLs
    settings = Settings(data_dir=tmp_path, **given)
    # When a worker (or a command reading the store) resolves them
    with pytest.raises(MissingUrlError) as caught:
        resolve_endpoints(settings)
    # Then the one line names the missing variable, and no embedded store was started
    assert str(caught.value).startswith(f"{missing} is not set")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "redis.sock").exists()


def test_a_producer_needs_the_broker_url_alone() -> None:
    # Given only a broker URL / When a producer resolves it / Then it is used
    assert resolve_broker_url(Settings(broker_url=BROKER)) == BROKER


def test_a_producer_with_a_store_url_but_no_broker_url_is_refused(tmp_path: Path) -> None:
    # Given a fleet's store but no broker: enqueueing into a private broker reaches no one
    settings = Settings(store_url=STORE, data_dir=tmp_path)
    # When a producer resolves its broker / Then it is refused, naming the variable
    with pytest.raises(MissingUrlError, match=r"^SUBSWITCH_BROKER_URL is not set"):
        resolve_broker_url(settings)


def test_neither_url_means_the_embedded_redis_for_both(tmp_path: Path) -> None:
    # Given no URL at all
    settings = Settings(data_dir=tmp_path / "d")
    try:
        # When resolved
        endpoints = resolve_endpoints(settings)
        # Then both lead to the one embedded Redis, which this call started
        assert endpoints.started_embedded
        assert endpoints.broker_url.endswith("/redis.sock")
        assert endpoints.store_url.endswith("/redis.sock")
        assert resolve_broker_url(settings) == endpoints.broker_url
    finally:
        stop_embedded_redis(settings.data_dir)
