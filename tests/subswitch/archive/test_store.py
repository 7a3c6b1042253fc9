"""The archive on SQL, the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, event, inspect

from subswitch.archive.schema import TABLE_NAME, VERSION_TABLE, metadata
from subswitch.archive.store import YIELD_PER, SqlArchive
from subswitch.archive.url import normalise_archive_url
from subswitch.audit import EventArchive
from subswitch.contract import EventError, Outcome, Target
from subswitch.errors import ArchiveError, UnavailableError
from tests.subswitch.archive.conftest import T0, block, event_of


def test_migrations_create_the_schema_on_an_empty_database(archive_url: str) -> None:
    # Given an empty database
    url = normalise_archive_url(archive_url)
    store = SqlArchive.open(url, create=True)
    # When the archive migrates it, twice (a restart)
    store.migrate()
    store.migrate()
    # Then the events table has every column and index people search by, at one revision
    inspector = inspect(create_engine(url))
    columns = {column["name"] for column in inspector.get_columns(TABLE_NAME)}
    assert {
        "event_id",
        "command_id",
        "org_id",
        "subscription_id",
        "target_kind",
        "target_id",
    } <= columns
    assert {"source", "correlation_id", "lane", "issued_at", "completed_at", "event"} <= columns
    indexes = {tuple(index["column_names"]) for index in inspector.get_indexes(TABLE_NAME)}
    assert ("org_id", "subscription_id", "issued_at") in indexes
    assert ("command_id", "completed_at") in indexes
    assert ("correlation_id", "issued_at") in indexes
    assert ("source", "completed_at") in indexes
    assert inspector.has_table(VERSION_TABLE)
    store.close()


def test_the_migrations_make_exactly_the_schema_the_code_declares(
    archive: SqlArchive, archive_url: str
) -> None:
    # Given a migrated archive
    engine = create_engine(normalise_archive_url(archive_url))
    # When Alembic compares the database with the declared tables
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        differences = compare_metadata(context, metadata)
    engine.dispose()
    # Then there is no difference (a column or index added to one is added to the other)
    assert differences == []


def test_an_event_is_stored_once_however_often_it_comes(archive: SqlArchive) -> None:
    # Given three events, one of them twice in the same batch
    events = [event_of(block(issued_at=T0 + timedelta(minutes=n))) for n in range(3)]
    # When they are stored, and the whole batch comes again (a redelivery)
    first = archive.store([*events, events[0]])
    again = archive.store(events)
    # Then each is archived once, and the second time nothing is new
    assert (first, again, archive.count()) == (3, 0, 3)


def test_a_subscription_history_is_oldest_first_within_its_window(archive: SqlArchive) -> None:
    # Given commands on two subscriptions, stored out of order
    mine = [block(issued_at=T0 + timedelta(minutes=n), active=n % 2 == 0) for n in (2, 0, 1, 3)]
    other = block(subscription_id=102, issued_at=T0)
    failed = event_of(
        mine[0], outcome=Outcome.FAILED, error=EventError(code=404, message="not found")
    )
    archive.store([failed, *(event_of(c) for c in mine[1:]), event_of(other)])
    # When the history of one is read, whole and within [T0+1m, T0+3m)
    whole = list(archive.subscription_history("telco", 101))
    window = list(
        archive.subscription_history(
            "telco", 101, since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3)
        )
    )
    # Then it is that subscription's, oldest first, with what, who, why and the outcome
    assert [row.issued_at for row in whole] == [T0 + timedelta(minutes=n) for n in range(4)]
    assert [row.issued_at for row in window] == [T0 + timedelta(minutes=n) for n in (1, 2)]
    row = window[1]
    assert (row.target_kind, row.target_id, row.active, row.reason) == ("block", 1, True, "stolen")
    assert (row.source, row.correlation_id, row.outcome) == ("fraud-engine", "case-8812", "failed")
    assert row.error == "code=404 not found"
    assert row.command_id == mine[0].command_id


def test_audit_exports_by_correlation_id_and_by_source(archive: SqlArchive) -> None:
    # Given commands of two sources, some sharing a correlation id
    plan = [(1, "billing", "job-1"), (2, "fraud-engine", "case-1"), (3, "billing", "case-1")]
    commands = [
        block(
            subscription_id=n, issued_at=T0 + timedelta(minutes=n), source=who, correlation_id=case
        )
        for n, who, case in plan
    ]
    archive.store([event_of(command) for command in commands])
    # When exported by correlation id, and by source since a time
    by_case = list(archive.correlation_history("case-1"))
    by_source = list(archive.source_history("billing", since=T0 + timedelta(minutes=2)))
    # Then each has exactly its commands
    assert [row.subscription_id for row in by_case] == [2, 3]
    assert [row.subscription_id for row in by_source] == [3]


def test_the_archive_answers_the_event_archive_lookups(archive: SqlArchive) -> None:
    # Given an applied block, a newer applied unblock, and a newest one that failed
    older, newer, newest = (
        block(issued_at=T0 + timedelta(minutes=n), active=n != 1) for n in range(3)
    )
    archive.store([event_of(older), event_of(newer), event_of(newest, outcome=Outcome.FAILED)])
    store: EventArchive = archive
    # When the newest applied intent and a command's latest event are looked up
    applied = store.newest_applied(Target("telco", 101, "block", 1))
    latest = store.latest_event(newest.command_id)
    # Then they are the unblock, and the failure; unknown ones are None
    assert applied is not None and applied.data.command_id == newer.command_id
    assert latest is not None and latest.outcome is Outcome.FAILED
    assert store.latest_event("nobody-knows-this") is None
    assert store.newest_applied(Target("telco", 101, "service", 1)) is None


def test_retention_deletes_the_expired_in_batches(archive: SqlArchive) -> None:
    # Given five events completed before a cutoff and two after it
    commands = [block(issued_at=T0 + timedelta(days=n)) for n in range(7)]
    archive.store([event_of(command) for command in commands])
    cutoff = T0 + timedelta(days=5)
    # When expired events are deleted two at a time
    deleted = []
    while (count := archive.delete_completed_before(cutoff, limit=2)) > 0:
        deleted.append(count)
    # Then it took three batches, and only the two recent ones remain
    assert deleted == [2, 2, 1]
    assert [row.issued_at for row in archive.subscription_history("telco", 101)] == [
        T0 + timedelta(days=5),
        T0 + timedelta(days=6),
    ]
    assert archive.newest_completed_at() == T0 + timedelta(days=6, seconds=1)


def test_a_history_streams_rather_than_loading_everything(
    archive: SqlArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given more commands than one chunk holds
    commands = [block(issued_at=T0 + timedelta(seconds=n)) for n in range(2500)]
    for start in range(0, len(commands), 500):
        archive.store([event_of(command) for command in commands[start : start + 500]])
    options: list[dict[str, Any]] = []
    event.listen(
        archive.engine,
        "before_cursor_execute",
        lambda _c, _cur, _s, _p, context, _m: options.append(dict(context.execution_options)),
    )
    streams: list[int] = []
    real_stream = psycopg.Cursor.stream

    def stream(self: psycopg.Cursor[Any], *args: Any, size: int = 1, **kw: Any) -> Any:
        streams.append(size)
        return real_stream(self, *args, size=size, **kw)

    monkeypatch.setattr(psycopg.Cursor, "stream", stream)
    # When the history is read one row at a time
    rows = archive.subscription_history("telco", 101)
    first = next(rows)
    # Then the query runs as a stream of YIELD_PER rows a chunk (psycopg's on
    # PostgreSQL, SQLAlchemy's on SQLite), and rows come as they are read, in order
    if archive.engine.dialect.name == "postgresql":
        assert streams == [YIELD_PER]
    else:
        assert options[-1].get("yield_per") == YIELD_PER
    assert first.issued_at == T0
    assert sum(1 for _ in rows) == 2499


def test_a_history_read_in_part_leaves_the_archive_usable(archive: SqlArchive) -> None:
    # Given a history of more rows than one chunk
    archive.store([event_of(block(issued_at=T0 + timedelta(seconds=n))) for n in range(1500)])
    # When a reader takes its first row and stops
    rows = archive.subscription_history("telco", 101)
    assert next(rows).issued_at == T0
    assert isinstance(rows, Generator)
    rows.close()
    # Then the archive still answers (the abandoned stream is cancelled, not left open)
    assert archive.count() == 1500
    assert sum(1 for _ in archive.subscription_history("telco", 101)) == 1500


def test_an_unreachable_database_is_one_line_without_its_password() -> None:
    # Given an archive URL with a password, on a port nobody listens on
    url = normalise_archive_url("postgresql://app:s3cret@127.0.0.1:1/subswitch")
    store = SqlArchive.open(url)
    # When it is used
    with pytest.raises(ArchiveError) as caught:
        store.migrate()
    # Then the error is transient, one line, and shows no password
    message = str(caught.value)
    assert isinstance(caught.value, UnavailableError)
    assert "\n" not in message and "s3cret" not in message
    assert "postgresql://app:***@127.0.0.1:1/subswitch" in message


def test_reading_an_archive_file_that_does_not_exist_says_who_creates_it(tmp_path: Path) -> None:
    # Given no archive file yet
    url = normalise_archive_url(f"sqlite:///{tmp_path / 'none.sqlite3'}")
    # When a reader opens it
    with pytest.raises(ArchiveError, match="subswitch archive"):
        SqlArchive.open(url)
    # Then no file was created by the attempt
    assert not (tmp_path / "none.sqlite3").exists()


def test_the_schema_is_a_readiness_problem_until_migrated(archive_url: str) -> None:
    # Given an archive database nobody has migrated yet
    store = SqlArchive.open(normalise_archive_url(archive_url), create=True)
    # When its readiness is asked before and after the migration
    before = store.schema_problem()
    store.migrate()
    after = store.schema_problem()
    store.close()
    # Then it is a problem (one line, no URL) until the schema is this version's
    assert before is not None and "not migrated" in before and "\n" not in before
    assert "://" not in before
    assert after is None


def test_an_unreachable_database_is_a_readiness_problem() -> None:
    # Given an archive on a port nobody listens on, with a password
    store = SqlArchive.open(normalise_archive_url("postgresql://app:s3cret@127.0.0.1:1/x"))
    # When its readiness is asked, then it names the failure, not the password
    problem = store.schema_problem()
    assert problem is not None and problem.startswith("does not answer")
    assert "s3cret" not in problem
