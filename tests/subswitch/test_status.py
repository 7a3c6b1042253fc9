"""``StatusReader`` and ``record_acceptance`` against the worker's own records.

Each state is reached the way a worker reaches it: the real executor and store scripts
on fakeredis, with a scripted upstream. The archive is in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import redis

from subswitch import keys
from subswitch.contract import Outcome, result_event
from subswitch.errors import StoreError
from subswitch.status import (
    Acceptance,
    CommandState,
    StatusReader,
    open_store,
    record_acceptance,
)
from tests.subswitch.records import (
    ISSUED,
    SETTLE_S,
    MemoryArchive,
    block,
    deliver,
    worker_executor,
)
from tests.worker.conftest import Clock, ScriptedUpstream
from worker.executor import Executor, RetryLater
from worker.upstream.errors import InvalidRequestError, UpstreamTimeout, UpstreamUnavailable


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    fake: redis.Redis = fakeredis.FakeRedis()
    yield fake
    fake.close()


@pytest.fixture
def upstream() -> ScriptedUpstream:
    return ScriptedUpstream()


@pytest.fixture
def executor(client: redis.Redis, upstream: ScriptedUpstream) -> Executor:
    return worker_executor(client, upstream, Clock())


@pytest.fixture
def archive() -> MemoryArchive:
    return MemoryArchive()


@pytest.fixture
def reader(client: redis.Redis, archive: MemoryArchive) -> StatusReader:
    return StatusReader(client=client, archive=archive)


def close_to_now(moment: datetime | None) -> bool:
    return moment is not None and abs(moment - datetime.now(UTC)) < timedelta(seconds=5)


def test_an_id_nobody_has_seen_is_unknown(reader: StatusReader) -> None:
    # Given an empty store and archive / When the status of an id is asked
    found = reader.status("never-sent")
    # Then it is unknown, not an error, with nothing else claimed
    assert found.state is CommandState.UNKNOWN
    assert (found.attempts, found.event, found.found_in) == (None, None, None)


def test_an_accepted_command_is_queued_until_a_worker_takes_it(
    client: redis.Redis, reader: StatusReader
) -> None:
    # Given a command the broker accepted, recorded by its producer
    now = datetime(2026, 11, 22, 9, 0, 1, tzinfo=UTC)
    accepted = record_acceptance(client, block(), now=now, retention_s=60)
    # When its status is asked
    found = reader.status("case-1")
    # Then it is queued since the acceptance, and the record expires with the retention
    assert accepted is Acceptance.NEW
    assert (found.state, found.since, found.attempts) == (CommandState.QUEUED, now, 0)
    assert 0 < client.ttl(keys.acceptance("case-1")) <= 60


def test_acceptance_tells_a_repeat_from_a_conflicting_reuse(client: redis.Redis) -> None:
    # Given an accepted command
    now = datetime.now(UTC)
    record_acceptance(client, block(), now=now, retention_s=60)
    # When the same command, the same id with another payload, and a new id are accepted
    same = record_acceptance(client, block(source="other"), now=now, retention_s=60)
    conflict = record_acceptance(client, block(active=False), now=now, retention_s=60)
    new = record_acceptance(client, block(command_id="case-2"), now=now, retention_s=60)
    # Then: same (envelope fields do not count), conflict, new; the conflict wrote nothing
    assert (same, conflict, new) == (Acceptance.SAME, Acceptance.CONFLICT, Acceptance.NEW)
    fingerprint = client.hget(keys.acceptance("case-1"), "fp")
    assert fingerprint == block().fingerprint().encode()


def test_a_worker_taking_the_command_replaces_its_acceptance(
    client: redis.Redis, executor: Executor, reader: StatusReader
) -> None:
    # Given an accepted command
    record_acceptance(client, block(), now=datetime.now(UTC), retention_s=60)
    # When a worker applies it
    deliver(executor, block())
    # Then the acceptance is gone (the record answers), and the id is still taken
    assert not client.exists(keys.acceptance("case-1"))
    assert reader.status("case-1").state is CommandState.APPLIED
    again = record_acceptance(client, block(active=False), now=datetime.now(UTC), retention_s=60)
    assert again is Acceptance.CONFLICT


def test_acceptance_sees_the_workers_record(client: redis.Redis, executor: Executor) -> None:
    # Given a command a worker applied before its producer recorded the acceptance
    deliver(executor, block())
    now = datetime.now(UTC)
    # When the producer records it, and someone accepts the id with another payload
    late = record_acceptance(client, block(), now=now, retention_s=60)
    other = record_acceptance(client, block(active=False), now=now, retention_s=60)
    # Then the first is the same command, the second a conflict
    assert (late, other) == (Acceptance.SAME, Acceptance.CONFLICT)


def test_a_command_with_an_attempt_out_is_in_flight_since_it_was_sent(
    executor: Executor, upstream: ScriptedUpstream, reader: StatusReader
) -> None:
    # Given a command whose write is out upstream right now
    seen: list[Any] = []
    upstream.during_writes = [lambda: seen.append(reader.status("case-1"))]
    # When its status is asked during the write
    deliver(executor, block())
    # Then it is in flight, first attempt, since about now
    [found] = seen
    assert (found.state, found.attempts) == (CommandState.IN_FLIGHT, 1)
    assert close_to_now(found.since)


def test_a_failed_attempt_is_waiting_with_the_next_attempt_and_the_error(
    executor: Executor, upstream: ScriptedUpstream, reader: StatusReader
) -> None:
    # Given a command whose first attempt got a 503
    upstream.script = [UpstreamUnavailable("Service Unavailable", status=503)]
    decision = deliver(executor, block())
    # When its status is asked
    found = reader.status("case-1")
    # Then it is waiting: one attempt, the error, the next attempt when the worker said
    assert isinstance(decision, RetryLater)
    assert (found.state, found.attempts) == (CommandState.WAITING, 1)
    assert found.last_error == "upstream 503: Service Unavailable"
    assert found.since is not None and found.next_attempt_at is not None
    delay = (found.next_attempt_at - found.since).total_seconds()
    assert delay == pytest.approx(decision.delay_s, abs=0.002)
    assert found.settle_until is None


def test_a_lost_answer_is_settling_until_the_hold_ends(
    executor: Executor, upstream: ScriptedUpstream, reader: StatusReader
) -> None:
    # Given a command whose attempt timed out (the write may still land)
    upstream.script = [UpstreamTimeout("read timeout", maybe_applied=True)]
    deliver(executor, block())
    # When its status is asked
    found = reader.status("case-1")
    # Then it is settling, held the settle time from the lost answer
    assert (found.state, found.attempts) == (CommandState.SETTLING, 1)
    assert found.since is not None and found.settle_until is not None
    held = (found.settle_until - found.since).total_seconds()
    assert held == pytest.approx(SETTLE_S, abs=0.002)
    assert found.last_error == "read timeout"
    assert found.next_attempt_at is not None and found.next_attempt_at >= found.settle_until


def test_an_applied_command_has_its_outcome_and_event(
    executor: Executor, reader: StatusReader
) -> None:
    # Given an applied command / When its status is asked
    deliver(executor, block())
    found = reader.status("case-1")
    # Then it is applied, with the event the worker published, from the store
    assert (found.state, found.attempts, found.found_in) == (CommandState.APPLIED, 1, "store")
    assert found.event is not None and found.event.data.upstream_status == 201
    assert found.since == found.event.data.completed_at
    assert found.last_error is None


def test_a_failed_command_has_its_error(
    executor: Executor, upstream: ScriptedUpstream, reader: StatusReader
) -> None:
    # Given a command the upstream refused with a 404
    upstream.script = [InvalidRequestError("subscription not found", status=404)]
    deliver(executor, block())
    # When its status is asked
    found = reader.status("case-1")
    # Then it is failed, with the upstream's error
    assert found.state is CommandState.FAILED
    assert found.last_error == "upstream 404: subscription not found"


def test_an_older_command_is_superseded(executor: Executor, reader: StatusReader) -> None:
    # Given a newer command applied on the target, then an older one delivered
    deliver(executor, block(command_id="newer", issued_at=ISSUED + timedelta(minutes=1)))
    deliver(executor, block(command_id="older", active=False), token="t2")
    # When the older one's status is asked / Then it is superseded
    assert reader.status("older").state is CommandState.SUPERSEDED


def test_a_reused_id_leaves_the_first_commands_status_and_counts_the_reuse(
    executor: Executor, reader: StatusReader
) -> None:
    # Given an applied command and a message reusing its id with another payload
    deliver(executor, block())
    deliver(executor, block(active=False), token="t2")
    # When the id's status is asked
    found = reader.status("case-1")
    # Then the first command's outcome stands, and the rejected reuse is counted
    assert found.state is CommandState.APPLIED
    assert found.rejected_reuses == 1


def test_a_message_that_is_no_command_is_rejected_under_its_id(
    executor: Executor, reader: StatusReader
) -> None:
    # Given a message with a readable id but an invalid body
    bad = {**block().model_dump(mode="json"), "block_id": 9}
    executor.handle(bad, token="t1")
    # When that id's status is asked
    found = reader.status("case-1")
    # Then it is rejected with the reason, from the store
    assert (found.state, found.found_in) == (CommandState.REJECTED, "store")
    assert found.last_error is not None and "block_id" in found.last_error


def test_after_the_records_expired_the_archive_answers(
    client: redis.Redis, executor: Executor, reader: StatusReader, archive: MemoryArchive
) -> None:
    # Given a finished command whose records left the store, and its archived event
    event = result_event(
        block(), outcome=Outcome.EXPIRED, attempts=0, completed_at=ISSUED + timedelta(hours=1)
    )
    archive.add(event)
    # When its status is asked
    found = reader.status("case-1")
    # Then the archive answers, with the event
    assert (found.state, found.found_in, found.event) == (CommandState.EXPIRED, "archive", event)


def test_without_an_archive_an_expired_record_is_unknown(client: redis.Redis) -> None:
    # Given no archive and nothing in the store / When a status is asked
    found = StatusReader(client=client, archive=None).status("case-1")
    # Then it is unknown
    assert found.state is CommandState.UNKNOWN


def test_an_unreachable_store_is_a_store_error() -> None:
    # Given a store nobody listens on
    client = open_store("redis://127.0.0.1:1/0")
    # When a status is asked, or an acceptance recorded / Then it is one StoreError
    with pytest.raises(StoreError, match="store unavailable"):
        StatusReader(client=client, archive=None).status("case-1")
    with pytest.raises(StoreError, match="store unavailable"):
        record_acceptance(client, block(), now=datetime.now(UTC), retention_s=60)


class _NoBudget:
    """Traffic control with no upstream budget for the next 2.5 s."""

    def admit(self, lane: object) -> float | None:
        return 2.5

    def after_request(self, *, failed: bool) -> None: ...

    def abandon(self) -> None: ...


def test_a_command_sent_back_for_budget_is_waiting_without_an_attempt_used(
    client: redis.Redis, upstream: ScriptedUpstream
) -> None:
    # Given a worker whose rate limit has no slot now
    executor = worker_executor(client, upstream, Clock(), traffic=_NoBudget())
    # When a command is delivered (and sent back to the broker for 2.5 s)
    decision = deliver(executor, block())
    found = StatusReader(client=client, archive=None).status("case-1")
    # Then it is waiting, no attempt counted, the next one due when the worker said
    assert isinstance(decision, RetryLater) and decision.delay_s == 2.5
    assert (found.state, found.attempts, upstream.writes) == (CommandState.WAITING, 0, [])
    assert found.since is not None and found.next_attempt_at is not None
    assert (found.next_attempt_at - found.since).total_seconds() == pytest.approx(2.5, abs=0.002)
