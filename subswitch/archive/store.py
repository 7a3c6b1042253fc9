"""The audit archive on SQL: PostgreSQL (psycopg 3) or a SQLite file, one code path.

:class:`SqlArchive` writes result events (batched, deduplicated on the event id by
``INSERT ... ON CONFLICT DO NOTHING`` on both databases; on PostgreSQL a batch is
first copied (``COPY``) into a temporary staging table, then inserted from it in the
same transaction), deletes expired ones in batches, and reads them back: the
:class:`~subswitch.audit.EventArchive` lookups and the streamed histories of
``subswitch history`` (streamed in chunks: psycopg's binary stream on PostgreSQL, a
cursor on SQLite, so a million rows are never in memory at once; each row a plain
tuple, the full event only where it is asked for).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from psycopg.rows import RowMaker
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, Select, create_engine, delete, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from subswitch.archive.schema import VERSION_TABLE, events
from subswitch.archive.url import shown, sqlite_path
from subswitch.clock import utcnow
from subswitch.contract import EventError, Outcome, ResultEvent, Target
from subswitch.errors import ArchiveError
from subswitch.redact import scrub

log = logging.getLogger(__name__)

MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"
#: Rows a history reads per chunk (per round trip on SQLite).
YIELD_PER: Final = 1000
#: One key for every archive that migrates the same PostgreSQL database at once.
_MIGRATION_LOCK: Final = 0x5375_6273_7769_7463  # "Subswitc"
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_SQLITE_BUSY_MS: Final = 10_000
_PG_CONNECT_TIMEOUT_S: Final = 5

#: The columns of a history row, in the order of ``--csv``.
HISTORY_COLUMNS: Final = (
    "issued_at",
    "completed_at",
    "org_id",
    "subscription_id",
    "target_kind",
    "target_id",
    "command_type",
    "active",
    "reason",
    "source",
    "correlation_id",
    "outcome",
    "attempts",
    "upstream_status",
    "error",
    "lane",
    "command_id",
    "event_id",
)
#: The columns a stored event fills (all but the row id), in the order of the COPY.
STORED_COLUMNS: Final = (
    "event_id",
    "command_id",
    "command_type",
    "org_id",
    "subscription_id",
    "target_kind",
    "target_id",
    "active",
    "reason",
    "outcome",
    "attempts",
    "upstream_status",
    "error",
    "source",
    "correlation_id",
    "lane",
    "issued_at",
    "completed_at",
    "archived_at",
    "event",
)
_STAGING: Final = sql.Identifier(f"{events.name}_staging")
_TABLE: Final = sql.Identifier(events.name)
_COLUMNS: Final = sql.SQL(", ").join(map(sql.Identifier, STORED_COLUMNS))
#: Once per connection: a private table, emptied by every commit, shaped as the batch.
_CREATE_STAGING: Final = sql.SQL(
    "CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS "
    "SELECT 0 AS seq, {columns} FROM {table} WITH NO DATA"
).format(staging=_STAGING, columns=_COLUMNS, table=_TABLE)
_COPY_STAGING: Final = sql.SQL("COPY {staging} (seq, {columns}) FROM STDIN").format(
    staging=_STAGING, columns=_COLUMNS
)
_INSERT_STAGED: Final = sql.SQL(
    "INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ORDER BY seq "
    "ON CONFLICT (event_id) DO NOTHING"
).format(table=_TABLE, columns=_COLUMNS, staging=_STAGING)


class ArchivedCommand(NamedTuple):
    """One row of a history: what, when, who, why and how it ended (its fields in the
    order of :data:`HISTORY_COLUMNS`, so that a database row becomes one cheaply)."""

    issued_at: datetime | None
    completed_at: datetime
    org_id: str | None
    subscription_id: int | None
    target_kind: str | None
    target_id: int | None
    command_type: str | None
    active: bool | None
    reason: str | None
    source: str | None
    correlation_id: str | None
    outcome: str
    attempts: int
    upstream_status: int | None
    error: str | None
    lane: str | None
    command_id: str | None
    event_id: str

    def record(self) -> dict[str, Any]:
        """The row as JSON-ready values (timestamps in RFC 3339)."""
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in zip(HISTORY_COLUMNS, self, strict=True)
        }


def error_text(error: EventError | None) -> str | None:
    """An event's error on one line (``code=404 status=NOT_FOUND message (detail)``)."""
    return None if error is None else error.one_line()


def event_row(event: ResultEvent, *, archived_at: datetime) -> dict[str, Any]:
    """The archive row of ``event``."""
    values = dict(zip(STORED_COLUMNS, _stored_values(event, archived_at), strict=True))
    values["event"] = event.model_dump(mode="json", by_alias=True)
    return values


def _stored_values(event: ResultEvent, archived_at: datetime) -> tuple[Any, ...]:
    """The values of :data:`STORED_COLUMNS` (the event as published, JSON text)."""
    data = event.data
    kind, ident = _target_of(event)
    return (
        event.id,
        data.command_id,
        data.command_type,
        data.org_id,
        data.subscription_id,
        kind,
        ident,
        data.active,
        data.reason,
        data.outcome.value,
        data.attempts,
        data.upstream_status,
        error_text(data.error),
        data.source,
        data.correlation_id,
        data.priority.value if data.priority else None,
        _utc(data.issued_at),
        _utc(data.completed_at),
        _utc(archived_at),
        event.model_dump_json(by_alias=True),
    )


def _utc(stamp: datetime | None) -> datetime | None:
    # As UtcDateTime binds it: a naive time is taken to be UTC already.
    return stamp.replace(tzinfo=UTC) if stamp is not None and stamp.tzinfo is None else stamp


def _target_of(event: ResultEvent) -> tuple[str | None, int | None]:
    if event.data.block_id is not None:
        return "block", event.data.block_id
    if event.data.service_id is not None:
        return "service", event.data.service_id
    return None, None


class SqlArchive:
    """Result events in a relational database; implements
    :class:`~subswitch.audit.EventArchive`.

    Every database error leaves as :class:`~subswitch.errors.ArchiveError`.
    """

    def __init__(self, *, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    @classmethod
    def open(
        cls, url: URL, *, create: bool = False, clock: Callable[[], datetime] = utcnow
    ) -> SqlArchive:
        """An archive on ``url`` (from :func:`subswitch.archive.url.archive_url`).
        Connects to nothing yet. A SQLite file is used in WAL mode and, with ``create``
        (the archive process), created private (0600, its directory 0700).

        Raises:
            ArchiveError: the SQLite file does not exist and ``create`` is false.
        """
        path = sqlite_path(url)
        if path is not None and not create and not path.exists():
            raise ArchiveError(f"no archive at {path} yet: `subswitch archive` creates it")
        return cls(engine=make_engine(url), clock=clock)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for instrumentation and tests)."""
        return self._engine

    @property
    def url(self) -> str:
        """The database's URL, its password masked."""
        return shown(self._engine.url)

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def migrate(self) -> None:
        """Create the schema, or upgrade it to this version's (Alembic, in one
        transaction; concurrent archives on one PostgreSQL take turns).

        Raises:
            ArchiveError: the database could not be reached or refused.
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._mapped("could not migrate"), self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def schema_problem(self) -> str | None:
        """``None`` when the database answers and its schema is this version's (the
        archive's readiness), else what is wrong, in one line without the URL."""
        try:
            with self._engine.connect() as connection:
                context = MigrationContext.configure(
                    connection, opts={"version_table": VERSION_TABLE}
                )
                current = context.get_current_revision()
        except SQLAlchemyError as exc:
            return f"does not answer ({type(exc).__name__})"
        head = _schema_head()
        if current == head:
            return None
        found = "no schema" if current is None else f"schema at revision {current}"
        return f"{found}, this version needs {head} (not migrated)"

    def store(self, batch: Sequence[ResultEvent]) -> int:
        """Insert ``batch`` in one transaction; events already archived (same event id)
        are skipped. Returns how many were new.

        Raises:
            ArchiveError: nothing was stored.
        """
        if not batch:
            return 0
        now = self._clock()
        unique = list({event.id: event for event in batch}.values())
        with self._mapped("could not store events"), self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                return _copy_and_insert(connection, unique, archived_at=now)
            rows = [event_row(event, archived_at=now) for event in unique]
            statement = (
                self._insert(events)
                .on_conflict_do_nothing(index_elements=["event_id"])
                .execution_options(preserve_rowcount=True)
            )
            # The driver's executemany reports the rows it inserted, skipped ones not.
            return int(connection.execute(statement, rows).rowcount)

    def delete_completed_before(self, cutoff: datetime, *, limit: int) -> int:
        """Delete at most ``limit`` events completed before ``cutoff`` (oldest first);
        returns how many. Call it again until it returns less than ``limit``."""
        oldest = (
            select(events.c.id)
            .where(events.c.completed_at < cutoff)
            .order_by(events.c.completed_at)
            .limit(limit)
        )
        statement = delete(events).where(events.c.id.in_(oldest))
        with self._mapped("could not delete expired events"), self._engine.begin() as connection:
            return connection.execute(statement).rowcount

    def newest_completed_at(self) -> datetime | None:
        """When the newest archived event's command completed, if any."""
        with self._mapped("could not read"), self._engine.connect() as connection:
            newest: datetime | None = connection.execute(
                select(func.max(events.c.completed_at))
            ).scalar()
        return newest

    def count(self) -> int:
        """How many events the archive holds."""
        with self._mapped("could not read"), self._engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(events)).scalar_one())

    def latest_event(self, command_id: str) -> ResultEvent | None:
        """The newest archived event of ``command_id`` (by completion time), if any."""
        statement = (
            select(events.c.event)
            .where(events.c.command_id == command_id)
            .order_by(events.c.completed_at.desc(), events.c.id.desc())
            .limit(1)
        )
        return self._one_event(statement)

    def newest_applied(self, target: Target) -> ResultEvent | None:
        """The ``applied`` event of the newest command (by ``issued_at``, then
        ``command_id``) applied on ``target``, if any."""
        statement = (
            select(events.c.event)
            .where(
                events.c.org_id == target.org_id,
                events.c.subscription_id == target.subscription_id,
                events.c.target_kind == target.kind,
                events.c.target_id == target.ident,
                events.c.outcome == Outcome.APPLIED.value,
            )
            .order_by(events.c.issued_at.desc(), events.c.command_id.desc())
            .limit(1)
        )
        return self._one_event(statement)

    def subscription_history(
        self,
        org_id: str,
        subscription_id: int,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[ArchivedCommand]:
        """Every command on one subscription, oldest ``issued_at`` first; ``since``
        inclusive, ``until`` exclusive, both on ``issued_at``."""
        where = [events.c.org_id == org_id, events.c.subscription_id == subscription_id]
        return self._stream(self._history(where, events.c.issued_at, since, until))

    def correlation_history(
        self, correlation_id: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[ArchivedCommand]:
        """Every command with ``correlation_id``, oldest ``issued_at`` first."""
        where = [events.c.correlation_id == correlation_id]
        return self._stream(self._history(where, events.c.issued_at, since, until))

    def source_history(
        self, source: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[ArchivedCommand]:
        """Every command ``source`` issued that completed in ``[since, until)``, oldest
        ``completed_at`` first (an audit export: what it changed, and when)."""
        where = [events.c.source == source]
        return self._stream(self._history(where, events.c.completed_at, since, until))

    def _history(
        self, where: list[Any], when: Any, since: datetime | None, until: datetime | None
    ) -> Select[Any]:
        if since is not None:
            where.append(when >= since)
        if until is not None:
            where.append(when < until)
        columns = [events.c[name] for name in HISTORY_COLUMNS]
        return select(*columns).where(*where).order_by(when, events.c.id)

    def _stream(self, statement: Select[Any]) -> Iterator[ArchivedCommand]:
        with self._mapped("could not read the history"), self._engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                yield from _pg_stream(connection, statement)
                return
            rows = connection.execution_options(yield_per=YIELD_PER).execute(statement)
            # A plain tuple per row, in HISTORY_COLUMNS order: no mapping, no model.
            yield from map(ArchivedCommand._make, rows)

    def _one_event(self, statement: Select[Any]) -> ResultEvent | None:
        with self._mapped("could not read"), self._engine.connect() as connection:
            body = connection.execute(statement).scalar()
        if body is None:
            return None
        try:
            return ResultEvent.model_validate(body)
        except ValidationError:
            log.warning("an archived event no longer reads as a result event; ignored")
            return None

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            raise ArchiveError(f"archive {self.url}: {what}: {self._reason(exc)}") from exc

    def _reason(self, exc: SQLAlchemyError) -> str:
        original = getattr(exc, "orig", None) or exc
        text = str(original).splitlines()[0] if str(original) else type(original).__name__
        secret = self._engine.url.render_as_string(hide_password=False)
        return scrub(text, secret)

    def __repr__(self) -> str:
        return f"SqlArchive(url={self.url!r})"


def _schema_head() -> str | None:
    """The newest revision of the migrations this version carries."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def _copy_and_insert(
    connection: Connection, batch: Sequence[ResultEvent], *, archived_at: datetime
) -> int:
    """``batch`` through the staging table, in the caller's transaction: one COPY and
    one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``; returns the rows inserted."""
    driver = connection.connection.driver_connection
    assert driver is not None  # a connection in a transaction has its driver's
    with driver.cursor() as cursor:
        cursor.execute(_CREATE_STAGING)
        with cursor.copy(_COPY_STAGING) as copy:
            for seq, event in enumerate(batch):
                copy.write_row((seq, *_stored_values(event, archived_at)))
        cursor.execute(_INSERT_STAGED)
        return int(cursor.rowcount)


def _pg_stream(connection: Connection, statement: Select[Any]) -> Iterator[ArchivedCommand]:
    """``statement``'s rows streamed by the driver in binary, ``YIELD_PER`` rows a chunk
    (the server keeps sending while rows are read, with no round trip per chunk, and
    TCP holds it back when the reader is slower), each row made an
    :class:`ArchivedCommand` as psycopg reads it: the per-row cost of a history is
    psycopg's alone (SQLAlchemy's rows and type processors cost as much again). Time
    zone UTC for this transaction, so timestamps arrive in UTC as stored."""
    compiled = statement.compile(dialect=connection.dialect)
    params = {name: _utc(value) if isinstance(value, datetime) else value
              for name, value in compiled.params.items()}  # fmt: skip
    driver = connection.connection.driver_connection
    assert driver is not None  # a checked-out connection has its driver's
    driver.execute("SET LOCAL TIME ZONE 'UTC'")
    with driver.cursor(binary=True, row_factory=_history_row) as cursor:
        yield from cursor.stream(str(compiled), params, size=YIELD_PER)


def _history_row(_cursor: Any) -> RowMaker[ArchivedCommand]:
    # The values tuple becomes the row as it is (tuple.__new__), no argument binding.
    return ArchivedCommand._make


def make_engine(url: URL) -> Engine:
    """An engine on ``url``: a SQLite file private and in WAL mode, or PostgreSQL with a
    connect timeout (unless the URL sets one)."""
    path = sqlite_path(url)
    if path is None:
        args = {} if "connect_timeout" in url.query else {"connect_timeout": _PG_CONNECT_TIMEOUT_S}
        # psycopg's own executemany (one prepared INSERT, pipelined) rather than one
        # huge multi-row INSERT per page, which psycopg would parse anew every batch.
        return create_engine(url, pool_pre_ping=True, connect_args=args, use_insertmanyvalues=False)
    _private_file(path)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _private_file(path: Path) -> None:
    path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, _FILE_MODE))


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    try:
        # WAL: `subswitch history` reads while the archive writes. FULL: a commit is
        # on disk before its events are acked, even across a power loss.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
    finally:
        cursor.close()
