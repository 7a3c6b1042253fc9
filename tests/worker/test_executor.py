"""The executor's promises, against a fakeredis store and a scripted upstream."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import fakeredis

from subswitch import keys
from subswitch.contract import ChangeBlockStatus, ChangeServiceStatus, Outcome
from tests.worker.conftest import DEFAULTS, Clock, Harness, new_store
from worker.executor import Ack, Executor, RetryLater
from worker.policy import RetryPolicy
from worker.sinks import InMemoryDeadLetters, InMemoryEventSink
from worker.store import Go
from worker.upstream import ErrorMessage, PermanentError, UpstreamTimeout, UpstreamUnavailable

BlockFactory = Callable[..., ChangeBlockStatus]


def wire(command: ChangeBlockStatus | ChangeServiceStatus) -> dict[str, Any]:
    return command.model_dump(mode="json")


def test_a_command_is_applied_once_with_its_idempotency_key(
    harness: Harness, block: BlockFactory
) -> None:
    # Given a block command
    command = block(command_id="fraud-case-1-block", reason="stolen")
    # When it is handled
    decision = harness.executor.handle(wire(command), token="t1")
    # Then it was written once with its command id as idempotency key, and reported applied
    assert decision == Ack(Outcome.APPLIED)
    assert harness.upstream.writes == [
        {"kind": "block", "ident": 1, "active": True, "key": "fraud-case-1-block"}
    ]
    [event] = harness.events_of("fraud-case-1-block")
    assert (event.data.outcome, event.data.attempts, event.data.upstream_status) == (
        Outcome.APPLIED,
        1,
        201,
    )
    assert harness.events.published[0][0] == "command.applied"


def test_a_duplicate_of_a_finished_command_is_neither_sent_nor_reported_again(
    harness: Harness, block: BlockFactory
) -> None:
    # Given a command that was applied
    command = block()
    harness.executor.handle(wire(command), token="t1")
    # When the same command is delivered again, even re-issued later
    again = command.model_copy(update={"issued_at": command.issued_at + timedelta(minutes=5)})
    decision = harness.executor.handle(wire(again), token="t2")
    # Then nothing more reaches the upstream and no second event goes out
    assert decision == Ack(Outcome.APPLIED)
    assert len(harness.upstream.writes) == 1
    assert len(harness.events_of(command.command_id)) == 1


def test_a_reused_command_id_with_another_payload_is_rejected_with_its_own_event(
    harness: Harness, block: BlockFactory
) -> None:
    # Given an applied block command
    first = block(command_id="cmd-1")
    harness.executor.handle(wire(first), token="t1")
    # When another payload arrives under the same command id
    second = block(command_id="cmd-1", active=False)
    decision = harness.executor.handle(wire(second), token="t2")
    # Then it is never applied, gets a rejected event with another id; the first stands
    assert decision == Ack(Outcome.REJECTED)
    assert len(harness.upstream.writes) == 1
    applied, rejected = harness.events_of("cmd-1")
    assert rejected.data.outcome == Outcome.REJECTED
    assert "different payload" in (rejected.data.error.message if rejected.data.error else "")
    assert applied.id != rejected.id
    assert harness.executor.handle(wire(first), token="t3") == Ack(Outcome.APPLIED)
    assert harness.executor.handle(wire(second), token="t4") == Ack(Outcome.REJECTED)
    assert len(harness.events_of("cmd-1")) == 2


def test_an_older_command_on_a_target_is_superseded_by_a_newer_applied_one(
    harness: Harness, block: BlockFactory
) -> None:
    # Given an unblock issued at 10:00 that was applied
    newer = block(
        command_id="unblock", active=False, issued_at=block().issued_at + timedelta(hours=1)
    )
    harness.executor.handle(wire(newer), token="t1")
    # When the block issued at 09:00 arrives late
    older = block(command_id="block", active=True)
    decision = harness.executor.handle(wire(older), token="t2")
    # Then the older block never reaches the upstream
    assert decision == Ack(Outcome.SUPERSEDED)
    assert [write["active"] for write in harness.upstream.writes] == [False]
    [event] = harness.events_of("block")
    assert event.data.outcome == Outcome.SUPERSEDED and event.data.attempts == 0


def test_commands_issued_at_the_same_instant_are_ordered_by_command_id(
    harness: Harness, block: BlockFactory
) -> None:
    # Given command "b" applied
    harness.executor.handle(wire(block(command_id="b")), token="t1")
    # When "a", issued at the same instant, arrives
    decision = harness.executor.handle(wire(block(command_id="a", active=False)), token="t2")
    # Then "a" counts as older
    assert decision == Ack(Outcome.SUPERSEDED)


def test_other_targets_are_not_affected_by_ordering(
    harness: Harness, block: BlockFactory, service: Callable[..., ChangeServiceStatus]
) -> None:
    # Given a newer command applied on block 1
    newer = block(command_id="new", issued_at=block().issued_at + timedelta(hours=1))
    harness.executor.handle(wire(newer), token="t1")
    # When older commands arrive for block 2 and for a service of the subscription
    decisions = [
        harness.executor.handle(wire(block(command_id="b2", block_id=2)), token="t2"),
        harness.executor.handle(wire(service(command_id="s1")), token="t3"),
    ]
    # Then both are applied
    assert decisions == [Ack(Outcome.APPLIED), Ack(Outcome.APPLIED)]


def test_a_transient_failure_is_retried_and_the_retry_applies_it(
    harness: Harness, block: BlockFactory
) -> None:
    # Given an upstream that answers 503 once
    harness.upstream.script = [UpstreamUnavailable("503", status=503)]
    command = block()
    # When the command is handled, then redelivered as the retry says
    first = harness.executor.handle(wire(command), token="t1")
    second = harness.executor.handle(wire(command), token="t2")
    # Then the first delivery asks for a retry within the policy's bound, the second applies
    assert isinstance(first, RetryLater) and 0 <= first.delay_s <= 0.5
    assert second == Ack(Outcome.APPLIED)
    [event] = harness.events_of(command.command_id)
    assert event.data.attempts == 2
    assert [write["key"] for write in harness.upstream.writes] == [command.command_id] * 2


def test_retry_after_is_honoured(harness: Harness, block: BlockFactory) -> None:
    # Given an upstream that answers 429 with Retry-After: 7
    harness.upstream.script = [UpstreamUnavailable("429", status=429, retry_after=7.0)]
    # When the command is handled
    decision = harness.executor.handle(wire(block()), token="t1")
    # Then the retry waits at least 7 s
    assert isinstance(decision, RetryLater) and decision.delay_s >= 7.0


def test_attempts_run_out_into_failed_with_the_last_error(
    harness: Harness, block: BlockFactory
) -> None:
    # Given an upstream that times out on every attempt (the policy allows 4)
    harness.upstream.script = [UpstreamTimeout("read timeout", maybe_applied=True)] * 4
    command = block()
    # When the command is delivered until a decision is final
    decisions = [harness.executor.handle(wire(command), token=f"t{n}") for n in range(4)]
    # Then three retries were asked for, then it failed, with the error in the event
    assert all(isinstance(decision, RetryLater) for decision in decisions[:3])
    assert decisions[3] == Ack(Outcome.FAILED)
    [event] = harness.events_of(command.command_id)
    assert event.data.attempts == 4
    assert event.data.error is not None and "read timeout" in event.data.error.message


def test_a_permanent_error_fails_at_once_with_the_upstream_error_message(
    harness: Harness, block: BlockFactory
) -> None:
    # Given an upstream that answers 404 with an ErrorMessage
    body = ErrorMessage(
        code=4041,
        status="NOT_FOUND",
        message="no such subscription",
        detail_msg="subscription 7 unknown",
    )
    harness.upstream.script = [PermanentError("404", status=404, error=body)]
    command = block()
    # When the command is handled
    decision = harness.executor.handle(wire(command), token="t1")
    # Then it fails without a retry, carrying the upstream's fields
    assert decision == Ack(Outcome.FAILED)
    [event] = harness.events_of(command.command_id)
    assert event.data.upstream_status == 404
    assert event.data.error is not None
    assert (event.data.error.code, event.data.error.detail_msg) == (4041, "subscription 7 unknown")
    assert b'"detailMsg":"subscription 7 unknown"' in harness.events.published[0][1]


def test_a_command_past_not_after_is_expired_without_being_sent(
    harness: Harness, block: BlockFactory
) -> None:
    # Given a command whose not_after has passed
    command = block(not_after=harness.clock.now - timedelta(seconds=1))
    # When it is handled
    decision = harness.executor.handle(wire(command), token="t1")
    # Then it expires and the upstream never hears of it
    assert decision == Ack(Outcome.EXPIRED)
    assert harness.upstream.writes == []


def test_not_after_passing_between_attempts_fails_the_command(
    harness: Harness, block: BlockFactory
) -> None:
    # Given a command tried once that failed transiently, with not_after in 60 s
    harness.upstream.script = [UpstreamUnavailable("502", status=502)]
    command = block(not_after=harness.clock.now + timedelta(seconds=60))
    harness.executor.handle(wire(command), token="t1")
    # When the retry comes after not_after
    harness.clock.advance(61)
    decision = harness.executor.handle(wire(command), token="t2")
    # Then it fails (it was sent once) and is not sent again
    assert decision == Ack(Outcome.FAILED)
    assert len(harness.upstream.writes) == 1
    [event] = harness.events_of(command.command_id)
    assert event.data.error is not None and "not_after" in event.data.error.message


def test_a_busy_target_makes_the_delivery_wait(harness: Harness, block: BlockFactory) -> None:
    # Given another command holding the target's lock
    other = block(command_id="other")
    assert harness.store.begin(
        other,
        fingerprint=other.fingerprint(),
        token="x",
        lease_ms=30_000,
        max_attempts=4,
        expired=False,
    ) == Go(1)
    # When a command for the same target is handled
    decision = harness.executor.handle(wire(block(command_id="mine")), token="t1")
    # Then it is retried later and nothing is sent
    assert isinstance(decision, RetryLater)
    assert harness.upstream.writes == []


def test_a_crash_after_the_upstream_write_resends_with_the_same_key_once_the_lease_ends(
    harness: Harness, block: BlockFactory, redis_client: fakeredis.FakeRedis
) -> None:
    # Given a delivery that took the lock, wrote upstream, and died before recording it
    command = block()
    harness.store.begin(
        command,
        fingerprint=command.fingerprint(),
        token="dead",
        lease_ms=30_000,
        max_attempts=4,
        expired=False,
    )
    # When the message is redelivered while the lease lives, and again after it ended
    while_leased = harness.executor.handle(wire(command), token="t2")
    redis_client.delete(keys.target_lock(command.target))
    after_lease = harness.executor.handle(wire(command), token="t3")
    # Then it waited, then repeated the write under the same idempotency key as attempt 2
    assert isinstance(while_leased, RetryLater)
    assert after_lease == Ack(Outcome.APPLIED)
    assert [write["key"] for write in harness.upstream.writes] == [command.command_id]
    assert harness.events_of(command.command_id)[0].data.attempts == 2


def test_a_crash_before_the_event_went_out_republishes_the_same_event_without_a_write(
    redis_client: fakeredis.FakeRedis, block: BlockFactory
) -> None:
    # Given a store whose publish claims end at once, and a command finished but unpublished
    store = new_store(redis_client, claim_ms=0)
    events = InMemoryEventSink()
    upstream_writes: list[str] = []

    class Upstream:
        def change_block_status(self, *args: Any, **kwargs: Any) -> int:
            upstream_writes.append(kwargs["idempotency_key"])
            return 201

        def change_service_status(self, *args: Any, **kwargs: Any) -> int:
            raise AssertionError("no service writes here")

    class DyingSink(InMemoryEventSink):
        def publish(self, event: bytes, *, routing_key: str, event_id: str) -> None:
            raise ConnectionError("worker killed before publishing")

    def executor(sink: InMemoryEventSink) -> Executor:
        return Executor(
            store=store,
            upstream=Upstream(),
            events=sink,
            dead_letters=InMemoryDeadLetters(),
            policy=RetryPolicy(max_attempts=DEFAULTS.max_attempts),
            lease_ms=30_000,
            settle_s=0.0,
            max_clock_skew_s=300,
            retention_s=86_400,
            clock=Clock(),
        )

    command = block()
    with contextlib.suppress(ConnectionError):
        executor(DyingSink()).handle(wire(command), token="t1")
    # When the message is redelivered
    decision = executor(events).handle(wire(command), token="t2")
    again = executor(events).handle(wire(command), token="t3")
    # Then the event goes out once, and the upstream was written once
    assert decision == again == Ack(Outcome.APPLIED)
    assert upstream_writes == [command.command_id]
    assert len(events.published) == 1


def test_an_invalid_message_is_dead_lettered_and_rejected_with_its_command_id(
    harness: Harness, block: BlockFactory
) -> None:
    # Given a message with a block id of 3
    payload = wire(block(command_id="bad-1")) | {"block_id": 3}
    # When it is handled
    decision = harness.executor.handle(payload, token="t1")
    # Then it is rejected with the reason, kept as a dead letter, and never sent
    assert decision == Ack(Outcome.REJECTED)
    [event] = harness.events_of("bad-1")
    assert event.data.error is not None and "block_id" in event.data.error.message
    [(body, reason)] = harness.dead_letters.letters
    assert b'"block_id": 3' in body and "block_id" in reason
    assert harness.upstream.writes == []


def test_garbage_is_dead_lettered_and_rejected_without_a_command_id(harness: Harness) -> None:
    # Given a payload that is no command at all
    payload = b"\x00\xffnot json"
    # When it is handled
    decision = harness.executor.handle(payload, token="t1")
    # Then it is rejected and dead-lettered
    assert decision == Ack(Outcome.REJECTED)
    assert len(harness.dead_letters.letters) == 1
    assert len(harness.events_of(None)) == 1  # type: ignore[arg-type]
