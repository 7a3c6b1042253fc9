"""Redaction keeps broker, store and upstream passwords out of messages and reprs."""

from __future__ import annotations

import pytest

from subswitch.redact import redact_url, scrub
from subswitch.settings import Settings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("redis://:s3cret@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("rediss://user:p%40ss@[::1]:6380/1", "rediss://user:***@[::1]:6380/1"),
        ("redis://127.0.0.1:6379/15", "redis://127.0.0.1:6379/15"),
        ("amqp://guest@127.0.0.1//", "amqp://guest@127.0.0.1//"),
        ("redis+socket:///tmp/subswitch/redis.sock", "redis+socket:///tmp/subswitch/redis.sock"),
        ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, expected: str) -> None:
    # Given a broker URL / When redacted / Then only its password is masked
    assert redact_url(url) == expected


def test_scrub_removes_the_password_in_any_spelling_and_joins_lines() -> None:
    # Given a multi-line error text quoting a password raw and percent-decoded
    url = "amqp://user:p%40ss@host//"
    text = "login failed for p%40ss\n  (tried p@ss)"
    # When scrubbed / Then neither spelling remains and it is one line
    assert scrub(text, url) == "login failed for *** (tried ***)"


def test_the_repr_of_settings_shows_no_password() -> None:
    # Given settings whose every URL carries a password, and a static token
    settings = Settings(
        broker_url="amqp://svc:broker-pw@mq//",
        store_url="redis://:store-pw@redis:6379/1",
        upstream_url="https://api:upstream-pw@customers.example/v2",
        token_url="https://auth.example/token?secret=token-pw",
        upstream_token="static-token",
    )
    # When it is shown as repr and as str (what logs and `celery report` print)
    shown = repr(settings) + str(settings)
    # Then no secret appears, and the URLs are still recognisable
    for secret in ("broker-pw", "store-pw", "upstream-pw", "token-pw", "static-token"):
        assert secret not in shown
    assert "amqp://svc:***@mq//" in shown
    assert "redis://:***@redis:6379/1" in shown
