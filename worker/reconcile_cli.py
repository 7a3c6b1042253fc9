"""``subswitch reconcile``: does the upstream still hold the newest applied intent?

Reads the targets named in a file (``--targets``) or every target of an org the store
holds a watermark for (``--org``, optionally only those whose newest applied command
was issued at or after ``--since``), compares each with the upstream and reports it.
``--repair`` enqueues each drifted target's newest intent again. The enqueueing side
is given by the top-level CLI (the worker never imports the producers).

Exit status: 0 nothing drifted (or, with --repair, every drift got its repair
enqueued); 1 drift left, or a target could not be read; 2 bad input; 3 store, broker
or upstream unreachable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Final, Protocol

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from subswitch.audit import EventArchive
from subswitch.commandline import ExitCode, OneLineErrors, fail, read_settings
from subswitch.contract import ORG_ID_PATTERN, AnyCommand, Target
from subswitch.errors import InvalidInput
from subswitch.redis_client import redis_client
from subswitch.settings import Settings
from subswitch.text import safe_line
from subswitch.urls import resolve_endpoints
from worker import upstream
from worker.reconcile import (
    Drift,
    Reconciler,
    StoreIntents,
    TargetReport,
    Totals,
    grouped,
    read_targets,
)
from worker.store import LuaScripts
from worker.traffic import RateLimiter

_EPILOG: Final = (
    "Exit status: 0 no drift (with --repair: every drift's repair enqueued); 1 drift "
    "left or a target unreadable; 2 bad input; 3 store, broker or upstream unreachable."
)
_RELATIVE: Final = re.compile(r"^(\d+)([smhd])$")
_PIPED_WIDTH: Final = 200
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class Enqueuer(Protocol):
    """What ``--repair`` enqueues through (the producers' publisher)."""

    def publish(self, command: AnyCommand) -> None:
        """Enqueue ``command`` on its lane; return once the broker accepted it."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


OpenEnqueuer = Callable[[Settings], Enqueuer]
OpenArchive = Callable[[Settings], EventArchive | None]


def register(
    app: typer.Typer, *, open_enqueuer: OpenEnqueuer, open_archive: OpenArchive | None = None
) -> None:
    """Add ``subswitch reconcile`` to the CLI; repairs go through ``open_enqueuer``,
    and intents the store has forgotten are looked up in ``open_archive``'s archive."""

    def reconcile(
        targets: Annotated[
            Path | None,
            typer.Option("--targets", help="CSV file: org_id,subscription_id,kind,id per line."),
        ] = None,
        org: Annotated[
            str | None, typer.Option("--org", help="Every target of this org the store knows.")
        ] = None,
        since: Annotated[
            str | None,
            typer.Option(help="With --org: changed since (RFC 3339, or 30m, 24h, 7d ago)."),
        ] = None,
        repair: Annotated[
            bool, typer.Option("--repair", help="Enqueue each drifted target's intent again.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    ) -> None:
        """Compare each target's newest applied intent with the upstream; report drift."""
        if (targets is None) == (org is None):
            fail("give --targets FILE or --org ORG (one of them)", ExitCode.BAD_INPUT)
        if since is not None and org is None:
            fail("--since goes with --org", ExitCode.BAD_INPUT)
        if org is not None and not re.fullmatch(ORG_ID_PATTERN, org):
            fail(f"--org: {safe_line(org, limit=70)!r} is no org id", ExitCode.BAD_INPUT)
        settings = read_settings()
        with ExitStack() as stack:
            archive = open_archive(settings) if open_archive else None
            enqueuer = stack.enter_context(_closing(open_enqueuer(settings))) if repair else None
            reports = _run(
                settings, stack, targets_file=targets, org=org, since=since,
                archive=archive, enqueuer=enqueuer, quiet=as_json,
            )  # fmt: skip
        raise typer.Exit(_show(reports, as_json=as_json, repair=repair))

    app.command("reconcile", cls=OneLineErrors, epilog=_EPILOG)(reconcile)


@contextmanager
def _closing(enqueuer: Enqueuer) -> Iterator[Enqueuer]:
    try:
        yield enqueuer
    finally:
        enqueuer.close()


def _run(
    settings: Settings,
    stack: ExitStack,
    *,
    targets_file: Path | None,
    org: str | None,
    since: str | None,
    archive: EventArchive | None,
    enqueuer: Enqueuer | None,
    quiet: bool,
) -> list[TargetReport]:
    store_url = resolve_endpoints(settings).store_url
    client = redis_client(store_url, timeout_s=5)
    stack.callback(client.close)
    intents = StoreIntents(client=client, archive=archive)
    if targets_file is not None:
        chosen = read_targets(targets_file)
    else:
        assert org is not None
        chosen = grouped(intents.targets_of(org, since=parse_since(since)))
    reader = stack.enter_context(upstream.from_settings(settings))
    limiter = (
        RateLimiter(scripts=LuaScripts(client=client), rate_per_s=settings.rate_limit)
        if settings.rate_limit
        else None
    )
    reconciler = Reconciler(
        intents=intents,
        upstream=reader,
        acquire=limiter.acquire if limiter else None,
        enqueue=enqueuer.publish if enqueuer else None,
        watermark=intents.watermark,
        in_flight=intents.in_flight,
    )
    return _with_progress(reconciler, chosen, quiet=quiet)


def parse_since(since: str | None, *, now: datetime | None = None) -> datetime | None:
    """``--since``: an RFC 3339 time with its offset, or a duration ago (``24h``).

    Raises:
        InvalidInput: neither.
    """
    if since is None:
        return None
    relative = _RELATIVE.match(since.strip())
    if relative:
        amount = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        return (now or datetime.now(UTC)) - amount
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise InvalidInput(f"--since: {safe_line(since, limit=60)!r} is no time") from None
    if moment.tzinfo is None:
        raise InvalidInput("--since: give the time with its offset (2026-12-01T00:00:00Z)")
    return moment


def _with_progress(
    reconciler: Reconciler, targets: list[Target], *, quiet: bool
) -> list[TargetReport]:
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("reconciling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=quiet or not console.is_terminal, transient=True,
    )  # fmt: skip
    reports: list[TargetReport] = []
    with progress:
        task = progress.add_task("targets", total=len(targets))
        for report in reconciler.reconcile(targets):
            reports.append(report)
            progress.advance(task)
    return reports


def _show(reports: list[TargetReport], *, as_json: bool, repair: bool) -> int:
    totals = Totals()
    for report in reports:
        totals.add(report)
    if as_json:
        document = {"targets": [r.to_json() for r in reports], "totals": totals.to_json()}
        typer.echo(json.dumps(document, indent=2))
    else:
        _table(reports, totals)
    left = totals.counts[Drift.DRIFTED.value] - totals.repaired
    trouble = left > 0 or totals.counts[Drift.UNREADABLE.value] > 0
    return ExitCode.FAILED if trouble else ExitCode.OK


def _table(reports: list[TargetReport], totals: Totals) -> None:
    console = report_console()
    table = Table("TARGET", "INTENT", "COMMAND_ID", "UPSTREAM", "DRIFT", "NOTE", box=None)
    for report in reports:
        cells = (
            report.target.subject,
            _on_off(report.intent.active if report.intent else None),
            report.intent.command_id if report.intent else "-",
            _on_off(report.upstream_active),
            {True: "yes", False: "no", None: "-"}[report.to_json()["drift"]],
            _note(report),
        )
        table.add_row(*(Text(safe_line(cell)) for cell in cells))
    console.print(table)
    counts = totals.to_json()
    console.print(
        f"{counts['targets']} target(s): {counts['in_sync']} in sync, {counts['drifted']} "
        f"drifted, {counts['repaired']} repair(s) enqueued, {counts['no_intent']} without "
        f"an applied intent, {counts['unreadable']} unreadable",
        markup=False,
    )


def report_console() -> Console:
    """A console for a report: the terminal's width, or wide when piped (a file or a
    pager gets whole lines; scripts use --json)."""
    console = Console(highlight=False, soft_wrap=False)
    return console if console.is_terminal else Console(highlight=False, width=_PIPED_WIDTH)


def _on_off(active: bool | None) -> str:
    return "-" if active is None else ("on" if active else "off")


def _note(report: TargetReport) -> str:
    if report.repair:
        return f"repair enqueued: {report.repair}"
    if report.not_repaired:
        return f"not repaired: {report.not_repaired}"
    if report.error:
        return report.error
    if report.verdict is Drift.NO_INTENT:
        return "no applied intent known"
    return ""
