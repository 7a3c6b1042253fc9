"""``subswitch history`` through the real CLI, on both databases."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner, Result

from subswitch.archive.history import parse_time
from subswitch.archive.store import HISTORY_COLUMNS, SqlArchive
from subswitch.cli import app
from subswitch.contract import EventError, Outcome
from subswitch.errors import InvalidInput
from tests.subswitch.archive.conftest import T0, block, event_of

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-11-22T10:00:00Z", T0),
        ("2026-11-22T11:00:00+01:00", T0),
        ("2026-11-22T10:00:00", T0),
        ("2026-11-22", T0 - timedelta(hours=10)),
        ("2h", T0),
        ("90m", NOW - timedelta(minutes=90)),
        ("7d", NOW - timedelta(days=7)),
        ("now", NOW),
    ],
)
def test_times_are_read_as_people_write_them(text: str, instant: datetime) -> None:
    assert parse_time(text, option="--since", now=NOW) == instant


@pytest.mark.parametrize("text", ["yesterday", "7 days", "2026-13-01", "-3d", ""])
def test_a_bad_time_names_the_option(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^--until: .* is not a time"):
        parse_time(text, option="--until", now=NOW)


@pytest.fixture
def filled(archive: SqlArchive, archive_url: str, monkeypatch: pytest.MonkeyPatch) -> SqlArchive:
    """The stolen SIM's story on telco/101, plus a command on another subscription."""
    monkeypatch.setenv("SUBSWITCH_ARCHIVE_URL", archive_url)
    monkeypatch.setenv("COLUMNS", "200")
    stolen = block(issued_at=T0, command_id="fraud-case-8812-block")
    stale = block(issued_at=T0 - timedelta(hours=1), active=False, source="self-care",
                  correlation_id=None)  # fmt: skip
    unknown = block(subscription_id=999, issued_at=T0, source="billing", correlation_id="case-8812")
    failure = EventError(code=404, status="NOT_FOUND", message="subscription not found")
    archive.store([
        event_of(stolen),
        event_of(stale, outcome=Outcome.SUPERSEDED, completed_after=timedelta(hours=1, seconds=5)),
        event_of(unknown, outcome=Outcome.FAILED, error=failure),
    ])  # fmt: skip
    return archive


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["history", *args])


def test_a_subscription_history_for_people(filled: SqlArchive) -> None:
    # When the stolen SIM's history is asked for
    result = run("telco", "101")
    # Then both commands are there, oldest first, with what, who, why and the outcome
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["ISSUED_AT", "TARGET", "SET", "REASON"]
    assert "superseded" in lines[1] and "self-care" in lines[1] and "off" in lines[1]
    assert "applied" in lines[2] and "fraud-case-8812-block" in lines[2]
    assert "case-8812" in lines[2] and "stolen" in lines[2]
    assert len(lines) == 3


def test_json_lines_and_csv_carry_every_column(filled: SqlArchive) -> None:
    # When the same history is exported as JSON lines and as CSV
    as_json = run("telco", "101", "--json", "--since", "2026-11-22T09:30:00Z")
    as_csv = run("telco", "101", "--csv")
    # Then JSON has one object per command (in the window) and CSV a header and rows
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [record["command_id"] for record in records] == ["fraud-case-8812-block"]
    assert records[0]["issued_at"] == "2026-11-22T10:00:00+00:00"
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(rows[0]) == list(HISTORY_COLUMNS)
    assert [(row["outcome"], row["active"]) for row in rows] == [
        ("superseded", "false"),
        ("applied", "true"),
    ]


def test_audit_exports_by_correlation_id_and_source(filled: SqlArchive) -> None:
    # When exported by correlation id, and by source since a time
    by_case = run("--correlation-id", "case-8812", "--json")
    by_source = run("--source", "billing", "--since", "2026-11-01", "--csv")
    # Then each holds its commands across subscriptions, the failure with its error
    assert [json.loads(line)["subscription_id"] for line in by_case.stdout.splitlines()] == [
        101,
        999,
    ]
    rows = list(csv.DictReader(io.StringIO(by_source.stdout)))
    assert [row["error"] for row in rows] == ["code=404 status=NOT_FOUND subscription not found"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["telco", "101", "--since", "yesterday"], "error: --since: 'yesterday' is not a time"),
        (["telco", "101", "--since", "1h", "--until", "2h"], "error: --since must be before"),
        (["telco"], "error: missing SUBSCRIPTION"),
        (["tel/co", "101"], "error: ORG: 'tel/co' is not an org id"),
        (["telco", "0"], "error: "),
        (["telco", "101", "--json", "--csv"], "error: --json and --csv"),
        (["--source", "billing", "--correlation-id", "x"], "error: give ORG SUBSCRIPTION"),
        ([], "error: give ORG SUBSCRIPTION"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    filled: SqlArchive, args: list[str], message: str
) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1


def test_an_unreachable_archive_is_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an archive URL nobody answers, with a password
    monkeypatch.setenv("SUBSWITCH_ARCHIVE_URL", "postgresql://app:hunter2@127.0.0.1:1/subswitch")
    # When a history is asked for
    result = run("telco", "101")
    # Then one line says so, without the password
    assert result.exit_code == 3
    assert result.stderr.startswith("error: archive postgresql://app:***@127.0.0.1:1/subswitch")
    assert "hunter2" not in result.stderr
