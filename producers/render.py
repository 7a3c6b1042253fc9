"""How the CLI shows result events: a one-line summary, table rows, or JSON lines."""

from __future__ import annotations

from datetime import UTC

from rich.console import Console
from rich.text import Text

from subswitch.contract import EventError, Outcome, ResultEvent

OUTCOME_STYLES = {
    Outcome.APPLIED: "green",
    Outcome.SUPERSEDED: "cyan",
    Outcome.FAILED: "red",
    Outcome.REJECTED: "red",
    Outcome.EXPIRED: "yellow",
}
#: Fixed-width columns, so rows printed one at a time line up; the rest follows.
_COLUMNS = (
    ("TIME", 24),
    ("OUTCOME", 10),
    ("HTTP", 4),
    ("TRIES", 5),
    ("COMMAND_ID", 36),
    ("TYPE", 19),
)
_TAIL = ("SUBJECT", "ERROR")
_GAP = "  "


def describe_error(error: EventError | None) -> str:
    """The error of an event on one line, empty if there is none."""
    return "" if error is None else error.one_line()


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
    """Prints one aligned row per event as it arrives, under a header.

    Rows are never wrapped nor cropped (soft wrap): one event, one line, whole.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._header_shown = False

    def add(self, event: ResultEvent) -> None:
        """Print ``event`` as a row (and the header before the first)."""
        if not self._header_shown:
            header = [name for name, _ in _COLUMNS] + list(_TAIL)
            self._print(_row([Text(name, style="bold") for name in header]))
            self._header_shown = True
        self._print(_row(_cells(event)))

    def _print(self, line: Text) -> None:
        self._console.print(line, soft_wrap=True)


def _row(cells: list[Text]) -> Text:
    line = Text()
    for index, cell in enumerate(cells):
        padded = cell.copy()
        if index < len(_COLUMNS):
            padded.pad_right(max(0, _COLUMNS[index][1] - cell.cell_len))
        line.append_text(padded)
        line.append(_GAP)
    line.rstrip()
    return line


def _cells(event: ResultEvent) -> list[Text]:
    data = event.data
    moment = event.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
    return [
        Text(moment),
        Text(data.outcome.value, style=OUTCOME_STYLES[data.outcome]),
        Text("-" if data.upstream_status is None else str(data.upstream_status)),
        Text(str(data.attempts)),
        Text(data.command_id or "?"),
        Text(data.command_type or "?"),
        Text(event.subject),
        Text(describe_error(data.error), style="red"),
    ]
