"""How the CLI shows result events: a one-line summary, table rows, or JSON lines."""

from __future__ import annotations

from datetime import UTC

from rich.console import Console
from rich.table import Table
from rich.text import Text

from contract import EventError, Outcome, ResultEvent

OUTCOME_STYLES = {
    Outcome.APPLIED: "green",
    Outcome.SUPERSEDED: "cyan",
    Outcome.FAILED: "red",
    Outcome.REJECTED: "red",
    Outcome.EXPIRED: "yellow",
}
_COLUMNS = (
    ("time", 23),
    ("outcome", 10),
    ("command_id", 36),
    ("type", 19),
    ("subject", 40),
    ("http", 4),
    ("tries", 5),
    ("error", 20),
)


def describe_error(error: EventError | None) -> str:
    """The error of an event on one line, empty if there is none."""
    if error is None:
        return ""
    fields = [
        f"code={error.code}" if error.code is not None else "",
        f"status={error.status}" if error.status else "",
        error.message,
        f"({error.detail_msg})" if error.detail_msg else "",
    ]
    return " ".join(field for field in fields if field)


def summary(event: ResultEvent) -> Text:
    """``applied (upstream 201, 2 attempts)`` plus the error, if any, on one line."""
    data = event.data
    details = [f"upstream {data.upstream_status}"] if data.upstream_status is not None else []
    details.append(f"{data.attempts} attempt{'s' if data.attempts != 1 else ''}")
    text = Text(data.outcome.value, style=OUTCOME_STYLES[data.outcome])
    text.append(f" ({', '.join(details)})")
    if data.error is not None:
        text.append(f": {describe_error(data.error)}")
    return text


def json_line(event: ResultEvent) -> str:
    """The event as one compact JSON object, as published (``detailMsg`` spelling)."""
    return event.to_json().decode()


class EventTable:
    """Prints one aligned table row per event, with a header above the first."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._header_shown = False

    def add(self, event: ResultEvent) -> None:
        """Print ``event`` as a row."""
        table = Table(box=None, show_header=not self._header_shown, pad_edge=False)
        for name, width in _COLUMNS:
            table.add_column(name.upper(), min_width=width, no_wrap=True, overflow="ellipsis")
        table.add_row(*_cells(event))
        self._console.print(table)
        self._header_shown = True


def _cells(event: ResultEvent) -> list[str | Text]:
    data = event.data
    moment = event.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
    return [
        moment,
        Text(data.outcome.value, style=OUTCOME_STYLES[data.outcome]),
        data.command_id or "?",
        data.command_type or "?",
        event.subject,
        "" if data.upstream_status is None else str(data.upstream_status),
        str(data.attempts),
        describe_error(data.error),
    ]
