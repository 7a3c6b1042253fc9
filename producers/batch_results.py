"""Following a batch's results: which commands still wait, the tally, the CSV report.

Nothing here talks to a broker either: ``await_results`` reads any ``EventSource``
(an ``EventStream`` in the CLI, a list in tests).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self

from producers.batch import LINE_DIGITS, RowError, generated_command_id
from producers.render import describe_error
from subswitch.contract import Outcome, ResultEvent

REPORT_COLUMNS: Final = ("command_id", "line", "outcome", "upstream_status", "error")
#: Report outcomes besides the contract's: a row that is no command, a command sent
#: without ``--wait``, and one whose result did not come in time.
INVALID: Final = "invalid"
ENQUEUED: Final = "enqueued"
PENDING: Final = "pending"
SUCCESSFUL: Final = frozenset({Outcome.APPLIED, Outcome.SUPERSEDED})


class PendingCommands:
    """The commands of a batch still without a result: command id -> line.

    Generated ids (``batch-<id>-<line>``) cost one byte each, their line is in the
    id; ids given in the file are kept in a dict (about 150 bytes each).
    """

    def __init__(self, batch_id: str) -> None:
        self._batch_id = batch_id
        self._prefix = f"batch-{batch_id}-"
        self._generated = bytearray()  # index: line; 1 while that row's command waits
        self._waiting_generated = 0
        self._given: dict[str, int] = {}

    def add(self, command_id: str, line: int) -> None:
        """Wait for ``command_id``, the command of the row on ``line``."""
        if generated_command_id(self._batch_id, line) != command_id:
            self._given[command_id] = line
            return
        if len(self._generated) <= line:
            self._generated.extend(bytes(line + 1 - len(self._generated)))
        if not self._generated[line]:
            self._generated[line] = 1
            self._waiting_generated += 1

    def pop(self, command_id: str | None) -> int | None:
        """The line of ``command_id`` if it was waiting (it waits no more), else None."""
        if command_id is None:
            return None
        line = self._given.pop(command_id, None)
        if line is not None:
            return line
        line = self._generated_line(command_id)
        if line is None or line >= len(self._generated) or not self._generated[line]:
            return None
        self._generated[line] = 0
        self._waiting_generated -= 1
        return line

    def remaining(self) -> Iterator[tuple[str, int]]:
        """``(command_id, line)`` of every command still waiting, by line for generated ids."""
        for line, waiting in enumerate(self._generated):
            if waiting:
                yield generated_command_id(self._batch_id, line), line
        yield from self._given.items()

    def __len__(self) -> int:
        return self._waiting_generated + len(self._given)

    def _generated_line(self, command_id: str) -> int | None:
        digits = command_id[len(self._prefix) :]
        if not command_id.startswith(self._prefix) or len(digits) != LINE_DIGITS:
            return None
        return int(digits) if digits.isascii() and digits.isdigit() else None


class ResultTally:
    """How many commands of the batch ended with each outcome, and the exit status."""

    def __init__(self) -> None:
        self.outcomes: Counter[Outcome] = Counter()

    def add(self, outcome: Outcome) -> None:
        """Count one result."""
        self.outcomes[outcome] += 1

    @property
    def failed(self) -> int:
        """Results other than applied or superseded."""
        return sum(n for outcome, n in self.outcomes.items() if outcome not in SUCCESSFUL)

    def describe(self) -> str:
        """``applied 98, superseded 0, failed 2, rejected 0, expired 0``."""
        return ", ".join(f"{outcome.value} {self.outcomes[outcome]}" for outcome in Outcome)


class BatchReport:
    """The ``--report`` CSV: one row per data row, written as soon as its fate is known
    (invalid rows first, then commands in the order their results arrive)."""

    def __init__(self, path: Path) -> None:
        """Create (or truncate) ``path``; raises OSError if it cannot be written."""
        self._handle = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(REPORT_COLUMNS)

    def invalid(self, error: RowError) -> None:
        """A row that is no valid command; nothing was sent for it."""
        self._writer.writerow(("", error.line, INVALID, "", error.reason))

    def enqueued(self, command_id: str, line: int) -> None:
        """A command handed to the broker, its outcome not followed."""
        self._writer.writerow((command_id, line, ENQUEUED, "", ""))

    def result(self, line: int, event: ResultEvent) -> None:
        """A command's result event."""
        data = event.data
        status = "" if data.upstream_status is None else data.upstream_status
        row = (data.command_id, line, data.outcome.value, status, describe_error(data.error))
        self._writer.writerow(row)

    def pending(self, command_id: str, line: int, why: str) -> None:
        """A command whose result did not arrive while the CLI waited."""
        self._writer.writerow((command_id, line, PENDING, "", why))

    def close(self) -> None:
        """Flush and close the file."""
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class EventSource(Protocol):
    """Where result events come from (``producers.EventStream``)."""

    def iter(self, *, timeout: float | None = None) -> Iterator[ResultEvent]:
        """Events as they arrive, until ``timeout`` seconds have passed."""
        ...


def await_results(
    events: EventSource,
    pending: PendingCommands,
    on_result: Callable[[int, ResultEvent], None],
    *,
    idle_timeout: float,
) -> None:
    """Take events until every pending command has its result, or none came for
    ``idle_timeout`` seconds; ``on_result(line, event)`` for each of the batch's.

    A batch may take hours upstream: only silence ends the wait, not its length.
    Events of other commands, and repeated events, are skipped.
    """
    while len(pending):
        for event in events.iter(timeout=idle_timeout):
            line = pending.pop(event.data.command_id)
            if line is not None:
                on_result(line, event)
                break  # progress: a new iter() restarts the idle clock
        else:
            return
