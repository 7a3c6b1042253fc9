"""Time bounds on the worker side (contract §2.6): too far ahead, or older than retention."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import fakeredis

from subswitch import keys
from subswitch.contract import ChangeBlockStatus, Outcome
from tests.worker.conftest import Harness, new_store
from worker.executor import Ack
from worker.store import Go, OutOfBounds, RedisStore

BlockFactory = Callable[..., ChangeBlockStatus]
SKEW_S, RETENTION_S = 300, 86_400  # the harness's bounds


def wire(command: ChangeBlockStatus) -> dict[str, Any]:
    return command.model_dump(mode="json")


def test_a_command_stamped_too_far_ahead_is_rejected_and_does_not_pin_its_target(
    harness: Harness, block: BlockFactory
) -> None:
    # Given an unblock stamped a day ahead of the worker's clock
    now = harness.clock.now
    future = block(command_id="future-unblock", active=False, issued_at=now + timedelta(days=1))
    # When it is delivered, then a fraud block issued now, then the unblock once more
    rejected = harness.executor.handle(wire(future), token="t1")
    fraud = harness.executor.handle(wire(block(command_id="fraud", issued_at=now)), token="t2")
    again = harness.executor.handle(wire(future), token="t3")
    # Then the unblock is rejected (once, with its reason) and never sent; the block applies
    assert (rejected, fraud, again) == (
        Ack(Outcome.REJECTED),
        Ack(Outcome.APPLIED),
        Ack(Outcome.REJECTED),
    )
    assert [write["key"] for write in harness.upstream.writes] == ["fraud"]
    [event] = harness.events_of("future-unblock")
    assert (
        event.data.error is not None and "ahead of the worker's clock" in event.data.error.message
    )


def test_a_command_within_the_clock_skew_is_applied(harness: Harness, block: BlockFactory) -> None:
    # Given a command stamped just inside the allowed skew
    command = block(issued_at=harness.clock.now + timedelta(seconds=SKEW_S - 1))
    # When it is delivered
    decision = harness.executor.handle(wire(command), token="t1")
    # Then it is applied
    assert decision == Ack(Outcome.APPLIED)


def test_a_command_older_than_the_retention_window_is_rejected(
    harness: Harness, block: BlockFactory
) -> None:
    # Given a command issued longer ago than duplicates are remembered
    command = block(issued_at=harness.clock.now - timedelta(seconds=RETENTION_S + 1))
    # When it is delivered
    decision = harness.executor.handle(wire(command), token="t1")
    # Then it is rejected and never sent
    assert decision == Ack(Outcome.REJECTED)
    assert harness.upstream.writes == []
    [event] = harness.events_of(command.command_id)
    assert event.data.error is not None and "retention" in event.data.error.message


def test_a_command_sent_before_is_not_refused_on_its_retry(
    redis_client: fakeredis.FakeRedis, block: BlockFactory
) -> None:
    # Given a command whose first attempt was made
    store = new_store(redis_client)
    command, fresh = block(), block(command_id="fresh", block_id=2)

    def begin(cmd: ChangeBlockStatus, token: str, **flags: bool) -> Any:
        return store.begin(
            cmd,
            fingerprint=cmd.fingerprint(),
            token=token,
            lease_ms=30_000,
            max_attempts=4,
            expired=False,
            **flags,
        )

    assert begin(command, "t1") == Go(1)
    store.release(command.command_id, command.target, token="t1", last_error="")
    # When its retry comes after its issued_at left the window, and a fresh one does too
    retry = begin(command, "t2", out_of_bounds=True)
    refused = begin(fresh, "t3", out_of_bounds=True)
    # Then the retry goes on (it was accepted once), the fresh one is refused
    assert retry == Go(2)
    assert refused == OutOfBounds()


def test_the_watermark_outlives_the_window_in_which_an_older_command_is_accepted(
    redis_client: fakeredis.FakeRedis, block: BlockFactory
) -> None:
    # Given a store with the default retention and skew
    store = RedisStore(client=redis_client, retention_s=RETENTION_S, max_clock_skew_s=SKEW_S)
    command = block()
    options: dict[str, Any] = {"lease_ms": 30_000, "max_attempts": 4, "expired": False}
    store.begin(command, fingerprint=command.fingerprint(), token="t1", **options)
    # When a command is applied
    store.finish(
        command, fingerprint=command.fingerprint(), token="t1", event=b"applied", applied=True
    )
    # Then its target's watermark lives longer than retention plus skew
    assert redis_client.ttl(keys.target(command.target)) > RETENTION_S + SKEW_S
