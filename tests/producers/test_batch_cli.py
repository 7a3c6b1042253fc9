"""``subswitch batch``: validation first, chunks on the bulk lane, --wait, --report, exits."""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner, Result

import producers.batch_cli as batch_cli
from producers import AnyCommand
from producers.batch import BatchCheck, BatchSource, check_file
from producers.batch_cli import register
from producers.batch_runs import first_run
from producers.publisher import InMemoryPublisher, chunk_task_id
from subswitch.contract import (
    APPLY_BATCH_TASK,
    EventError,
    Lane,
    Outcome,
    ResultEvent,
    TimeBounds,
    parse_command,
)
from subswitch.simulator.testing import spawned_simulator
from tests.producers.helpers import event_for, queue_depth, receive
from tests.worker.processes import running_worker

EXAMPLES = Path(__file__).parents[2] / "examples"
UNREACHABLE = "redis://:s3cret@127.0.0.1:1/0"
HEADER = "type,org_id,subscription_id,block_id,service_id,active,reason,priority\n"


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    register(app)

    @app.callback()
    def root() -> None:
        """Keep ``batch`` a named subcommand, as in ``subswitch``."""

    return app


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never the developer's settings, never an embedded broker in their home.
    for name in ("SUBSWITCH_SOURCE", "SUBSWITCH_VISIBILITY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUBSWITCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", UNREACHABLE)


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> InMemoryPublisher:
    """The CLI's publisher, recording chunks instead of sending them."""
    publisher = InMemoryPublisher()
    monkeypatch.setattr(batch_cli, "CeleryPublisher", lambda **_: publisher)
    return publisher


def run(app: typer.Typer, *args: str | Path) -> Result:
    return CliRunner().invoke(app, ["batch", *map(str, args)])


def write(
    tmp_path: Path, rows: list[str], *, name: str = "batch.csv", header: str = HEADER
) -> Path:
    path = tmp_path / name
    path.write_text(header + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def blocks(count: int) -> list[str]:
    return [f"block,telco,{n},1,,true,dunning," for n in range(1, count + 1)]


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert fragment in result.stderr
    assert "Traceback" not in result.output
    assert "s3cret" not in result.output


# --- validation before anything is sent -----------------------------------------------


def test_every_bad_row_is_named_and_nothing_is_enqueued(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given a file with bad rows on lines 3 and 5
    path = write(
        tmp_path,
        ["block,telco,5,1,,true,,", "block,telco,5,3,,true,,", "service,acme,7,,2,no,,",
         "block,telco,5,1,,true,,urgent"],
    )  # fmt: skip
    # When it is enqueued, with a report
    report = tmp_path / "out.csv"
    result = run(app, path, "--report", report)
    # Then each bad row is a line on stderr, then one error line; exit 2, nothing sent
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "line 3: block_id: Input should be less than or equal to 2",
        "line 5: priority: batches go on the bulk lane only, got 'urgent'",
        "error: batch.csv: 2 of 4 rows are invalid; nothing enqueued "
        "(--skip-invalid enqueues the others)",
    ]
    assert result.stdout == ""
    assert memory.chunks == []
    # And the report lists the bad rows
    assert [(r["line"], r["outcome"]) for r in read_report(report)] == [
        ("3", "invalid"),
        ("5", "invalid"),
    ]


def test_skip_invalid_enqueues_the_other_rows(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given a file with one bad row among three
    path = write(tmp_path, ["block,telco,5,1,,true,,", "block,telco,0,1,,true,,", *blocks(1)])
    # When it is enqueued with --skip-invalid
    result = run(app, path, "--skip-invalid")
    # Then the bad row is named, the two others sent in one message, and it says so
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("line 3: subscription_id: Input should be greater")
    [chunk] = memory.chunks
    assert [c["subscription_id"] for c in chunk.commands] == [5, 1]
    batch_id = memory.chunked_commands[0].command_id.split("-")[1]
    assert result.stdout == (
        f"batch {batch_id}: 2 commands enqueued in 1 message on subswitch.bulk; "
        "1 invalid row skipped\n"
    )


def test_a_file_of_bad_rows_only_is_refused_even_with_skip_invalid(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given only bad rows / When enqueued with --skip-invalid / Then exit 2, nothing sent
    result = run(app, write(tmp_path, ["block,telco,0,1,,true,,"]), "--skip-invalid")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "error: batch.csv: no valid row; nothing enqueued"
    assert memory.chunks == []


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "error: batch.csv is empty: expected a header line (type,org_id,"),
        (HEADER.encode(), "error: batch.csv has no rows: nothing to enqueue"),
        (
            (HEADER + "block,telco,5,1,,true,café,\n").encode("latin-1"),
            f"error: batch.csv is not UTF-8: line 2, byte {len(HEADER) + 25} (0xe9); "
            "save it as UTF-8",
        ),
        (b"type,org,sub\n", "error: line 1: unknown column(s) org, sub; expected columns:"),
        (b"block,telco,5,1,true\n", "error: line 1 is not a header (no known column name)"),
    ],
)
def test_an_unusable_file_is_one_line_and_exit_2(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path, content: bytes, fragment: str
) -> None:
    # Given an empty, header-only, Latin-1 or header-less file
    path = tmp_path / "batch.csv"
    path.write_bytes(content)
    # When it is enqueued / Then one line says why, exit 2, nothing sent
    assert_one_line_error(run(app, path), 2, fragment)
    assert memory.chunks == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["missing.csv"], "'missing.csv' does not exist"),
        ([str(EXAMPLES / "batch.csv"), "--batch-id", "a b"], "--batch-id: 1 to 64 characters"),
        ([str(EXAMPLES / "batch.csv"), "--chunk-size", "0"], "--chunk-size"),
        ([str(EXAMPLES / "batch.csv"), "--format", "xml"], "--format"),
        (
            [str(EXAMPLES / "batch.csv"), "--report", str(EXAMPLES / "batch.csv")],
            "--report must not be the batch file itself",
        ),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    app: typer.Typer, memory: InMemoryPublisher, args: list[str], fragment: str
) -> None:
    # Given / When bad arguments / Then one line, exit 2
    assert_one_line_error(run(app, *args), 2, fragment)


def test_check_validates_and_enqueues_nothing(app: typer.Typer, memory: InMemoryPublisher) -> None:
    # Given the example file / When checked only
    result = run(app, EXAMPLES / "batch.csv", "--check")
    # Then it reports the valid rows and nothing is sent
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(": 6 valid rows; nothing enqueued (--check)\n")
    assert memory.chunks == []


def test_a_file_changed_after_validation_is_not_enqueued(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file that someone appends to right after it was validated
    path = write(tmp_path, blocks(3))
    validate = check_file

    def validate_then_edit(source: BatchSource, **kwargs: Any) -> BatchCheck:
        result = validate(source, **kwargs)
        with path.open("a") as handle:
            handle.write("block,telco,9,1,,true,,\n")
        return result

    monkeypatch.setattr(batch_cli, "check_file", validate_then_edit)
    # When it is enqueued / Then it is refused, nothing sent
    assert_one_line_error(run(app, path), 2, "batch.csv changed since it was validated")
    assert memory.chunks == []


def test_help_documents_columns_and_exit_codes(app: typer.Typer) -> None:
    # Given / When help is asked for
    result = run(app, "--help")
    # Then it names the columns, the bulk-only priority and every exit status
    text = " ".join(result.stdout.split())
    assert result.exit_code == 0
    for fragment in ("type (block, service", "priority (bulk only", "Exit status: 0",
                     "1 some failed", "2 invalid file", "3 broker", "4 results missing",
                     "130 interrupted",
                     "--skip-invalid", "--wait", "--report", "--chunk-size"):  # fmt: skip
        assert fragment in text


# --- chunks and ids -------------------------------------------------------------------


def test_rows_go_in_chunks_on_the_bulk_lane_in_file_order(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given 250 rows
    path = write(tmp_path, blocks(250))
    # When enqueued in chunks of 100
    result = run(app, path, "--chunk-size", "100")
    # Then 3 messages carry 100, 100 and 50 bulk commands, in file order, each chunk
    # with its deterministic task id
    assert result.exit_code == 0, result.output
    assert [len(chunk.commands) for chunk in memory.chunks] == [100, 100, 50]
    assert {chunk.queue for chunk in memory.chunks} == {Lane.BULK.queue}
    commands = memory.chunked_commands
    assert [c.subscription_id for c in commands] == list(range(1, 251))
    assert {c.priority for c in commands} == {Lane.BULK}
    assert memory.chunks[0].task_id == chunk_task_id(commands[:100])
    assert "250 commands enqueued in 3 messages on subswitch.bulk" in result.stdout


def test_a_rerun_sends_the_same_ids_and_an_edited_file_new_ones(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given a file enqueued twice, then edited and enqueued again
    path = write(tmp_path, blocks(3))
    runs = []
    for _ in range(2):
        assert run(app, path).exit_code == 0
        runs.append([c.command_id for c in memory.chunked_commands[-3:]])
    write(tmp_path, [*blocks(3), "block,telco,1,1,,false,,"])
    assert run(app, path).exit_code == 0
    edited = [c.command_id for c in memory.chunked_commands[-4:]]
    # Then the re-run has the very same ids (the worker applies each once); the edit not
    assert runs[0] == runs[1]
    assert runs[0][0].startswith("batch-") and runs[0][0].endswith("-000000002")
    assert not set(edited) & set(runs[0])


def test_a_rerun_keeps_the_issued_at_of_the_first_run(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given a file enqueued once, and a row that gives its own issued_at
    own = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    rows = [f"{row}," for row in blocks(2)]  # an empty issued_at cell
    path = write(tmp_path, [*rows, f"block,telco,9,1,,true,,,{own.isoformat()}"],
                 header=HEADER.rstrip() + ",issued_at\n")  # fmt: skip
    assert run(app, path).exit_code == 0
    first = [c.issued_at for c in memory.chunked_commands]
    # When it is run again later
    rerun = run(app, path)
    # Then every row keeps its first-run time (a re-run never becomes the newest
    # intent over commands issued since), and the run says so
    assert rerun.exit_code == 0, rerun.output
    assert [c.issued_at for c in memory.chunked_commands[3:]] == first
    assert first[0] == first[1] != own and first[2] == own
    assert "was first run at" in rerun.stderr


def test_a_rerun_after_the_retention_window_is_refused(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given a file whose first run was two days ago
    path = write(tmp_path, blocks(2))
    batch_id = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    long_ago = datetime.now(UTC) - timedelta(days=2)
    first_run(tmp_path, batch_id, now=long_ago, bounds=TimeBounds(300, 86_400))
    # When it is run again
    result = run(app, path)
    # Then it is refused with one line, and nothing is enqueued
    assert_one_line_error(result, 2, f"batch {batch_id} was first run at")
    assert "SUBSWITCH_RETENTION_SECONDS" in result.stderr
    assert memory.chunks == []


def test_a_row_out_of_its_time_bounds_is_a_bad_row(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given a row stamped a day ahead (it would pin its target for a month)
    ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    path = write(tmp_path, [f"block,telco,9,1,,false,,,{ahead}"],
                 header=HEADER.rstrip() + ",issued_at\n")  # fmt: skip
    # When the file is run / Then the row is named, and nothing is enqueued
    result = run(app, path)
    assert result.exit_code == 2
    assert "line 2: issued_at: " in result.stderr
    assert "SUBSWITCH_MAX_CLOCK_SKEW_SECONDS" in result.stderr
    assert memory.chunks == []


def test_a_chunk_over_the_message_cap_is_one_line_and_exit_2(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given a cap of 10 KB per message / When chunks of 100 rows are sent
    memory.max_message_bytes = 10_000
    result = run(app, write(tmp_path, blocks(150)))
    # Then one line says what to do, and nothing went out
    assert_one_line_error(result, 2, "use a smaller --chunk-size")
    assert memory.chunks == []


def test_batch_id_and_source_options_name_the_commands(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given / When a batch id and a source are given
    result = run(app, write(tmp_path, blocks(2)), "--batch-id", "dunning-2026-11",
                 "--source", "batch:dunning")  # fmt: skip
    # Then the generated ids and the source use them
    assert result.exit_code == 0, result.output
    commands = memory.chunked_commands
    assert [c.command_id for c in commands] == [
        "batch-dunning-2026-11-000000002",
        "batch-dunning-2026-11-000000003",
    ]
    assert {c.source for c in commands} == {"batch:dunning"}


def test_a_broker_failure_mid_batch_says_how_far_it_got(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given a broker that takes two chunks, then fails
    memory.fail_after = 2
    # When 250 rows are enqueued in chunks of 100
    result = run(app, write(tmp_path, blocks(250)), "--chunk-size", "100")
    # Then exit 3, one line: what failed, how many were enqueued, and that a re-run is safe
    assert_one_line_error(result, 3, "200 of 250 commands were enqueued; run the same file")
    assert "nothing is applied twice" in result.stderr


def test_an_interruption_mid_batch_says_how_far_it_got(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Ctrl-C while the third chunk is being sent
    class Interrupted(InMemoryPublisher):
        def publish_batch(self, commands: Sequence[AnyCommand]) -> None:
            if len(self.chunks) == 2:
                raise KeyboardInterrupt
            super().publish_batch(commands)

    monkeypatch.setattr(batch_cli, "CeleryPublisher", lambda **_: Interrupted())
    # When 250 rows are enqueued in chunks of 100
    result = run(app, write(tmp_path, blocks(250)), "--chunk-size", "100")
    # Then exit 130, one line saying 200 were enqueued and that a re-run is safe
    assert_one_line_error(result, 130, "error: interrupted; 200 of 250 commands were enqueued")
    assert "run the same file again to enqueue the rest (nothing is applied twice)" in (
        result.stderr
    )


def test_an_interruption_while_validating_enqueues_nothing(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Ctrl-C during the validation pass
    def interrupted(source: BatchSource, **kwargs: Any) -> BatchCheck:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_cli, "check_file", interrupted)
    # When a batch is enqueued / Then exit 130, one line, nothing sent
    result = run(app, write(tmp_path, blocks(3)))
    assert_one_line_error(result, 130, "error: interrupted while validating; nothing enqueued")
    assert memory.chunks == []


def test_progress_shows_rows_per_second_and_eta_on_a_terminal(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a terminal (a console forced to be one, writing to a buffer)
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    monkeypatch.setattr(batch_cli, "Console", lambda **_: terminal)
    # When 3000 rows are enqueued
    result = run(app, write(tmp_path, blocks(3000)))
    # Then both passes were shown with a count, a rate and an ETA; with -q nothing is
    assert result.exit_code == 0, result.output
    shown = screen.getvalue()
    for fragment in ("validating", "MB/s", "enqueueing", "3,000/3,000 rows", "rows/s", "ETA"):
        assert fragment in shown
    screen.seek(0)
    screen.truncate(0)
    assert run(app, write(tmp_path, blocks(3000)), "--quiet").exit_code == 0
    assert screen.getvalue() == ""


def test_an_unreachable_broker_is_one_line_and_exit_3(app: typer.Typer, tmp_path: Path) -> None:
    # Given a broker that refuses connections / When a batch is enqueued
    result = run(app, write(tmp_path, blocks(1)))
    # Then exit 3, one line naming the redacted broker
    assert_one_line_error(result, 3, "redis://:***@127.0.0.1:1/0")
    assert "0 of 1 commands were enqueued" in result.stderr


def test_report_without_wait_lists_the_enqueued_commands(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path
) -> None:
    # Given a file with a bad row / When enqueued with --skip-invalid and --report
    report = tmp_path / "out.csv"
    path = write(tmp_path, ["block,telco,5,9,,true,,", *blocks(2)])
    assert run(app, path, "--skip-invalid", "--report", report).exit_code == 0
    # Then every row of the file has a row in the report
    ids = [c.command_id for c in memory.chunked_commands]
    assert [(r["command_id"], r["line"], r["outcome"]) for r in read_report(report)] == [
        ("", "2", "invalid"),
        (ids[0], "3", "enqueued"),
        (ids[1], "4", "enqueued"),
    ]


# --- --wait, without a broker ---------------------------------------------------------


class FakeEventStream:
    """Stands in for EventStream: the result of every command the publisher sent,
    with the outcome ``decide`` picks (None: no result ever)."""

    def __init__(
        self, publisher: InMemoryPublisher, decide: Callable[[int], Outcome | None]
    ) -> None:
        self.publisher = publisher
        self.decide = decide
        self.delivered = 0
        self.bound_before_publish: bool | None = None

    def __enter__(self) -> FakeEventStream:
        self.bound_before_publish = not self.publisher.chunks
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    def iter(self, *, timeout: float | None = None) -> Iterator[ResultEvent]:
        commands = self.publisher.chunked_commands
        while self.delivered < len(commands):
            command = commands[self.delivered]
            self.delivered += 1
            outcome = self.decide(command.subscription_id)
            if outcome is Outcome.FAILED:
                error = EventError(code=404, message="no such subscription")
                yield event_for(command, outcome, upstream_status=404, error=error)
            elif outcome is not None:
                yield event_for(command, outcome, upstream_status=201)


def wait_with(
    monkeypatch: pytest.MonkeyPatch,
    publisher: InMemoryPublisher,
    decide: Callable[[int], Outcome | None],
) -> FakeEventStream:
    stream = FakeEventStream(publisher, decide)
    monkeypatch.setattr(batch_cli, "EventStream", lambda **_: stream)
    return stream


def test_wait_counts_outcomes_reports_each_and_exits_1_on_a_failure(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given results: subscription 3 fails, the others are applied
    stream = wait_with(monkeypatch, memory, lambda n: Outcome.FAILED if n == 3 else Outcome.APPLIED)
    report = tmp_path / "out.csv"
    # When 4 rows are enqueued with --wait and --report
    result = run(app, write(tmp_path, blocks(4)), "--wait", "--report", report)
    # Then the stream was bound first, the tally printed, the report complete; exit 1
    assert result.exit_code == 1, result.output
    assert stream.bound_before_publish is True
    assert result.stdout.splitlines()[-1] == (
        "results: applied 3, failed 1, rejected 0, superseded 0, expired 0"
    )
    rows = read_report(report)
    assert [(r["line"], r["outcome"], r["upstream_status"]) for r in rows] == [
        ("2", "applied", "201"),
        ("3", "applied", "201"),
        ("4", "failed", "404"),
        ("5", "applied", "201"),
    ]
    assert rows[2]["error"] == "code=404 no such subscription"


def test_wait_exits_0_when_all_are_applied(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given every result applied / When waited for / Then exit 0
    wait_with(monkeypatch, memory, lambda n: Outcome.APPLIED)
    result = run(app, write(tmp_path, blocks(3)), "--wait")
    assert result.exit_code == 0, result.output
    assert "results: applied 3," in result.stdout


def test_wait_without_every_result_exits_4_and_reports_them_pending(
    app: typer.Typer, memory: InMemoryPublisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no result ever for subscription 2
    wait_with(monkeypatch, memory, lambda n: None if n == 2 else Outcome.APPLIED)
    report = tmp_path / "out.csv"
    # When 3 rows are enqueued with --wait
    result = run(app, write(tmp_path, blocks(3)), "--wait", "--timeout", "0", "--report", report)
    # Then exit 4 (timed out) with one error line; the report marks it pending
    assert result.exit_code == 4, result.output
    assert result.stderr == (
        "error: 1 of 3 commands had no result after 0 s without one; they are enqueued\n"
    )
    assert "results: applied 2, failed 0, rejected 0, superseded 0, expired 0, no result 1" in (
        result.stdout
    )
    assert [(r["line"], r["outcome"]) for r in read_report(report)][-1] == ("3", "pending")


# --- against a broker -----------------------------------------------------------------


@pytest.mark.integration
def test_chunks_arrive_as_apply_batch_messages_on_the_bulk_queue(
    app: typer.Typer, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", broker_url)
    # When the example file is enqueued in chunks of 4
    result = run(app, EXAMPLES / "batch.csv", "--chunk-size", "4")
    # Then the bulk queue holds two subswitch.apply_batch messages, whose one argument
    # is the list of commands as the worker parses them; the other lanes are empty
    assert result.exit_code == 0, result.output
    messages = receive(broker_url, Lane.BULK, count=2)
    assert [m.headers["task"] for m in messages] == [APPLY_BATCH_TASK] * 2
    chunks = []
    for message in messages:
        args, kwargs, _ = message.body
        assert kwargs == {}
        [commands] = args
        chunks.append([parse_command(body) for body in commands])
        assert message.headers["id"] == chunk_task_id(chunks[-1])
    assert [len(chunk) for chunk in chunks] == [4, 2]
    commands = [command for chunk in chunks for command in chunk]
    assert {c.priority for c in commands} == {Lane.BULK}
    assert commands[4].command_id == "billing-restore-7-datos"
    assert not queue_depth(broker_url, Lane.NORMAL.queue)
    assert not queue_depth(broker_url, Lane.URGENT.queue)


@pytest.mark.integration
def test_a_worker_applies_the_batch_and_wait_reports_every_result(
    app: typer.Typer, clean_redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the simulator, a worker on Redis, and a batch where one row asks for a service
    # the upstream does not let change (service 4): 400, failed
    rows = [*blocks(5), "service,telco,1,,4,false,,", "service,acme,2,,3,true,,"]
    path = write(tmp_path, rows)
    report = tmp_path / "out.csv"
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", clean_redis_url)
    with spawned_simulator("--token", "dev-token") as simulator:
        env = {
            "SUBSWITCH_BROKER_URL": clean_redis_url,
            "SUBSWITCH_STORE_URL": clean_redis_url,
            "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
            "SUBSWITCH_UPSTREAM_TOKEN": "dev-token",
            "SUBSWITCH_DATA_DIR": str(tmp_path),
        }
        with running_worker(env, concurrency=2):
            # When the batch is enqueued in chunks of 3 and followed
            result = run(app, path, "--chunk-size", "3", "--wait", "--timeout", "30",
                         "--report", report)  # fmt: skip
            writes = simulator.admin.writes()["writes"]
    # Then every command has its result, one failed: exit 1; the report agrees
    assert result.exit_code == 1, result.output
    rows_out = read_report(report)
    assert Counter(r["outcome"] for r in rows_out) == {"applied": 6, "failed": 1}
    [failed] = [r for r in rows_out if r["outcome"] == "failed"]
    assert (failed["line"], failed["upstream_status"]) == ("7", "400")
    # And each command reached the upstream once, with its own idempotency key
    keys = Counter(write["idempotency_key"] for write in writes)
    assert set(keys) == {r["command_id"] for r in rows_out}
    assert set(keys.values()) == {1}
