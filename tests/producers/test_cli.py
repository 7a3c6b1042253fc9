"""The producer side of the ``subswitch`` CLI: one-line errors, exit codes, --wait, events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from producers.cli import register
from subswitch.contract import (
    ChangeBlockStatus,
    ChangeServiceStatus,
    EventError,
    Lane,
    Outcome,
    ResultEvent,
)
from tests.producers.helpers import event_for, fake_worker, receive, repeating_events

UNREACHABLE = "redis://:s3cret@127.0.0.1:1/0"


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    register(app)
    return app


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never the developer's settings, never an embedded broker in their home.
    for name in ("SUBSWITCH_SOURCE", "SUBSWITCH_BROKER_URL", "SUBSWITCH_VISIBILITY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUBSWITCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", UNREACHABLE)


def run(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output
    assert "s3cret" not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["block", "te/lco", "5", "--block-id", "1"], "org_id: String should match pattern"),
        (["block", "telco", "5", "--block-id", "3"], "block_id: Input should be less than or"),
        (["unblock", "telco", "0", "--block-id", "1"], "subscription_id: Input should be greater"),
        (["activate", "telco", "5", "0"], "service_id: Input should be greater than or equal"),
        (["deactivate", "telco", "abc", "7"], "'subscription_id'"),
        (["block", "telco", "5"], "Missing option '--block-id'"),
        (["block", "telco", "5", "--block-id", "1", "--issued-at", "yesterday"], "issued_at:"),
        (
            ["block", "telco", "5", "--block-id", "1", "--not-after", "2026-11-22T10:00:00"],
            "not_after: Input should have timezone info",
        ),
        (["activate", "telco", "5", "7", "--priority", "high"], "--priority"),
        (["activate", "telco", "5", "7", "--command-id", "a b"], "command_id: String should"),
        (["activate", "telco", "5", "7", "--bogus"], "No such option: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(app: typer.Typer, args: list[str], fragment: str) -> None:
    # Given an unreachable broker (so nothing could be sent anyway)
    # When a command is given bad input
    result = run(app, *args)
    # Then it exits 2 with one line naming what is wrong, before touching the broker
    assert_one_line_error(result, 2, fragment)


def test_unreachable_broker_is_one_line_and_exit_3(app: typer.Typer) -> None:
    # Given a valid command and a broker that refuses connections
    # When it is sent
    result = run(app, "block", "telco", "5", "--block-id", "1")
    # Then it exits 3 with one line naming the redacted broker, no password
    assert_one_line_error(result, 3, "could not enqueue command", "redis://:***@127.0.0.1:1/0")


def test_unreachable_broker_with_wait_is_one_line_and_exit_3(app: typer.Typer) -> None:
    # Given / When waiting for a result from a broker that refuses connections
    result = run(app, "activate", "telco", "5", "7", "--wait")
    # Then the event stream cannot bind: exit 3, one line
    assert_one_line_error(result, 3, "could not follow events")


def test_bad_configuration_is_one_line_and_exit_2(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a malformed setting
    monkeypatch.setenv("SUBSWITCH_VISIBILITY_TIMEOUT", "soon")
    # When any command runs / Then it names the environment variable on one line
    assert_one_line_error(
        run(app, "activate", "telco", "5", "7"),
        2,
        "invalid configuration: SUBSWITCH_VISIBILITY_TIMEOUT: Input should be a valid integer",
    )


@pytest.mark.parametrize(
    "args", [["block", "telco", "5", "--block-id", "1"], ["events", "--count", "1"]]
)
def test_a_store_url_without_a_broker_url_is_one_line_naming_the_variable(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str]
) -> None:
    # Given a fleet's store URL but no broker URL (contract §2.7)
    monkeypatch.delenv("SUBSWITCH_BROKER_URL")
    monkeypatch.setenv("SUBSWITCH_STORE_URL", UNREACHABLE)
    # When a command is sent or events are followed
    result = run(app, *args)
    # Then it refuses with exit 2, naming the missing variable; no private broker started
    assert_one_line_error(result, 2, "SUBSWITCH_BROKER_URL is not set")
    assert not (tmp_path / "redis.sock").exists()


@pytest.mark.parametrize("command", ["block", "unblock", "activate", "deactivate"])
def test_help_documents_the_exit_codes(app: typer.Typer, command: str) -> None:
    # Given / When help is asked for
    result = run(app, command, "--help")
    # Then it explains --wait and every exit status
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for fragment in ("--wait", "--timeout", "Exit status: 0", "1 failed", "2 bad input", "3 ",
                     "4 no result within --timeout"):  # fmt: skip
        assert fragment in text


# --- against a broker ---------------------------------------------------------------


@pytest.fixture
def broker_env(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", broker_url)
    return broker_url


@pytest.mark.integration
def test_block_prints_the_command_id_and_enqueues_it(app: typer.Typer, broker_env: str) -> None:
    # Given every envelope option, issued a minute ago, and the broker URL alone (a
    # producer needs no store)
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    # When a block is sent
    result = run(
        app, "block", "telco", "214748364", "--block-id", "2", "--reason", "stolen",
        "--priority", "urgent", "--command-id", "fraud-case-8812-block",
        "--issued-at", issued.isoformat(), "--not-after", (issued + timedelta(hours=1)).isoformat(),
        "--source", "fraud-engine", "--correlation-id", "case-8812",
    )  # fmt: skip
    # Then it prints just the command id and the urgent lane holds that command
    assert result.exit_code == 0, result.output
    assert result.stdout == "fraud-case-8812-block\n"
    [message] = receive(broker_env, Lane.URGENT)
    command = message.command
    assert isinstance(command, ChangeBlockStatus)
    assert (command.block_id, command.active, command.reason) == (2, True, "stolen")
    assert command.source == "fraud-engine"
    assert command.correlation_id == "case-8812"
    assert command.issued_at == issued


@pytest.mark.integration
@pytest.mark.parametrize(
    ("command", "outcome", "code", "shown"),
    [
        ("activate", Outcome.APPLIED, 0, "applied (upstream 201, 1 attempt)"),
        ("deactivate", Outcome.SUPERSEDED, 0, "superseded (1 attempt)"),
        ("activate", Outcome.FAILED, 1, "failed (upstream 201, 1 attempt): code=1042 nope"),
        ("deactivate", Outcome.REJECTED, 1, "rejected"),
        ("activate", Outcome.EXPIRED, 1, "expired"),
    ],
)
def test_wait_prints_the_result_and_exits_by_outcome(
    app: typer.Typer, broker_env: str, command: str, outcome: Outcome, code: int, shown: str
) -> None:
    # Given a stand-in worker answering the next normal-lane command with ``outcome``
    fields = {} if outcome is Outcome.SUPERSEDED else {"upstream_status": 201}
    if outcome is Outcome.FAILED:
        fields["error"] = EventError(code=1042, message="nope")
    with fake_worker(broker_env, Lane.NORMAL, outcome, **fields) as handled:
        # When a service change is sent with --wait
        result = run(app, command, "telco", "5", "7", "--wait", "--timeout", "20")
    # Then it prints the command id, then the outcome, and exits by outcome
    assert result.exit_code == code, result.output
    [sent] = handled
    assert isinstance(sent, ChangeServiceStatus)
    assert sent.active is (command == "activate")
    first, second = result.stdout.splitlines()
    assert first == sent.command_id
    assert second.startswith(shown)


@pytest.mark.integration
def test_wait_without_a_result_exits_4(
    app: typer.Typer, clean_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker and no worker
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", clean_redis_url)
    # When a command is sent with a short --wait
    result = run(app, "block", "telco", "5", "--block-id", "1", "--wait", "--timeout", "0.2")
    # Then it printed the id (it is enqueued), says on one line that no result came and
    # how to follow the command up, and exits with the timeout's own status (not 2)
    assert result.exit_code == 4, result.output
    [command_id] = result.stdout.splitlines()
    assert result.stderr == (
        f"error: no result for {command_id} within 0.2 s; it is enqueued: "
        f"follow it with `subswitch status {command_id}`\n"
    )


def _events(*outcomes: Outcome) -> list[ResultEvent]:
    command = ChangeBlockStatus(
        org_id="telco", subscription_id=5, block_id=1, active=True, source="t"
    )
    return [event_for(command, outcome) for outcome in outcomes]


@pytest.mark.integration
def test_events_json_prints_one_object_per_line_filtered(app: typer.Typer, broker_env: str) -> None:
    # Given applied and failed events being published continually
    with repeating_events(broker_env, _events(Outcome.APPLIED, Outcome.FAILED)):
        # When following failed events as JSON, for 3 of them
        result = run(app, "events", "--json", "--outcome", "failed", "--count", "3",
                     "--timeout", "20")  # fmt: skip
    # Then there are 3 lines, each a whole failed ResultEvent
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert {ResultEvent.model_validate_json(line).outcome for line in lines} == {Outcome.FAILED}
    assert all(json.loads(line)["specversion"] == "1.0" for line in lines)


@pytest.mark.integration
def test_events_table_shows_a_row_per_event(
    app: typer.Typer, clean_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given events being published
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", clean_redis_url)
    with repeating_events(clean_redis_url, _events(Outcome.APPLIED)):
        # When following two of them as a table
        result = run(app, "events", "--count", "2", "--timeout", "20")
    # Then a header and two rows show the outcome
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert "OUTCOME" in header
    assert len(rows) == 2
    assert all("applied" in row for row in rows)


@pytest.mark.integration
def test_events_count_not_reached_exits_4(
    app: typer.Typer, clean_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no events at all
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", clean_redis_url)
    # When waiting for one within 0.2 s / Then exit 4 (timed out), one line
    result = run(app, "events", "--count", "1", "--timeout", "0.2")
    assert_one_line_error(result, 4, "0 of 1 events within 0.2 s")
