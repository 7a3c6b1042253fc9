"""``subswitch status``: its one-line refusals, and the table people read."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from subswitch.contract import Outcome, result_event
from subswitch.status import CommandState, CommandStatus
from subswitch.status_cli import moment, register, status_table
from tests.subswitch.records import ISSUED, block


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    register(app)
    app.command("noop")(lambda: None)  # a group, so `status` is a subcommand
    return app


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SUBSWITCH_BROKER_URL", "SUBSWITCH_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUBSWITCH_DATA_DIR", str(tmp_path))


def test_a_broker_url_without_a_store_url_names_the_missing_variable(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a fleet's broker URL but no store URL (contract §2.7)
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", "redis://127.0.0.1:1/0")
    # When a status is asked
    result = CliRunner().invoke(app, ["status", "case-1"])
    # Then one line names the variable, exit 2, and no private embedded store started
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: invalid configuration: SUBSWITCH_STORE_URL is not set")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "redis.sock").exists()


def test_an_unreachable_store_is_exit_3(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a store nobody listens on / When a status is asked / Then one line, exit 3
    monkeypatch.setenv("SUBSWITCH_STORE_URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(app, ["status", "case-1", "--json"])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: store unavailable")


def test_what_is_no_command_id_is_bad_input(app: typer.Typer) -> None:
    # Given an id with a space / When its status is asked / Then exit 2, one line
    result = CliRunner().invoke(app, ["status", "no such id"])
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: not a command id: 'no such id'\n"


def render(found: CommandStatus, now: datetime) -> dict[str, str]:
    """The table's rows, name -> value."""
    console = Console(width=200, record=True, color_system=None, file=io.StringIO())
    console.print(status_table(found, now=now))
    rows = [
        re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in console.export_text().splitlines()
    ]
    return {row[0]: row[1] for row in rows}


def test_the_table_shows_a_waiting_command_with_its_next_attempt() -> None:
    # Given a waiting command's status
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    found = CommandStatus(
        command_id="case-1",
        state=CommandState.WAITING,
        attempts=2,
        since=now - timedelta(seconds=3),
        next_attempt_at=now + timedelta(seconds=1.5),
        last_error="upstream 503: Service Unavailable",
        found_in="store",
    )
    # When rendered / Then each fact is a row, times with how far from now
    rows = render(found, now)
    assert rows["state"] == "waiting  (an attempt failed; it is tried again)"
    assert rows["attempts"] == "2"
    assert rows["next attempt"] == "2026-12-01T10:00:01.500Z (in 1.5 s)"
    assert rows["since"] == "2026-12-01T09:59:57.000Z (3.0 s ago)"
    assert rows["error"] == "upstream 503: Service Unavailable"


def test_the_table_shows_an_outcome_with_its_event() -> None:
    # Given an applied command's status from the archive
    event = result_event(
        block(), outcome=Outcome.APPLIED, attempts=1, completed_at=ISSUED, upstream_status=201
    )
    found = CommandStatus(
        command_id="case-1",
        state=CommandState.APPLIED,
        attempts=1,
        since=ISSUED,
        event=event,
        found_in="archive",
    )
    # When rendered / Then what, who and why are there
    rows = render(found, ISSUED)
    assert rows["what"] == (
        "ChangeBlockStatus orgs/telco/subscriptions/7/blocks/1 active=true reason='stolen'"
    )
    assert (rows["upstream"], rows["source"], rows["correlation"]) == (
        "201",
        "fraud-engine",
        "case-8812",
    )
    assert (rows["event id"], rows["from"]) == (event.id, "the archive")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(1.5, "in 1.5 s"), (-119.0, "119.0 s ago"), (-600, "10 min ago"), (-3 * 86_400, "3 d ago")],
)
def test_times_say_how_far_from_now(seconds: float, shown: str) -> None:
    # Given a moment some seconds from now / When shown / Then in the largest fitting unit
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert moment(now + timedelta(seconds=seconds), now).endswith(f"({shown})")
