"""``redis+sentinel://`` for the store and the broker: parsing, and the clients built
from it. No Sentinel runs here: these tests read URLs and build (unconnected) clients."""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from subswitch.broker import broker_connection, celery_config, check_broker_url, kombu_broker
from subswitch.errors import ConfigurationError
from subswitch.redis_client import redis_client
from subswitch.settings import Settings
from subswitch.urls import (
    SentinelUrl,
    parse_sentinel_url,
    resolve_broker_url,
    resolve_endpoints,
    resolve_store_url,
)

FLEET = "redis+sentinel://:s3cret@sentinel-a:26379,sentinel-b:26380,[fd00::7]/subswitch/3"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    # Given a URL with three Sentinels (one IPv6, without a port), a password and a db
    # When it is read
    parsed = parse_sentinel_url(FLEET, variable="SUBSWITCH_STORE_URL")
    # Then every part is there, and its repr hides the password
    assert parsed == SentinelUrl(
        sentinels=(("sentinel-a", 26379), ("sentinel-b", 26380), ("fd00::7", 26379)),
        master="subswitch",
        db=3,
        password="s3cret",
    )
    assert "s3cret" not in repr(parsed)


def test_the_database_and_the_password_may_be_left_out() -> None:
    # Given the shortest form
    # When it is read
    parsed = parse_sentinel_url("redis+sentinel://10.0.0.5/mymaster", variable="V")
    # Then it is db 0 on the default Sentinel port, without a password
    assert parsed == SentinelUrl(sentinels=(("10.0.0.5", 26379),), master="mymaster")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://:pw-9x@host:26379", "the master name is missing"),
        ("redis+sentinel://:pw-9x@host:26379/", "the master name is missing"),
        ("redis+sentinel://:pw-9x@host/m/x", "only a database number may follow"),
        ("redis+sentinel://:pw-9x@host/m/1/2", "only a database number may follow"),
        ("redis+sentinel://:pw-9x@host:port/m", "not a port number"),
        ("redis+sentinel://:pw-9x@host:99999/m", "not a port number"),
        ("redis+sentinel://:pw-9x@a,,b/m", "a Sentinel host is empty"),
        ("redis+sentinel://:pw-9x@host/m?db=2", "no query"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_in_one_line_without_its_password(
    url: str, problem: str
) -> None:
    # Given a malformed URL in SUBSWITCH_STORE_URL
    # When it is read
    with pytest.raises(ConfigurationError) as caught:
        parse_sentinel_url(url, variable="SUBSWITCH_STORE_URL")
    # Then one line names the variable, the problem and the expected form, never the password
    message = str(caught.value)
    assert message.startswith("SUBSWITCH_STORE_URL: malformed Sentinel URL: ")
    assert problem in message and "redis+sentinel://" in message
    assert "\n" not in message and "pw-9x" not in message


def test_the_store_client_asks_the_sentinels_for_the_master() -> None:
    # Given a Sentinel store URL
    # When the store client is built (nothing connects yet)
    client = redis_client(FLEET, timeout_s=2.5)
    # Then it is a client of the master the Sentinels name, with the URL's db and
    # password and the timeouts, and the Sentinels are asked with the same timeouts
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "subswitch"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (3, "s3cret", 2.5)
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380, 26379]
    assert all(s.connection_pool.connection_kwargs["socket_timeout"] == 2.5 for s in sentinels)
    assert all(s.connection_pool.connection_kwargs.get("password") is None for s in sentinels)


def test_a_plain_store_url_gives_a_plain_client() -> None:
    # Given a redis:// URL
    # When the store client is built
    client = redis_client("redis://:pw@127.0.0.1:6390/4", timeout_s=1.5)
    # Then it is an ordinary client of that server
    kwargs = client.connection_pool.connection_kwargs
    assert not isinstance(client.connection_pool, SentinelConnectionPool)
    assert (kwargs["port"], kwargs["db"], kwargs["socket_connect_timeout"]) == (6390, 4, 1.5)
    assert isinstance(client, redis.Redis)


def test_a_malformed_store_url_fails_when_the_client_is_built() -> None:
    # Given a Sentinel URL without a master name
    # When the store client is built
    # Then the one-line configuration error names the store's variable
    with pytest.raises(ConfigurationError, match=r"^SUBSWITCH_STORE_URL: malformed"):
        redis_client("redis+sentinel://host:26379", timeout_s=1)


@pytest.mark.parametrize(
    "url", ["rediss+sentinel://:pw-9x@h/m", "http://:pw-9x@h/0", "sentinel://:pw-9x@h/0"]
)
def test_a_store_url_of_another_scheme_is_refused_in_one_line(url: str) -> None:
    # Given a store URL whose scheme no store client knows
    # When the store client is built
    with pytest.raises(ConfigurationError) as caught:
        redis_client(url, timeout_s=1)
    # Then one line names the variable and the schemes to use, never the password
    message = str(caught.value)
    assert message.startswith("SUBSWITCH_STORE_URL: unknown store scheme")
    assert "redis+sentinel://" in message and "pw-9x" not in message


def test_the_broker_url_becomes_kombus_sentinel_urls_and_the_master_name() -> None:
    # Given a Sentinel broker URL
    # When kombu's form of it is made, and Celery's settings
    broker = kombu_broker(FLEET)
    config = celery_config(
        broker_url=FLEET, visibility_timeout=300, queue_type="quorum", delivery_limit=5
    )
    # Then kombu gets one sentinel:// URL per Sentinel and the master's name, and the
    # repr shows no password
    assert broker.url == (
        "sentinel://:s3cret@sentinel-a:26379/3;sentinel://:s3cret@sentinel-b:26380/3;"
        "sentinel://:s3cret@[fd00::7]:26379/3"
    )
    assert broker.transport_options == {"master_name": "subswitch"}
    assert "s3cret" not in repr(broker)
    assert config["broker_url"] == broker.url
    assert config["broker_transport_options"]["master_name"] == "subswitch"
    assert config["broker_transport_options"]["visibility_timeout"] == 300


def test_a_broker_connection_through_sentinel_uses_kombus_sentinel_transport() -> None:
    # Given a Sentinel broker URL
    # When a broker connection is made (not connected)
    connection = broker_connection("redis+sentinel://h1,h2:26380/mymaster", connect_timeout=1)
    # Then kombu's Sentinel transport would ask both Sentinels for "mymaster"
    assert connection.transport_cls == "sentinel"
    assert connection.alt == ["sentinel://h1:26379/0", "sentinel://h2:26380/0"]
    assert connection.transport_options == {"master_name": "mymaster"}


def test_a_malformed_broker_url_is_refused_naming_the_broker_variable() -> None:
    # Given a Sentinel broker URL with a bad port
    # When it is checked
    # Then the one-line error names SUBSWITCH_BROKER_URL
    with pytest.raises(ConfigurationError, match=r"^SUBSWITCH_BROKER_URL: malformed"):
        check_broker_url("redis+sentinel://h1:x/mymaster")


def test_the_resolver_takes_sentinel_urls_for_both_and_refuses_a_malformed_one() -> None:
    # Given settings with Sentinel URLs for the broker and the store
    good = Settings(broker_url=FLEET, store_url=FLEET)
    bad_store = Settings(broker_url=FLEET, store_url="redis+sentinel://:pw-9x@s1:26379")
    bad_broker = Settings(broker_url="redis+sentinel://s1:0/m", store_url=FLEET)
    # When they are resolved
    endpoints = resolve_endpoints(good)
    # Then good ones are taken as they are, and a malformed one is refused at once,
    # naming its variable
    assert (endpoints.broker_url, endpoints.store_url) == (FLEET, FLEET)
    assert resolve_broker_url(good) == resolve_store_url(good) == FLEET
    with pytest.raises(ConfigurationError, match=r"^SUBSWITCH_STORE_URL: malformed"):
        resolve_endpoints(bad_store)
    with pytest.raises(ConfigurationError, match=r"^SUBSWITCH_STORE_URL: malformed"):
        resolve_store_url(bad_store)
    with pytest.raises(ConfigurationError, match=r"^SUBSWITCH_BROKER_URL: malformed"):
        resolve_broker_url(bad_broker)
