"""Redaction keeps broker passwords out of messages and reprs."""

from __future__ import annotations

import pytest

from producers.errors import redact_url, scrub


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("redis://:s3cret@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("rediss://user:p%40ss@[::1]:6380/1", "rediss://user:***@[::1]:6380/1"),
        ("redis://127.0.0.1:6379/15", "redis://127.0.0.1:6379/15"),
        ("amqp://guest@127.0.0.1//", "amqp://guest@127.0.0.1//"),
        ("redis+socket:///tmp/subswitch/redis.sock", "redis+socket:///tmp/subswitch/redis.sock"),
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
