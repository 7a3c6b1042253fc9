"""What ``subswitch history`` shows: times as people write them, and the rows as a
table (streamed, aligned), JSON lines or CSV, never all in memory."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Final, TextIO

from rich.console import Console
from rich.text import Text

from subswitch.archive.store import HISTORY_COLUMNS, ArchivedCommand
from subswitch.errors import InvalidInput

_AGE: Final = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_OUTCOME_STYLES: Final = {
    "applied": "green",
    "superseded": "cyan",
    "failed": "red",
    "rejected": "red",
    "expired": "yellow",
}
_GAP: Final = "  "


def parse_time(text: str, *, option: str, now: datetime) -> datetime:
    """``text`` as an aware instant: RFC 3339 / ISO 8601 (``2026-11-22T10:00:00Z``;
    without an offset it is UTC), a date (``2026-11-22``, midnight UTC), ``now``, or an
    age (``90s``, ``30m``, ``12h``, ``7d``, ``2w`` before ``now``).

    Raises:
        InvalidInput: naming ``option``.
    """
    value = text.strip()
    if value == "now":
        return now
    if age := _AGE.match(value):
        return now - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{option}: {text!r} is not a time; use RFC 3339 (2026-11-22T10:00:00Z), "
            "a date (2026-11-22) or an age (30m, 12h, 7d)"
        ) from None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


def write_json_lines(rows: Iterable[ArchivedCommand], out: TextIO) -> Iterator[int]:
    """One JSON object per row; yields the running count (for progress)."""
    for count, row in enumerate(rows, 1):
        out.write(json.dumps(row.record(), ensure_ascii=False) + "\n")
        yield count


def write_csv(rows: Iterable[ArchivedCommand], out: TextIO) -> Iterator[int]:
    """A header, then one line per row (RFC 4180); yields the running count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for count, row in enumerate(rows, 1):
        record = row.record()
        writer.writerow([_csv_value(record[name]) for name in HISTORY_COLUMNS])
        yield count


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):  # as in the JSON, not Python's True
        return "true" if value else "false"
    return value


class HistoryTable:
    """Aligned rows for people, printed as they stream in (one command, one line)."""

    def __init__(self, console: Console, *, with_subscription: bool) -> None:
        self._console = console
        self._columns: list[tuple[str, int]] = [("ISSUED_AT", 20)]
        if with_subscription:
            self._columns.append(("SUBSCRIPTION", 16))
        self._columns += [
            ("TARGET", 9),
            ("SET", 3),
            ("REASON", 10),
            ("SOURCE", 16),
            ("CORRELATION", 12),
            ("OUTCOME", 10),
            ("TRIES", 5),
            ("HTTP", 4),
            ("COMMAND_ID", 36),
        ]
        self._with_subscription = with_subscription
        self.count = 0

    def add(self, row: ArchivedCommand) -> None:
        """Print ``row`` (after the header, for the first)."""
        if not self.count:
            names = [name for name, _ in self._columns] + ["ERROR"]
            self._print([Text(name, style="bold") for name in names])
        self.count += 1
        self._print(self._cells(row))

    def _cells(self, row: ArchivedCommand) -> list[Text]:
        cells = [Text(_when(row.issued_at))]
        if self._with_subscription:
            cells.append(Text(f"{row.org_id}/{row.subscription_id}"))
        cells += [
            Text(f"{row.target_kind} {row.target_id}" if row.target_kind else "?"),
            Text("?" if row.active is None else "on" if row.active else "off"),
            Text(row.reason or ""),
            Text(row.source or ""),
            Text(row.correlation_id or ""),
            Text(row.outcome, style=_OUTCOME_STYLES.get(row.outcome, "")),
            Text(str(row.attempts)),
            Text("" if row.upstream_status is None else str(row.upstream_status)),
            Text(row.command_id or ""),
            Text(row.error or ""),
        ]
        return cells

    def _print(self, cells: list[Text]) -> None:
        line = Text()
        for cell, (_, width) in zip(cells, self._columns, strict=False):
            line.append_text(cell)
            line.append(" " * max(0, width - len(cell)) + _GAP)
        line.append_text(cells[-1])
        self._console.print(line, soft_wrap=True, highlight=False)


def _when(stamp: datetime | None) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if stamp else "?"
