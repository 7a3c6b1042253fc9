"""``subswitch batch FILE``: validate a CSV or JSON Lines file of commands, then enqueue
it on the bulk lane in chunks, with progress; optionally follow the results.

Every row is validated before anything is sent; the file is read twice from disk, so
memory stays flat whatever its size (``--wait`` keeps about a byte per command).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from producers.batch import (
    BATCH_ID_PATTERN,
    DEFAULT_CHUNK_SIZE,
    BatchCheck,
    BatchFileError,
    BatchFormat,
    BatchSource,
    RowBuilder,
    RowError,
    check_file,
    chunked,
    file_identity,
)
from producers.batch_results import (
    BatchReport,
    PendingCommands,
    ResultTally,
    await_results,
)
from producers.batch_runs import BatchExpiredError, first_run
from producers.commands import time_bounds
from producers.errors import BrokerError, MessageTooLargeError
from producers.events import EventStream
from producers.publisher import BatchPublisher, CeleryPublisher
from subswitch.commandline import ExitCode, OneLineErrors, fail, read_settings
from subswitch.contract import AnyCommand, Lane, ResultEvent, TimeBounds
from subswitch.settings import Settings
from subswitch.signing import producer_signer
from subswitch.urls import resolve_broker_url

MAX_CHUNK_SIZE: Final = 10_000

BATCH_EPILOG: Final = (
    "Columns (CSV header or JSON Lines keys): type (block, service, ChangeBlockStatus or "
    "ChangeServiceStatus), org_id, subscription_id, active (true/false/1/0/yes/no), "
    "block_id (block rows), service_id (service rows); optional: reason, command_id "
    "(default batch-<batch id>-<line>), issued_at, not_after, source, correlation_id, "
    "priority (bulk only: any other value is an error). "
    "Exit status: 0 enqueued (with --wait: every result applied or superseded); "
    "1 some failed, rejected or expired (--wait); 2 invalid file, rows or configuration "
    "(nothing enqueued); 3 broker unreachable; 4 results missing after --timeout "
    "(--wait; they are enqueued); 130 interrupted. Re-running the same file never "
    "applies a command twice."
)


def register(app: typer.Typer) -> None:
    """Add ``batch`` to the ``subswitch`` CLI."""
    app.command("batch", cls=OneLineErrors, epilog=BATCH_EPILOG)(batch)


class _CountColumn(ProgressColumn):
    """``1,234/10,000 rows``, or ``12.3/33.0 MB`` for a task counted in bytes."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "rows")
        total = task.total or 0
        if unit == "bytes":
            return Text(f"{task.completed / 1e6:,.1f}/{total / 1e6:,.1f} MB")
        return Text(f"{task.completed:,.0f}/{total:,.0f} {unit}")


class _RateColumn(ProgressColumn):
    """``12,345 rows/s`` (or MB/s)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "rows")
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"- {unit}/s")
        if unit == "bytes":
            return Text(f"{speed / 1e6:,.1f} MB/s")
        return Text(f"{speed:,.0f} {unit}/s")


def progress_bar(console: Console, *, enabled: bool) -> Progress:
    """A progress display with a rate and an ETA; a no-op unless ``enabled`` and the
    console is a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        _CountColumn(),
        _RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
    )


@dataclass(frozen=True)
class BatchOptions:
    """What ``subswitch batch`` was asked to do."""

    path: Path
    source: str
    fmt: BatchFormat | None = None
    skip_invalid: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    batch_id: str | None = None
    wait: bool = False
    timeout: float = 60.0
    report: Path | None = None
    check_only: bool = False
    quiet: bool = False


FileArg = Annotated[
    Path,
    typer.Argument(
        exists=True, dir_okay=False, readable=True, help="A .csv or .jsonl file of commands."
    ),
]
FormatOpt = Annotated[
    BatchFormat | None,
    typer.Option("--format", help="csv or jsonl; default by extension, else by content."),
]


def batch(
    *,
    file: FileArg,
    fmt: FormatOpt = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Enqueue the valid rows of a file with bad ones.")
    ] = False,
    chunk_size: Annotated[
        int, typer.Option(min=1, max=MAX_CHUNK_SIZE, help="Commands per broker message.")
    ] = DEFAULT_CHUNK_SIZE,
    batch_id: Annotated[
        str | None,
        typer.Option(help="Names generated command ids; default: from the file's SHA-256."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="Source of rows without one; else $SUBSWITCH_SOURCE, else subswitch."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the results and show their progress.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0, help="--wait gives up after S seconds without a result.")
    ] = 60.0,
    report: Annotated[
        Path | None,
        typer.Option(help="Write command_id,line,outcome,upstream_status,error per row here."),
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate only; enqueue nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Enqueue a CSV or JSON Lines file of commands on the bulk lane, many per message.

    Every row is validated first: a bad row refuses the file unless --skip-invalid.
    """
    settings = read_settings()
    if batch_id is not None and not BATCH_ID_PATTERN.match(batch_id):
        fail("--batch-id: 1 to 64 characters of A-Z a-z 0-9 . _ : -", ExitCode.BAD_INPUT)
    if report is not None and report.resolve() == file.resolve():
        fail("--report must not be the batch file itself", ExitCode.BAD_INPUT)
    options = BatchOptions(
        path=file,
        source=source or settings.source,
        fmt=fmt,
        skip_invalid=skip_invalid,
        chunk_size=chunk_size,
        batch_id=batch_id,
        wait=wait,
        timeout=timeout,
        report=report,
        check_only=check,
        quiet=quiet,
    )
    raise typer.Exit(run_batch(settings, options))


def run_batch(settings: Settings, options: BatchOptions) -> int:
    """Validate, then enqueue (and follow) the batch; the exit status."""
    console = Console(stderr=True, highlight=False)
    with _open_report(options.report) as report:
        check = _validate(options, console, report, time_bounds(settings))
        run = _BatchRun(options, check, console, report)
        if options.check_only:
            typer.echo(
                f"batch {run.batch_id}: {check.valid} valid rows; nothing enqueued (--check)"
            )
            return ExitCode.OK
        return run.enqueue(settings)


def _open_report(path: Path | None) -> AbstractContextManager[BatchReport | None]:
    if path is None:
        return nullcontext()
    try:
        return BatchReport(path)
    except OSError as exc:
        fail(f"cannot write the report {path}: {exc.strerror or exc}", ExitCode.BAD_INPUT)


def _validate(
    options: BatchOptions, console: Console, report: BatchReport | None, bounds: TimeBounds
) -> BatchCheck:
    """Pass 1: every row checked (time bounds too); exits 2 with each bad row named
    unless allowed."""
    path = options.path
    try:
        source = BatchSource(path, options.fmt)
        with progress_bar(console, enabled=not options.quiet) as progress:
            task = progress.add_task("validating", total=path.stat().st_size, unit="bytes")
            check = check_file(
                source,
                builder=RowBuilder(batch_id="0" * 16, source=options.source, bounds=bounds),
                on_invalid=None if report is None else report.invalid,
                on_progress=lambda done: progress.update(task, completed=done),
            )
            progress.update(task, completed=source.bytes_read)
    except BatchFileError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", ExitCode.BAD_INPUT)
    except KeyboardInterrupt:
        fail("interrupted while validating; nothing enqueued", ExitCode.INTERRUPTED)
    _show_invalid(check, console)
    if check.invalid and not options.skip_invalid:
        fail(
            f"{path.name}: {check.invalid} of {check.rows} rows are invalid; nothing enqueued "
            "(--skip-invalid enqueues the others)",
            ExitCode.BAD_INPUT,
        )
    if not check.valid:
        fail(f"{path.name}: no valid row; nothing enqueued", ExitCode.BAD_INPUT)
    return check


def _show_invalid(check: BatchCheck, console: Console) -> None:
    for error in check.errors:
        console.print(str(error), soft_wrap=True, markup=False)
    unlisted = check.invalid - len(check.errors)
    if unlisted:
        console.print(f"... and {unlisted} more invalid rows (--report lists them all)")


class _BatchRun:
    """Pass 2 and the wait, for a file that pass 1 accepted."""

    def __init__(
        self,
        options: BatchOptions,
        check: BatchCheck,
        console: Console,
        report: BatchReport | None,
    ) -> None:
        self.options = options
        self.check = check
        self.batch_id = options.batch_id or check.batch_id
        self.console = console
        self.report = report
        self.pending = PendingCommands(self.batch_id)
        self.sent = 0
        self.messages = 0

    def enqueue(self, settings: Settings) -> int:
        """Bind to the events first when waiting, send every chunk, then wait; the
        exit status."""
        issued_at = self.first_run_time(settings)
        broker_url = resolve_broker_url(settings)
        with ExitStack() as stack:
            wait = self.options.wait
            stream = stack.enter_context(EventStream(broker_url=broker_url)) if wait else None
            publisher = CeleryPublisher(
                broker_url=broker_url,
                visibility_timeout=settings.visibility_timeout,
                queue_type=settings.rabbitmq_queue_type,
                delivery_limit=settings.delivery_limit,
                max_message_bytes=settings.max_message_bytes,
                signer=producer_signer(settings),
            )
            stack.callback(publisher.close)
            self.publish(publisher, issued_at)
            invalid = self.check.invalid
            skipped = f"; {_count(invalid, 'invalid row')} skipped" if invalid else ""
            typer.echo(
                f"batch {self.batch_id}: {_count(self.sent, 'command')} enqueued in "
                f"{_count(self.messages, 'message')} on {Lane.BULK.queue}{skipped}"
            )
            return ExitCode.OK if stream is None else self.await_results(stream)

    def first_run_time(self, settings: Settings) -> datetime:
        """The ``issued_at`` of rows without one: the first run's time, kept for re-runs."""
        now = datetime.now(UTC)
        try:
            run = first_run(settings.data_dir, self.batch_id, now=now, bounds=time_bounds(settings))
        except BatchExpiredError as exc:
            fail(str(exc), ExitCode.BAD_INPUT)
        except OSError as exc:
            fail(f"cannot keep the time of batch {self.batch_id}: {exc}", ExitCode.BAD_INPUT)
        if not run.first and not self.options.quiet:
            self.console.print(
                f"batch {self.batch_id} was first run at "
                f"{run.issued_at.isoformat(timespec='seconds')}: its rows keep that issued_at",
                highlight=False,
            )
        return run.issued_at

    def publish(self, publisher: BatchPublisher, issued_at: datetime) -> None:
        """Pass 2: stream the file again and send its commands in chunks."""
        path = self.options.path
        if file_identity(path) != self.check.identity:
            fail(
                f"{path.name} changed since it was validated; nothing enqueued", ExitCode.BAD_INPUT
            )
        source = BatchSource(path, self.options.fmt)
        builder = RowBuilder(
            batch_id=self.batch_id, source=self.options.source, issued_at=issued_at
        )
        rows = source.rows(builder)
        try:
            with progress_bar(self.console, enabled=not self.options.quiet) as progress:
                task = progress.add_task("enqueueing", total=self.check.valid, unit="rows")
                for chunk in chunked(_commands(rows), self.options.chunk_size):
                    publisher.publish_batch([command for _, command in chunk])
                    self._sent(chunk)
                    progress.advance(task, len(chunk))
        except KeyboardInterrupt:
            fail(f"interrupted; {self._resume_hint()}", ExitCode.INTERRUPTED)
        except MessageTooLargeError as exc:
            fail(f"{exc}: use a smaller --chunk-size; {self._resume_hint()}", ExitCode.BAD_INPUT)
        except BrokerError as exc:
            fail(f"{exc}; {self._resume_hint()}", ExitCode.UNAVAILABLE)
        except (BatchFileError, OSError) as exc:
            fail(f"{path.name} could not be read again: {exc}", ExitCode.BAD_INPUT)
        if source.digest != self.check.digest:
            fail(
                f"{path.name} changed while it was being enqueued ({self.sent} commands "
                "sent); check it and run it again",
                ExitCode.BAD_INPUT,
            )

    def _sent(self, chunk: list[tuple[int, AnyCommand]]) -> None:
        self.sent += len(chunk)
        self.messages += 1
        for line, command in chunk:
            if self.options.wait:
                self.pending.add(command.command_id, line)
            elif self.report is not None:
                self.report.enqueued(command.command_id, line)

    def _resume_hint(self) -> str:
        return (
            f"{self.sent} of {self.check.valid} commands were enqueued; run the same file "
            "again to enqueue the rest (nothing is applied twice)"
        )

    def await_results(self, stream: EventStream) -> int:
        """Follow the batch's results with a live tally; the exit status."""
        tally = ResultTally()
        total = len(self.pending)
        try:
            with progress_bar(self.console, enabled=not self.options.quiet) as progress:
                task = progress.add_task("results", total=total, unit="commands")

                def on_result(line: int, event: ResultEvent) -> None:
                    tally.add(event.outcome)
                    if self.report is not None:
                        self.report.result(line, event)
                    progress.update(task, advance=1, description=tally.describe())

                await_results(stream, self.pending, on_result, idle_timeout=self.options.timeout)
        except KeyboardInterrupt:
            fail(
                "interrupted while waiting for results; the batch is enqueued", ExitCode.INTERRUPTED
            )
        missing = len(self.pending)
        self._report_missing()
        typer.echo(f"results: {tally.describe()}" + (f", no result {missing}" if missing else ""))
        if missing:
            fail(
                f"{missing} of {total} commands had no result after {self.options.timeout:g} s "
                "without one; they are enqueued",
                ExitCode.TIMEOUT,
            )
        return ExitCode.FAILED if tally.failed else ExitCode.OK

    def _report_missing(self) -> None:
        if self.report is None:
            return
        # The usual cause after a re-run: a command an earlier run finished is a duplicate,
        # and a duplicate publishes no second event (the contract's one event per command).
        why = (
            f"no result within {self.options.timeout:g} s of the previous one "
            "(or finished by an earlier run of this file)"
        )
        for command_id, line in self.pending.remaining():
            self.report.pending(command_id, line, why)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _commands(
    rows: Iterable[tuple[int, AnyCommand | RowError]],
) -> Iterator[tuple[int, AnyCommand]]:
    """The valid rows' ``(line, command)``; invalid ones were reported by pass 1."""
    for line, result in rows:
        if not isinstance(result, RowError):
            yield line, result
