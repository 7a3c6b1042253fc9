"""Deliveries racing each other on one command, played step by step through the executor."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import fakeredis

from subswitch import keys
from subswitch.contract import ChangeBlockStatus, Outcome
from tests.worker.conftest import Harness
from worker.executor import Ack, RetryLater
from worker.upstream import UpstreamUnavailable

BlockFactory = Callable[..., ChangeBlockStatus]


def wire(command: ChangeBlockStatus) -> dict[str, Any]:
    return command.model_dump(mode="json")


def test_a_duplicate_during_the_last_attempt_leaves_the_attempt_to_decide(
    harness: Harness, block: BlockFactory
) -> None:
    # Given a block whose attempts failed transiently up to the last one
    command = block(command_id="fraud-block")
    harness.upstream.script = [UpstreamUnavailable("503", status=503)] * 3
    for n in range(3):
        assert isinstance(harness.executor.handle(wire(command), token=f"t{n}"), RetryLater)
    duplicate: list[Any] = []
    harness.upstream.during_writes = [
        lambda: duplicate.append(harness.executor.handle(wire(command), token="dup"))
    ]
    # When a duplicate arrives while the last attempt is in flight, and that attempt gets 201
    decision = harness.executor.handle(wire(command), token="last")
    # Then the duplicate waited, the command is applied (one event), and an older unblock
    # issued before it is superseded rather than sent
    assert isinstance(duplicate[0], RetryLater)
    assert decision == Ack(Outcome.APPLIED)
    assert [event.data.outcome for event in harness.events_of("fraud-block")] == [Outcome.APPLIED]
    older = block(
        command_id="old-unblock", active=False, issued_at=command.issued_at - timedelta(minutes=1)
    )
    assert harness.executor.handle(wire(older), token="o") == Ack(Outcome.SUPERSEDED)
    assert [write["active"] for write in harness.upstream.writes] == [True] * 4


def test_a_stale_delivery_never_causes_a_second_send_or_event(
    harness: Harness, block: BlockFactory, redis_client: fakeredis.FakeRedis
) -> None:
    # Given delivery A whose write hangs until its lease ran out and delivery B applied
    # the command meanwhile
    command = block()

    def lease_ends_and_b_applies() -> None:
        redis_client.delete(keys.target_lock(command.target))
        assert harness.executor.handle(wire(command), token="B") == Ack(Outcome.APPLIED)
        harness.upstream.script = [UpstreamUnavailable("502", status=502, maybe_applied=True)]

    harness.upstream.during_writes = [lease_ends_and_b_applies]
    # When A's answer (a 502) finally comes back, and the message is delivered once more
    stale = harness.executor.handle(wire(command), token="A")
    again = harness.executor.handle(wire(command), token="C")
    # Then A changed nothing: two writes in all (A's, B's), one applied event
    assert isinstance(stale, RetryLater)
    assert again == Ack(Outcome.APPLIED)
    assert len(harness.upstream.writes) == 2
    assert len(harness.events_of(command.command_id)) == 1
