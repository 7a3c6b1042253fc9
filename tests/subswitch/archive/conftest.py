"""The archive's databases: a SQLite file and the PostgreSQL on this machine.

``archive_url`` runs each test on both (ids ``sqlite``, ``postgresql``): a fresh file
under ``tmp_path``, or a fresh schema in a database private to this test session (and
xdist worker), reached through ``?options=-csearch_path%3D<schema>`` as an operator
would write it. PostgreSQL that does not answer skips the test locally and fails it
when ``CI=true``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import psycopg
import pytest
from amqp.exceptions import ChannelError
from kombu import Connection
from psycopg import sql

from subswitch.archive.consumer import READY_MARK
from subswitch.archive.store import SqlArchive
from subswitch.archive.url import normalise_archive_url
from subswitch.broker import EVENTS
from subswitch.contract import (
    ARCHIVE_QUEUE,
    EVENT_CONTENT_TYPE,
    AnyCommand,
    ChangeBlockStatus,
    EventError,
    Outcome,
    ResultEvent,
    result_event,
)
from tests.conftest import broker_unavailable

PG_HOST: Final = os.environ.get("SUBSWITCH_TEST_PG_HOST", "127.0.0.1")
PG_ADMIN: Final = f"host={PG_HOST} port=5432 user=postgres dbname=postgres connect_timeout=2"
T0: Final = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of this session's own on the local PostgreSQL, dropped at the end."""
    name = f"subswitch_test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError:
        broker_unavailable(f"PostgreSQL not reachable at {PG_HOST}:5432 (user postgres)")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_schema_url(pg_database: str) -> Iterator[str]:
    """A URL on an empty schema of ``pg_database``, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = PG_ADMIN.replace("dbname=postgres", f"dbname={pg_database}")
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield f"postgresql://postgres@{PG_HOST}:5432/{pg_database}?options=-csearch_path%3D{schema}"
        finally:
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", "postgresql"])
def archive_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty archive database: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'archive.sqlite3'}"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


@pytest.fixture
def archive(archive_url: str) -> Iterator[SqlArchive]:
    """A migrated archive on ``archive_url``."""
    store = SqlArchive.open(normalise_archive_url(archive_url), create=True)
    store.migrate()
    yield store
    store.close()


def block(
    *,
    subscription_id: int = 101,
    active: bool = True,
    issued_at: datetime = T0,
    source: str = "fraud-engine",
    correlation_id: str | None = "case-8812",
    command_id: str | None = None,
    org_id: str = "telco",
) -> ChangeBlockStatus:
    """A block command of a known shape."""
    return ChangeBlockStatus(
        org_id=org_id,
        subscription_id=subscription_id,
        block_id=1,
        active=active,
        reason="stolen",
        source=source,
        correlation_id=correlation_id,
        issued_at=issued_at,
        **({"command_id": command_id} if command_id else {}),
    )


def event_of(
    command: AnyCommand,
    *,
    outcome: Outcome = Outcome.APPLIED,
    completed_after: timedelta = timedelta(seconds=1),
    error: EventError | None = None,
) -> ResultEvent:
    """The result event of ``command``, completed shortly after it was issued."""
    return result_event(
        command,
        outcome=outcome,
        attempts=1 if outcome is Outcome.APPLIED else 0,
        completed_at=command.issued_at + completed_after,
        upstream_status=201 if outcome is Outcome.APPLIED else None,
        error=error,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def publish(events: list[ResultEvent], *extra: bytes, broker: str) -> None:
    """Publish ``events`` (then ``extra`` raw bodies) as the workers do."""
    with Connection(broker) as connection:
        producer = connection.Producer()
        for body in [event.to_json() for event in events] + list(extra):
            producer.publish(
                body,
                exchange=EVENTS,
                routing_key="command.applied",
                declare=[EVENTS],  # on Redis a publisher routes by the type it declared
                content_type=EVENT_CONTENT_TYPE,
                content_encoding="utf-8",
            )


def queued(broker: str) -> int:
    """Messages ready on ``subswitch.archive``."""
    with Connection(broker) as connection:
        try:
            found = connection.default_channel.queue_declare(ARCHIVE_QUEUE, passive=True)
        except ChannelError:  # on Redis an empty queue is no key at all
            return 0
        return int(found.message_count)


#: How long the archive process may take to consume (a busy machine included).
ARCHIVE_START_S: Final = 30.0


def archive_env(broker_url: str, database_url: str, data_dir: Path) -> dict[str, str]:
    """The environment of ``subswitch archive`` on ``broker_url`` into ``database_url``
    (no other ``SUBSWITCH_`` setting of this shell)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SUBSWITCH_")}
    return env | {
        "SUBSWITCH_BROKER_URL": broker_url,
        "SUBSWITCH_ARCHIVE_URL": database_url,
        "SUBSWITCH_DATA_DIR": str(data_dir),
        "SUBSWITCH_ARCHIVE_FLUSH_SECONDS": "0.1",
    }


class ArchiveProcess:
    """``python -m subswitch archive`` with its log collected; built, it consumes
    (unless ``wait=False``: then :meth:`wait_ready` before counting on it)."""

    def __init__(self, env: dict[str, str], *, wait: bool = True) -> None:
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "subswitch", "archive"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Return once it consumes; fail, with its log, if it does not in time."""
        assert self._ready.wait(ARCHIVE_START_S), "\n".join(self.lines)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip())
            if READY_MARK in line:
                self._ready.set()

    def stop(self) -> str:
        """SIGTERM, the exit status checked; the whole log."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=20) == 0, "\n".join(self.lines)
        return "\n".join(self.lines)


@contextmanager
def killed_at_exit(processes: list[ArchiveProcess]) -> Iterator[None]:
    """Kill what of ``processes`` still runs when the block ends."""
    try:
        yield
    finally:
        for archive in processes:
            if archive.process.poll() is None:
                archive.process.kill()
                archive.process.wait()
