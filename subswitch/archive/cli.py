"""``subswitch archive`` (the process that keeps the audit archive) and ``subswitch
history`` (what the archive knows about a subscription, a correlation id or a source)."""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Final

import typer
from prometheus_client import REGISTRY
from rich.console import Console

from subswitch.archive.consumer import ArchiveConsumer
from subswitch.archive.history import HistoryTable, parse_time, write_csv, write_json_lines
from subswitch.archive.store import ArchivedCommand, SqlArchive
from subswitch.archive.url import archive_url
from subswitch.commandline import ExitCode, OneLineErrors, fail, read_settings
from subswitch.contract import ORG_ID_PATTERN
from subswitch.health import CachedReadiness, HealthServer, broker_problem, start_health_server
from subswitch.settings import Settings
from subswitch.urls import resolve_broker_url

_ARCHIVE_EPILOG: Final = (
    "Exit status: 0 stopped (SIGTERM, Ctrl-C) or migrated; 2 bad configuration; "
    "3 broker or database unreachable at start."
)
_HISTORY_EPILOG: Final = (
    "Times: RFC 3339 (2026-11-22T10:00:00Z; no offset means UTC), a date (2026-11-22) or "
    "an age (30m, 12h, 7d). Exit status: 0 done (an empty history included); 2 bad "
    "input; 3 archive unreachable."
)
_PROGRESS_EVERY: Final = 1000
_ORG: Final = re.compile(ORG_ID_PATTERN)


def register(app: typer.Typer) -> None:
    """Add ``archive`` and ``history`` to ``app``."""
    app.command("archive", cls=OneLineErrors, epilog=_ARCHIVE_EPILOG)(archive)
    app.command("history", cls=OneLineErrors, epilog=_HISTORY_EPILOG)(history)


def archive(
    migrate_only: Annotated[
        bool, typer.Option("--migrate-only", help="Create or upgrade the schema, then exit.")
    ] = False,
) -> None:
    """Keep the audit archive: every result event into SUBSWITCH_ARCHIVE_URL, until stopped."""
    # The process's own lines (ready, batches, reloads) at INFO, in SUBSWITCH_LOG_FORMAT
    # (the root callback installed the handler).
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its every step, at INFO
    settings = read_settings()
    store = SqlArchive.open(archive_url(settings), create=True)
    store.migrate()
    if migrate_only:
        typer.echo(f"archive schema up to date at {store.url}")
        return
    logging.getLogger(__name__).info(
        "archive at %s, keeping %d days", store.url, settings.archive_retention_days
    )
    consumer = _consumer(settings, store)
    readiness = _readiness(store, consumer, broker_url=resolve_broker_url(settings))
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    server: HealthServer | None = None
    try:
        server = _serve(settings, readiness)
        consumer.run(stop, on_ready=readiness.invalidate)
    finally:
        if server is not None:
            server.stop()
        store.close()
    logging.getLogger(__name__).info("archive stopped; %d events stored", consumer.stored)


def _readiness(store: SqlArchive, consumer: ArchiveConsumer, *, broker_url: str) -> CachedReadiness:
    """Ready: the schema is this version's, the queue is consumed, both servers answer."""

    def consuming() -> str | None:
        return None if consumer.consuming else "not consuming subswitch.archive (yet)"

    return CachedReadiness(
        {
            "database": store.schema_problem,
            "consumer": consuming,
            "broker": lambda: broker_problem(broker_url),
        }
    )


def _serve(settings: Settings, readiness: CachedReadiness) -> HealthServer | None:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``SUBSWITCH_METRICS_PORT``, if set."""
    if settings.metrics_port is None:
        return None
    return start_health_server(
        host=settings.metrics_host,
        port=settings.metrics_port,
        registry=lambda: REGISTRY,
        ready=readiness,
    )


def _consumer(settings: Settings, store: SqlArchive) -> ArchiveConsumer:
    return ArchiveConsumer(
        broker_url=resolve_broker_url(settings),
        sink=store,
        queue_type=settings.rabbitmq_queue_type,
        batch_size=settings.archive_batch_size,
        flush_seconds=settings.archive_flush_seconds,
        retention_days=settings.archive_retention_days,
        visibility_timeout=settings.visibility_timeout,
    )


def history(
    *,
    org: Annotated[str | None, typer.Argument(help="The subscription's org.")] = None,
    subscription: Annotated[
        int | None, typer.Argument(min=1, help="The subscription id.", show_default=False)
    ] = None,
    since: Annotated[str | None, typer.Option(help="From this time on (inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (exclusive).")] = None,
    correlation_id: Annotated[
        str | None, typer.Option("--correlation-id", help="Every command with this id.")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="Every command this source issued (by completion time)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per command.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header line.")] = False,
) -> None:
    """Every archived command on ORG SUBSCRIPTION (oldest first), or with
    --correlation-id, or from --source: when, what, who, why and how it ended."""
    if as_json and as_csv:
        fail("--json and --csv: choose one", ExitCode.BAD_INPUT)
    now = datetime.now(UTC)
    start = parse_time(since, option="--since", now=now) if since else None
    end = parse_time(until, option="--until", now=now) if until else None
    if start and end and start >= end:
        fail("--since must be before --until", ExitCode.BAD_INPUT)
    which = _Which(org, subscription, correlation_id, source, start, end)
    which.check()
    store = SqlArchive.open(archive_url(read_settings()))
    try:
        _show(which.rows(store), as_json=as_json, as_csv=as_csv, across=org is None)
    finally:
        store.close()


@dataclass(frozen=True)
class _Which:
    """Which history: a subscription's, a correlation id's or a source's."""

    org: str | None
    subscription: int | None
    correlation_id: str | None
    source: str | None
    since: datetime | None
    until: datetime | None

    def check(self) -> None:
        chosen = [self.org is not None, self.correlation_id is not None, self.source is not None]
        if sum(chosen) != 1:
            fail("give ORG SUBSCRIPTION, --correlation-id or --source, one of them", 2)
        if self.org is None:
            return
        if self.subscription is None:
            fail(f"missing SUBSCRIPTION after {self.org!r}", ExitCode.BAD_INPUT)
        if not _ORG.fullmatch(self.org):
            fail(f"ORG: {self.org!r} is not an org id ({ORG_ID_PATTERN})", ExitCode.BAD_INPUT)

    def rows(self, store: SqlArchive) -> Iterator[ArchivedCommand]:
        if self.correlation_id is not None:
            return store.correlation_history(
                self.correlation_id, since=self.since, until=self.until
            )
        if self.source is not None:
            return store.source_history(self.source, since=self.since, until=self.until)
        assert self.org is not None
        assert self.subscription is not None
        return store.subscription_history(
            self.org, self.subscription, since=self.since, until=self.until
        )


def _show(rows: Iterator[ArchivedCommand], *, as_json: bool, as_csv: bool, across: bool) -> None:
    if as_json or as_csv:
        writer = write_json_lines if as_json else write_csv
        _export(writer(rows, sys.stdout))
        return
    table = HistoryTable(Console(), with_subscription=across)
    for row in rows:
        table.add(row)
    typer.echo(f"{table.count} command{'s' if table.count != 1 else ''}", err=True)


def _export(progress: Iterator[int]) -> None:
    err = Console(stderr=True)
    if not err.is_terminal or sys.stdout.isatty():
        for _ in progress:
            pass
        return
    count = 0
    with err.status("exported 0 commands") as status:
        for count in progress:
            if count % _PROGRESS_EVERY == 0:
                status.update(f"exported {count} commands")
    err.print(f"exported {count} commands")
