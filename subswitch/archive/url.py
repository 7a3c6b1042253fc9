"""``SUBSWITCH_ARCHIVE_URL`` as people write it, made into an engine URL on psycopg 3.

Accepted: ``postgresql://user@host/db``, ``postgres://...``, any ``postgresql+<driver>``
spelling, a libpq key/value string (``host=db dbname=subswitch user=app``), libpq
parameters in the query (``?options=-csearch_path%3Dsubswitch``,
``?sslmode=require``, ``?host=/var/run/postgresql``), and ``sqlite:///path`` (a file;
``sqlite:////abs/path`` or ``sqlite:///relative/path``). Unset, the archive is
``archive.sqlite3`` in the data directory. Errors name the variable and show the URL
with its password masked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from subswitch.errors import ConfigurationError
from subswitch.redact import redact_url
from subswitch.settings import Settings

ARCHIVE_VARIABLE: Final = "SUBSWITCH_ARCHIVE_URL"
#: The file of the default archive, in ``Settings.data_dir``.
DEFAULT_FILE: Final = "archive.sqlite3"
_POSTGRES: Final = frozenset({"postgres", "postgresql"})
POSTGRES_DRIVER: Final = "postgresql+psycopg"
SQLITE_DRIVER: Final = "sqlite+pysqlite"


def archive_url(settings: Settings) -> URL:
    """The engine URL of the configured archive (the default file when unset).

    Raises:
        ConfigurationError: the URL cannot be parsed or names another database.
    """
    if not settings.archive_url:
        return URL.create(SQLITE_DRIVER, database=str(settings.data_dir / DEFAULT_FILE))
    return normalise_archive_url(settings.archive_url)


def normalise_archive_url(text: str) -> URL:
    """``text`` as an engine URL: PostgreSQL through psycopg 3, or a SQLite file.

    Raises:
        ConfigurationError: naming ``SUBSWITCH_ARCHIVE_URL``, never its password.
    """
    text = text.strip()
    if "://" not in text:
        return _conninfo(text)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise _bad(text, "not a database URL") from None
    backend = url.drivername.partition("+")[0]
    if backend in _POSTGRES:
        return _postgres(url, text)
    if backend == "sqlite":
        return _sqlite(url, text)
    raise _bad(text, f"unknown database {backend!r}")


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL, or ``None`` for any other database."""
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database)


def shown(url: URL) -> str:
    """``url`` fit for logs and errors, as people write it: its password masked, no
    driver name (``postgresql://app:***@db/subswitch``)."""
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)


def _conninfo(text: str) -> URL:
    """A libpq key/value string (``host=db dbname=subswitch user=app``) as a URL."""
    try:
        parsed = conninfo_to_dict(text) if "=" in text else {}
    except psycopg.Error:
        parsed = {}
    params = {key: str(value) for key, value in parsed.items() if value is not None}
    if not params.get("dbname"):
        raise _bad("", "not a database URL nor a libpq string with dbname=")
    port = params.pop("port", None)
    return URL.create(
        POSTGRES_DRIVER,
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=params.pop("host", None),
        port=int(port) if port and port.isdigit() else None,
        database=params.pop("dbname"),
        query=params,
    )


def _postgres(url: URL, text: str) -> URL:
    if not url.database:
        raise _bad(text, "name the database (postgresql://user@host/dbname)")
    return url.set(drivername=POSTGRES_DRIVER)


def _sqlite(url: URL, text: str) -> URL:
    if not url.database or url.database == ":memory:":
        raise _bad(text, "an in-memory SQLite archive keeps nothing; name a file (sqlite:///path)")
    return url.set(drivername=SQLITE_DRIVER)


def _bad(text: str, why: str) -> ConfigurationError:
    try:  # what is not even a URL is not shown: it may hold a password anywhere
        quoted = f"{redact_url(text)!r}; " if "://" in text else ""
    except ValueError:
        quoted = ""
    return ConfigurationError(
        f"{why} ({quoted}use postgresql://user@host/dbname or sqlite:///path)",
        variable=ARCHIVE_VARIABLE,
    )
