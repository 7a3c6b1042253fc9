"""Retrying commands: the next free id, the rebuilt command, and every refusal.

The originals reach their states through the worker's real executor and store scripts on
fakeredis; retries go out through the SDK to an in-memory publisher; the archive is in
memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from producers.errors import InvalidCommandError
from producers.producer import CommandProducer
from producers.publisher import InMemoryPublisher
from producers.retry import Retrier, RetryRefused, retry_chain
from producers.retry_cli import _retry_report
from subswitch.contract import (
    ChangeBlockStatus,
    Lane,
    Outcome,
    TimeBounds,
    parse_command,
    result_event,
)
from subswitch.errors import ConfigurationError, InvalidInput
from subswitch.status import CommandState
from tests.subswitch.records import ISSUED, MemoryArchive, block, deliver, worker_executor
from tests.worker.conftest import DEFAULTS, Clock, ScriptedUpstream
from worker.executor import Executor
from worker.upstream.errors import InvalidRequestError, UpstreamUnavailable

NOT_FOUND = InvalidRequestError("subscription not found", status=404)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    fake: redis.Redis = fakeredis.FakeRedis()
    yield fake
    fake.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def upstream() -> ScriptedUpstream:
    return ScriptedUpstream()


@pytest.fixture
def executor(client: redis.Redis, upstream: ScriptedUpstream, clock: Clock) -> Executor:
    return worker_executor(client, upstream, clock)


@pytest.fixture
def archive() -> MemoryArchive:
    return MemoryArchive()


@pytest.fixture
def publisher() -> InMemoryPublisher:
    return InMemoryPublisher()


@pytest.fixture
def producer(
    client: redis.Redis, publisher: InMemoryPublisher, archive: MemoryArchive, clock: Clock
) -> CommandProducer:
    bounds = TimeBounds(
        max_skew_s=DEFAULTS.max_clock_skew_seconds, retention_s=DEFAULTS.retention_seconds
    )
    return CommandProducer(
        publisher=publisher, time_bounds=bounds, clock=clock, store=client, archive=archive
    )


def retrier(producer: CommandProducer, clock: Clock, **options: Any) -> Retrier:
    return Retrier(producer=producer, source="retry:alice", clock=clock, **options)


def sent(publisher: InMemoryPublisher) -> list[ChangeBlockStatus]:
    commands = [parse_command(body) for _, body in publisher.sent]
    return [c for c in commands if isinstance(c, ChangeBlockStatus)]


def failed(executor: Executor, upstream: ScriptedUpstream, command_id: str = "case-1") -> None:
    upstream.script.append(NOT_FOUND)
    deliver(executor, block(command_id=command_id))


def test_retry_ids_count_up_from_the_original() -> None:
    # Given ids with and without a retry suffix / When split / Then base and number
    assert retry_chain("case-1") == ("case-1", 0)
    assert retry_chain("case-1.r2") == ("case-1", 2)
    assert retry_chain("case-1.r0") == ("case-1.r0", 0)
    assert retry_chain("v1.2.rx") == ("v1.2.rx", 0)


def test_a_failed_command_is_sent_again_as_its_first_retry(
    executor: Executor,
    upstream: ScriptedUpstream,
    producer: CommandProducer,
    publisher: InMemoryPublisher,
    clock: Clock,
) -> None:
    # Given a command the upstream refused
    failed(executor, upstream)
    # When it is retried
    retried = retrier(producer, clock).retry("case-1")
    # Then case-1.r1 is enqueued: same target and intent, correlation and issued_at
    # kept, source naming who retried, no deadline; it is queued until a worker takes it
    [command] = sent(publisher)
    original = block()
    assert retried.command == command
    assert retried.original.state is CommandState.FAILED
    assert command.command_id == "case-1.r1"
    assert (command.target, command.active, command.reason) == (
        original.target,
        original.active,
        original.reason,
    )
    assert (command.correlation_id, command.issued_at) == ("case-8812", ISSUED)
    assert (command.source, command.not_after, command.lane) == ("retry:alice", None, Lane.NORMAL)
    assert producer.status("case-1.r1").state is CommandState.QUEUED


def test_a_retry_of_a_retry_and_a_second_retry_take_the_next_free_number(
    executor: Executor,
    upstream: ScriptedUpstream,
    producer: CommandProducer,
    publisher: InMemoryPublisher,
    clock: Clock,
) -> None:
    # Given a failed command whose first retry failed too
    failed(executor, upstream)
    retrier(producer, clock).retry("case-1")
    failed(executor, upstream, "case-1.r1")
    # When the retry is retried, and (after that failed) the original once more
    first = retrier(producer, clock).retry("case-1.r1").command.command_id
    failed(executor, upstream, "case-1.r2")
    second = retrier(producer, clock).retry("case-1").command.command_id
    # Then they are r2 and r3
    assert (first, second) == ("case-1.r2", "case-1.r3")


def test_now_issues_the_retry_at_the_current_time(
    executor: Executor, upstream: ScriptedUpstream, producer: CommandProducer, clock: Clock
) -> None:
    # Given a failed command / When retried with --now and a deadline
    failed(executor, upstream)
    deadline = clock.now + timedelta(hours=1)
    command = retrier(producer, clock, fresh=True, not_after=deadline).retry("case-1").command
    # Then the retry is issued now, with that deadline
    assert (command.issued_at, command.not_after) == (clock.now, deadline)


@pytest.mark.parametrize(
    ("script", "newer", "reason"),
    [
        ([201], False, "it was applied: nothing to retry"),
        ([], True, "superseded by a newer command on its target"),
        ([UpstreamUnavailable("busy", status=503)], False, "it is still waiting"),
    ],
    ids=["applied", "superseded", "waiting"],
)
def test_applied_superseded_and_in_progress_commands_are_refused(
    executor: Executor,
    upstream: ScriptedUpstream,
    producer: CommandProducer,
    publisher: InMemoryPublisher,
    clock: Clock,
    script: list[int | Exception],
    newer: bool,
    reason: str,
) -> None:
    # Given a command applied, superseded by a newer one, or waiting for its next attempt
    if newer:
        deliver(executor, block(command_id="newer", issued_at=ISSUED + timedelta(minutes=1)))
    upstream.script = list(script)
    deliver(executor, block(), token="t2")
    # When it is retried / Then it is refused with the reason, and nothing is sent
    with pytest.raises(RetryRefused, match=reason) as refused:
        retrier(producer, clock).retry("case-1")
    assert refused.value.command_id == "case-1"
    assert publisher.sent == []


def test_an_unknown_id_is_refused(producer: CommandProducer, clock: Clock) -> None:
    # Given an id nobody has seen / When retried / Then refused, naming it
    with pytest.raises(RetryRefused, match=r"^never-sent: nobody has seen this command"):
        retrier(producer, clock).retry("never-sent")


def test_a_command_retried_already_is_refused_while_its_retry_runs(
    executor: Executor, upstream: ScriptedUpstream, producer: CommandProducer, clock: Clock
) -> None:
    # Given a failed command retried once (the retry queued, not yet taken)
    failed(executor, upstream)
    retrier(producer, clock).retry("case-1")
    # When it is retried again / Then refused, naming the retry and its state
    with pytest.raises(RetryRefused, match=r"retried already as case-1\.r1, which is queued"):
        retrier(producer, clock).retry("case-1")


def test_a_rejected_message_that_was_no_command_is_refused(
    executor: Executor, producer: CommandProducer, clock: Clock
) -> None:
    # Given a message with a readable id that is no valid command
    executor.handle({**block().model_dump(mode="json"), "block_id": 9}, token="t1")
    # When it is retried / Then refused: nothing to rebuild it from
    with pytest.raises(RetryRefused, match="no readable command: nothing to rebuild"):
        retrier(producer, clock).retry("case-1")


def test_a_retry_id_over_128_characters_is_refused(
    executor: Executor, upstream: ScriptedUpstream, producer: CommandProducer, clock: Clock
) -> None:
    # Given a failed command whose id has 127 characters
    long_id = "x" * 127
    failed(executor, upstream, long_id)
    # When it is retried / Then refused: its retry id would be too long
    with pytest.raises(RetryRefused, match="would be longer than 128 characters"):
        retrier(producer, clock).retry(long_id)


def test_an_expired_command_is_rebuilt_from_the_archive_without_its_deadline(
    archive: MemoryArchive, producer: CommandProducer, publisher: InMemoryPublisher, clock: Clock
) -> None:
    # Given an expired command whose records left the store, archived, on the bulk lane
    original = block(priority=Lane.BULK, not_after=ISSUED + timedelta(minutes=5))
    archive.add(result_event(original, outcome=Outcome.EXPIRED, attempts=0, completed_at=ISSUED))
    # When it is retried
    retrier(producer, clock).retry("case-1")
    # Then the retry goes on its lane, without the deadline that had passed
    [command] = sent(publisher)
    assert (command.command_id, command.lane, command.not_after) == ("case-1.r1", Lane.BULK, None)


def test_an_original_older_than_the_retention_needs_now(
    archive: MemoryArchive, producer: CommandProducer, publisher: InMemoryPublisher, clock: Clock
) -> None:
    # Given an archived failed command issued two days ago
    old = block(issued_at=clock.now - timedelta(days=2))
    archive.add(result_event(old, outcome=Outcome.FAILED, attempts=1, completed_at=old.issued_at))
    # When it is retried as it is, then with --now
    with pytest.raises(RetryRefused, match="retry it with --now to issue it anew"):
        retrier(producer, clock).retry("case-1")
    retrier(producer, clock, fresh=True).retry("case-1")
    # Then only the second is sent, issued now
    [command] = sent(publisher)
    assert command.issued_at == clock.now


def test_a_malformed_id_is_bad_input(producer: CommandProducer, clock: Clock) -> None:
    # Given a retrier / When asked for a malformed id / Then InvalidInput, nothing read
    with pytest.raises(InvalidInput, match="not a command id"):
        retrier(producer, clock).retry("no spaces allowed")


def test_a_bad_source_is_refused_as_invalid(
    executor: Executor, upstream: ScriptedUpstream, producer: CommandProducer, clock: Clock
) -> None:
    # Given a failed command / When retried with a source over 64 characters
    failed(executor, upstream)
    with pytest.raises(InvalidCommandError, match="the retry of case-1: source"):
        Retrier(producer=producer, source="s" * 65, clock=clock).retry("case-1")


def test_a_producer_without_the_store_names_the_missing_variable(
    publisher: InMemoryPublisher,
) -> None:
    # Given an SDK that has only the broker / When asked a status / Then it names the store
    with pytest.raises(ConfigurationError, match="SUBSWITCH_STORE_URL is not set"):
        CommandProducer(publisher=publisher).status("case-1")


def test_a_report_retries_its_failed_expired_and_rejected_rows(
    executor: Executor,
    upstream: ScriptedUpstream,
    producer: CommandProducer,
    publisher: InMemoryPublisher,
    clock: Clock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a batch report: a failed row, an applied row, an invalid row, and a failed
    # row whose command was retried since (its retry queued)
    failed(executor, upstream, "b-1")
    deliver(executor, block(command_id="b-2", subscription_id=8))
    failed(executor, upstream, "b-3")
    retrier(producer, clock).retry("b-3")
    report = tmp_path / "report.csv"
    report.write_text(
        "command_id,line,outcome,upstream_status,error\n"
        "b-1,2,failed,404,subscription not found\n"
        "b-2,3,applied,201,\n"
        ",4,invalid,,line 4: block_id: bad\n"
        "b-3,5,failed,404,subscription not found\n"
    )
    # When the report is retried, with JSON output
    code = _retry_report(retrier(producer, clock), report, as_json=True)
    # Then b-1 is retried, b-3 refused, the others skipped; exit 1 (a refusal)
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line]
    assert code == 1
    assert [c.command_id for c in sent(publisher)] == ["b-3.r1", "b-1.r1"]
    assert '"retry_id": "b-1.r1"' in lines[0]
    assert json.loads(lines[1]) == {
        "command_id": "b-3",
        "state": "failed",
        "retry_id": None,
        "refused": "it was retried already as b-3.r1, which is queued",
        "command": None,
    }
    assert err.strip() == "retried 1, refused 1, skipped 2 (rows not failed, expired or rejected)"


def test_a_file_that_is_no_report_is_bad_input(
    producer: CommandProducer, clock: Clock, tmp_path: Path
) -> None:
    # Given a CSV without the report's columns / When retried from / Then InvalidInput
    other = tmp_path / "other.csv"
    other.write_text("type,org_id\nblock,telco\n")
    with pytest.raises(InvalidInput, match="not a `subswitch batch --report` file"):
        _retry_report(retrier(producer, clock), other, as_json=False)
