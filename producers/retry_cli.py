"""``subswitch retry COMMAND_ID`` and ``subswitch retry --from-report REPORT.csv``.

A retry is a new command (``<id>.r<N>``) through every guarantee; see
:mod:`producers.retry`. It reads the store (where the original is, which retry ids are
taken) and enqueues, so it needs both URLs, or neither (the embedded default).
"""

from __future__ import annotations

import csv
import getpass
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from producers.batch_results import REPORT_COLUMNS
from producers.commands import time_bounds
from producers.producer import CommandProducer
from producers.publisher import CeleryPublisher
from producers.retry import RETRYABLE, Retried, Retrier, RetryRefused
from subswitch.commandline import ExitCode, OneLineErrors, fail, read_settings
from subswitch.errors import InvalidInput
from subswitch.settings import Settings
from subswitch.status import configured_archive, open_store
from subswitch.urls import resolve_endpoints

_EPILOG: Final = (
    "The retry of x is x.r1 (of x.r1, x.r2): same target and intent, same correlation_id "
    "and lane, source = who retried (--source, default retry:<login name>), the original "
    "issued_at unless --now, no not_after unless --not-after. Refused with the reason: "
    "unknown ids, commands still in progress, applied or superseded ones, ones retried "
    "already. Exit status: 0 retried (every retryable row of the report); 1 refused "
    "(some rows, with --from-report); 2 bad input, report or configuration (nothing "
    "sent); 3 broker or store unreachable."
)
#: Report outcomes that are retried; the others (applied, superseded, invalid, enqueued,
#: pending) are skipped.
RETRIED_OUTCOMES: Final = frozenset(state.value for state in RETRYABLE)
_SOURCE_LIMIT: Final = 64


def register(app: typer.Typer) -> None:
    """Add ``subswitch retry`` to the CLI."""
    app.command("retry", cls=OneLineErrors, epilog=_EPILOG)(retry)


def retry(
    *,
    command_id: Annotated[
        str | None, typer.Argument(help="The failed, expired or rejected command.")
    ] = None,
    from_report: Annotated[
        Path | None,
        typer.Option(
            "--from-report",
            dir_okay=False,
            help="Retry the failed, expired and rejected rows of a `subswitch batch "
            "--report` file.",
        ),
    ] = None,
    now: Annotated[
        bool, typer.Option("--now", help="Issue the retry now instead of at the original's time.")
    ] = False,
    not_after: Annotated[
        str | None, typer.Option(help="RFC 3339 deadline of the retry; none by default.")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="Who retries; default retry:<login name>.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON (one object per line).")] = False,
) -> None:
    """Send a failed, expired or rejected command again, as a new command."""
    if (command_id is None) == (from_report is None):
        fail("give a COMMAND_ID or --from-report REPORT.csv (one of them)", ExitCode.BAD_INPUT)
    settings = read_settings()
    with ExitStack() as stack:
        producer = stack.enter_context(_producer(settings))
        retrier = Retrier(
            producer=producer,
            source=source or default_source(settings),
            fresh=now,
            not_after=not_after,
        )
        if from_report is not None:
            raise typer.Exit(_retry_report(retrier, from_report, as_json=as_json))
        if command_id is not None:
            _show(retrier.retry(command_id), as_json=as_json)


def default_source(settings: Settings) -> str:
    """``retry:<login name>``: who retried, for the audit; ``SUBSWITCH_SOURCE`` when the
    login name cannot be read."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        return settings.source
    return f"retry:{user}"[:_SOURCE_LIMIT]


def _producer(settings: Settings) -> CommandProducer:
    """A producer on the configured (or embedded) broker, with the store, signing with
    ``SUBSWITCH_PRODUCER_KEY_FILE`` as every producer does (a policy rejects unsigned
    retries)."""
    endpoints = resolve_endpoints(settings)
    publisher = CeleryPublisher.from_settings(settings)
    return CommandProducer(
        publisher=publisher,
        signer=publisher.signer,
        default_source=settings.source,
        time_bounds=time_bounds(settings),
        store=open_store(endpoints.store_url),
        archive=configured_archive(settings),
    )


def _show(retried: Retried, *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(_retried_json(retried)))
        return
    command = retried.command
    typer.echo(
        f"retried {retried.original.command_id} ({retried.original.state.value}) as "
        f"{command.command_id}: issued_at {command.issued_at.isoformat()}, "
        f"source {command.source}"
    )


def _retried_json(retried: Retried) -> dict[str, Any]:
    return {
        "command_id": retried.original.command_id,
        "state": retried.original.state.value,
        "retry_id": retried.command.command_id,
        "refused": None,
        "command": retried.command.model_dump(mode="json"),
    }


def _refused_json(refusal: RetryRefused) -> dict[str, Any]:
    return {
        "command_id": refusal.command_id,
        "state": None if refusal.state is None else refusal.state.value,
        "retry_id": None,
        "refused": refusal.reason,
        "command": None,
    }


@dataclass
class _Tally:
    retried: int = 0
    refused: list[RetryRefused] = field(default_factory=list)
    skipped: int = 0

    def describe(self) -> str:
        return (
            f"retried {self.retried}, refused {len(self.refused)}, skipped {self.skipped} "
            "(rows not failed, expired or rejected)"
        )


def _retry_report(retrier: Retrier, path: Path, *, as_json: bool) -> int:
    """Retry the report's retryable rows, with progress; the exit status."""
    tally = _Tally()
    wanted = _retryable_rows(path, tally)
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("retrying"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("retrying", total=len(wanted))
        for command_id in wanted:
            _retry_row(retrier, command_id, tally, as_json=as_json, progress=progress)
            progress.advance(task)
    summary = tally.describe()
    if as_json:
        typer.echo(summary, err=True)
    else:
        typer.echo(summary)
    return ExitCode.FAILED if tally.refused else ExitCode.OK


def _retry_row(
    retrier: Retrier, command_id: str, tally: _Tally, *, as_json: bool, progress: Progress
) -> None:
    try:
        retried = retrier.retry(command_id)
    except RetryRefused as refusal:
        tally.refused.append(refusal)
        line = json.dumps(_refused_json(refusal)) if as_json else f"refused {refusal}"
    else:
        tally.retried += 1
        line = (
            json.dumps(_retried_json(retried))
            if as_json
            else f"{command_id} -> {retried.command.command_id}"
        )
    if progress.console.is_terminal and not as_json:
        progress.console.print(line, markup=False, highlight=False, soft_wrap=True)  # above the bar
    else:
        typer.echo(line)


def _retryable_rows(path: Path, tally: _Tally) -> list[str]:
    """The command ids of the report's failed, expired and rejected rows, once each."""
    wanted: dict[str, None] = {}
    for row in _report_rows(path):
        command_id, outcome = row.get("command_id") or "", row.get("outcome") or ""
        if command_id and outcome in RETRIED_OUTCOMES:
            wanted[command_id] = None
        else:
            tally.skipped += 1
    return list(wanted)


def _report_rows(path: Path) -> Iterator[dict[str, str]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("command_id", "outcome") if c not in (reader.fieldnames or [])]
            if missing:
                raise InvalidInput(
                    f"{path}: not a `subswitch batch --report` file (columns "
                    f"{', '.join(REPORT_COLUMNS)}): no {', '.join(missing)}"
                )
            yield from reader
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"{path}: cannot read the report: {exc}") from None
