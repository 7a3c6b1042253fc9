"""``subswitch status COMMAND_ID``: where a command is, as a table or as JSON.

It reads the workers' store (and the archive once the records expired), so it needs
``SUBSWITCH_STORE_URL`` wherever ``SUBSWITCH_BROKER_URL`` is set (contract §2.7); with
neither it reads the embedded store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from subswitch.commandline import ExitCode, OneLineErrors, fail, read_settings
from subswitch.contract import readable_command_id
from subswitch.status import (
    CommandState,
    CommandStatus,
    StatusReader,
    configured_archive,
    open_store,
)
from subswitch.urls import resolve_store_url

_EPILOG: Final = (
    "Exit status: 0 answered (every state, unknown included); 2 not a command id, or "
    "bad configuration (SUBSWITCH_STORE_URL missing where SUBSWITCH_BROKER_URL is set); "
    "3 store unreachable."
)
STATE_STYLES: Final = {
    CommandState.UNKNOWN: "dim",
    CommandState.QUEUED: "blue",
    CommandState.WAITING: "yellow",
    CommandState.SETTLING: "yellow",
    CommandState.IN_FLIGHT: "blue",
    CommandState.APPLIED: "green",
    CommandState.SUPERSEDED: "cyan",
    CommandState.FAILED: "red",
    CommandState.REJECTED: "red",
    CommandState.EXPIRED: "yellow",
}
_MEANING: Final = {
    CommandState.UNKNOWN: "nobody has seen this id: no record in the store or the archive",
    CommandState.QUEUED: "accepted by the broker, not yet taken by a worker",
    CommandState.WAITING: "an attempt failed; it is tried again",
    CommandState.SETTLING: "an answer was lost: the target is held until the write settles",
    CommandState.IN_FLIGHT: "an attempt is out upstream",
}


def register(app: typer.Typer) -> None:
    """Add ``subswitch status`` to the CLI."""
    app.command("status", cls=OneLineErrors, epilog=_EPILOG)(status)


def status(
    command_id: Annotated[str, typer.Argument(help="The command's id (idempotency key).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Where a command is: queued, waiting, settling, in flight, or its outcome."""
    if readable_command_id(command_id) is None:
        fail(f"not a command id: {command_id!r}", ExitCode.BAD_INPUT)
    settings = read_settings()
    client = open_store(resolve_store_url(settings))
    try:
        found = StatusReader(client=client, archive=configured_archive(settings)).status(command_id)
    finally:
        client.close()
    if as_json:
        typer.echo(found.model_dump_json(by_alias=True))
    else:
        Console(highlight=False, soft_wrap=True).print(status_table(found))


def status_table(found: CommandStatus, *, now: datetime | None = None) -> Table:
    """Two columns, what and value, for one command's status."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in _rows(found, now or datetime.now(UTC)):
        table.add_row(name, value)
    return table


def _rows(found: CommandStatus, now: datetime) -> list[tuple[str, Text | str]]:
    state = Text(found.state.value, style=STATE_STYLES[found.state])
    meaning = _MEANING.get(found.state)
    if meaning:
        state.append(f"  ({meaning})", style="dim")
    rows: list[tuple[str, Text | str]] = [("command", found.command_id), ("state", state)]
    if found.attempts is not None:
        rows.append(("attempts", str(found.attempts)))
    if found.since is not None:
        rows.append(("since", moment(found.since, now)))
    if found.next_attempt_at is not None:
        rows.append(("next attempt", moment(found.next_attempt_at, now)))
    if found.settle_until is not None:
        rows.append(("held until", moment(found.settle_until, now)))
    if found.last_error:
        rows.append(("error", Text(found.last_error, style="red")))
    rows.extend(_event_rows(found))
    if found.found_in is not None:
        rows.append(("from", f"the {found.found_in}"))
    if found.rejected_reuses:
        rows.append(("note", f"{found.rejected_reuses} other message(s) with this id rejected"))
    return rows


def _event_rows(found: CommandStatus) -> list[tuple[str, Text | str]]:
    if found.event is None:
        return []
    data = found.event.data
    what = f"{data.command_type or '?'} {found.event.subject}"
    if data.active is not None:
        what += f" active={str(data.active).lower()}"
    if data.reason:
        what += f" reason={data.reason!r}"
    rows: list[tuple[str, Text | str]] = [("what", what)]
    if data.upstream_status is not None:
        rows.append(("upstream", str(data.upstream_status)))
    if data.issued_at is not None:
        rows.append(("issued", _iso(data.issued_at)))
    for name, value in (
        ("source", data.source),
        ("correlation", data.correlation_id),
        ("event id", found.event.id),
    ):
        if value:
            rows.append((name, value))
    return rows


def moment(when: datetime, now: datetime) -> str:
    """``2026-12-01T10:00:02.120Z (in 1.6 s)``, ``(3.0 s ago)``, ``(5 min ago)``..."""
    delta = (when - now).total_seconds()
    span = _span(abs(delta))
    return f"{_iso(when)} ({f'in {span}' if delta >= 0 else f'{span} ago'})"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:.1f} s"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
