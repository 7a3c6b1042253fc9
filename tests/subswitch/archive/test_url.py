"""``SUBSWITCH_ARCHIVE_URL`` as people write it."""

from __future__ import annotations

from pathlib import Path

import pytest

from subswitch.archive.url import archive_url, normalise_archive_url, shown
from subswitch.errors import ConfigurationError
from subswitch.settings import Settings


@pytest.mark.parametrize(
    ("written", "driver"),
    [
        ("postgresql://app@db.internal/subswitch", "postgresql+psycopg"),
        ("postgres://app@db.internal/subswitch", "postgresql+psycopg"),
        ("postgresql+psycopg2://app@db.internal/subswitch", "postgresql+psycopg"),
        ("sqlite:////var/lib/subswitch/archive.sqlite3", "sqlite+pysqlite"),
    ],
)
def test_urls_are_made_psycopg_or_sqlite(written: str, driver: str) -> None:
    # When a URL as an operator writes it is read
    url = normalise_archive_url(written)
    # Then it names the driver subswitch ships
    assert url.drivername == driver


def test_libpq_options_in_the_query_reach_the_driver() -> None:
    # Given a search path and TLS in the query, as libpq takes them
    url = normalise_archive_url(
        "postgresql://app@db/subswitch?options=-csearch_path%3Dsubswitch&sslmode=require"
    )
    # Then they are kept as connection parameters
    assert url.query == {"options": "-csearch_path=subswitch", "sslmode": "require"}


def test_a_libpq_key_value_string_is_taken_too() -> None:
    url = normalise_archive_url("host=db port=6432 dbname=subswitch user=app sslmode=require")
    assert (url.drivername, url.host, url.port, url.database) == (
        "postgresql+psycopg", "db", 6432, "subswitch",
    )  # fmt: skip
    assert url.query == {"sslmode": "require"}


def test_unset_means_a_file_in_the_data_directory(tmp_path: Path) -> None:
    url = archive_url(Settings(data_dir=tmp_path))
    assert (url.drivername, url.database) == ("sqlite+pysqlite", str(tmp_path / "archive.sqlite3"))


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("mysql://app:hunter2@db/subswitch", "unknown database 'mysql'"),
        ("not a url at all hunter2", "not a database URL"),
        ("host=db password=hunter2", "nor a libpq string with dbname="),
        ("postgresql://app:hunter2@db", "name the database"),
        ("sqlite://", "in-memory"),
    ],
)
def test_a_bad_url_is_one_line_naming_the_variable_never_the_password(
    written: str, why: str
) -> None:
    # When a bad URL is read
    with pytest.raises(ConfigurationError) as caught:
        normalise_archive_url(written)
    # Then the message names the variable and the problem, and hides the password
    message = str(caught.value)
    assert message.startswith("SUBSWITCH_ARCHIVE_URL: ")
    assert why in message
    assert "hunter2" not in message and "\n" not in message


def test_a_shown_url_masks_the_password_and_the_driver() -> None:
    url = normalise_archive_url("postgresql://app:hunter2@db/subswitch")
    assert shown(url) == "postgresql://app:***@db/subswitch"


def test_settings_never_show_the_archive_password() -> None:
    settings = Settings(archive_url="postgresql://app:hunter2@db/subswitch")
    assert "hunter2" not in repr(settings)
    assert "postgresql://app:***@db/subswitch" in repr(settings)
