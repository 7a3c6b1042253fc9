"""Following a batch's results: pending ids, the wait loop, the tally, the report."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from producers.batch import RowError, generated_command_id
from producers.batch_results import BatchReport, PendingCommands, ResultTally, await_results
from subswitch.contract import ChangeBlockStatus, EventError, Outcome, ResultEvent
from tests.producers.helpers import event_for

BATCH = "0123456789abcdef"


def command(command_id: str) -> ChangeBlockStatus:
    return ChangeBlockStatus(
        command_id=command_id, org_id="telco", subscription_id=5, block_id=1, active=True,
        source="tests", priority="bulk",
    )  # fmt: skip


def event(command_id: str, outcome: Outcome = Outcome.APPLIED, **fields: object) -> ResultEvent:
    return event_for(command(command_id), outcome, **fields)


class ScriptedEvents:
    """An EventSource whose n-th ``iter()`` call yields the n-th list, then times out."""

    def __init__(self, *rounds: list[ResultEvent]) -> None:
        self.rounds = list(rounds)
        self.timeouts: list[float | None] = []

    def iter(self, *, timeout: float | None = None) -> Iterator[ResultEvent]:
        self.timeouts.append(timeout)
        if self.rounds:
            yield from self.rounds.pop(0)


def test_pending_commands_answer_each_id_once() -> None:
    # Given two generated ids and one given in the file
    pending = PendingCommands(BATCH)
    pending.add(generated_command_id(BATCH, 2), 2)
    pending.add(generated_command_id(BATCH, 1_000_000), 1_000_000)
    pending.add("my-own-id", 4)
    assert len(pending) == 3
    # When results arrive, one twice, and some of other commands
    lines = [
        pending.pop(generated_command_id(BATCH, 2)),
        pending.pop(generated_command_id(BATCH, 2)),
        pending.pop("my-own-id"),
        pending.pop(generated_command_id("another-batch", 3)),
        pending.pop(generated_command_id(BATCH, 3)),
        pending.pop(None),
    ]
    # Then each waiting command gives its line once; the rest are not ours
    assert lines == [2, None, 4, None, None, None]
    assert list(pending.remaining()) == [(generated_command_id(BATCH, 1_000_000), 1_000_000)]
    assert len(pending) == 1


def test_a_given_id_that_looks_generated_keeps_its_own_line() -> None:
    # Given a row on line 7 whose file-given id is the generated id of line 3
    pending = PendingCommands(BATCH)
    pending.add(generated_command_id(BATCH, 3), 7)
    # When its result arrives / Then line 7 is reported
    assert pending.pop(generated_command_id(BATCH, 3)) == 7


def test_generated_ids_cost_about_a_byte_each() -> None:
    # Given a million generated ids waiting
    pending = PendingCommands(BATCH)
    for line in range(2, 1_000_002):
        pending.add(generated_command_id(BATCH, line), line)
    # Then they live in one bytearray of about a million bytes, not a dict
    assert len(pending) == 1_000_000
    assert len(pending._generated) == 1_000_002
    assert not pending._given


def test_await_results_stops_once_every_command_has_its_result() -> None:
    # Given two pending commands and events: another command's, ours, a repeat, ours
    pending = PendingCommands(BATCH)
    pending.add("a", 2)
    pending.add("b", 3)
    source = ScriptedEvents(
        [event("other"), event("a", Outcome.FAILED)],
        [event("a"), event("b")],
        [event("never-read")],
    )
    seen: list[tuple[int, str | None, Outcome]] = []
    # When awaiting
    await_results(
        source,
        pending,
        lambda line, e: seen.append((line, e.data.command_id, e.outcome)),
        idle_timeout=5,
    )
    # Then each command's first result was taken once, and the wait ended at once
    assert seen == [(2, "a", Outcome.FAILED), (3, "b", Outcome.APPLIED)]
    assert len(pending) == 0
    assert [[e.data.command_id for e in r] for r in source.rounds] == [["never-read"]]


def test_await_results_gives_up_after_a_silence_not_a_duration() -> None:
    # Given three pending commands; results for two, then silence
    pending = PendingCommands(BATCH)
    for line, command_id in enumerate("abc", start=2):
        pending.add(command_id, line)
    source = ScriptedEvents([event("a")], [event("other"), event("b")])
    # When awaiting with an idle timeout of 7 s
    await_results(source, pending, lambda line, e: None, idle_timeout=7)
    # Then every iter() got the full 7 s again (the clock restarts after each result),
    # and the silent third round ended the wait with "c" still pending
    assert source.timeouts == [7, 7, 7]
    assert list(pending.remaining()) == [("c", 4)]


def test_tally_counts_outcomes_and_failures() -> None:
    # Given results of every outcome
    tally = ResultTally()
    for outcome in [Outcome.APPLIED, Outcome.APPLIED, Outcome.SUPERSEDED, Outcome.EXPIRED]:
        tally.add(outcome)
    # Then failures are the outcomes other than applied and superseded
    assert tally.failed == 1
    assert tally.describe() == "applied 2, failed 0, rejected 0, superseded 1, expired 1"


def test_report_has_one_row_per_row_of_the_batch(tmp_path: Path) -> None:
    # Given a report
    path = tmp_path / "out.csv"
    with BatchReport(path) as report:
        # When rows of every kind are written
        report.invalid(RowError(3, "block_id: Input should be less than or equal to 2"))
        report.enqueued("x", 4)
        report.result(5, event("y", Outcome.APPLIED, upstream_status=201))
        error = EventError(code=404, status="NOT_FOUND", message="no such subscription")
        report.result(6, event("z", Outcome.FAILED, upstream_status=404, error=error))
        report.pending("w", 7, "no result within 60 s of the previous one")
    # Then it is a CSV with the documented columns and one row each
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["command_id", "line", "outcome", "upstream_status", "error"],
        ["", "3", "invalid", "", "block_id: Input should be less than or equal to 2"],
        ["x", "4", "enqueued", "", ""],
        ["y", "5", "applied", "201", ""],
        ["z", "6", "failed", "404", "code=404 status=NOT_FOUND no such subscription"],
        ["w", "7", "pending", "", "no result within 60 s of the previous one"],
    ]
