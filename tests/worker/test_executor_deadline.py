"""Each attempt has an absolute deadline, safely inside its target's lease."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis

from subswitch.contract import ChangeBlockStatus, Outcome
from tests.worker.conftest import DEFAULTS, Clock, new_store
from worker.executor import LEASE_MARGIN_S, Ack, Executor
from worker.policy import RetryPolicy
from worker.sinks import InMemoryDeadLetters, InMemoryEventSink


class DeadlineRecorder:
    """An upstream that answers 201 and keeps the deadline of each write."""

    def __init__(self) -> None:
        self.deadlines: list[float | None] = []

    def change_block_status(self, *args: Any, deadline: float | None = None, **kw: Any) -> int:
        self.deadlines.append(deadline)
        return 201

    def change_service_status(self, *args: Any, deadline: float | None = None, **kw: Any) -> int:
        self.deadlines.append(deadline)
        return 201


def test_every_write_carries_a_deadline_inside_the_lease(
    redis_client: fakeredis.FakeRedis, block: Callable[..., ChangeBlockStatus]
) -> None:
    # Given an executor with a 30 s lease whose monotonic clock reads 1000 s
    upstream = DeadlineRecorder()
    executor = Executor(
        store=new_store(redis_client),
        upstream=upstream,
        events=InMemoryEventSink(),
        dead_letters=InMemoryDeadLetters(),
        policy=RetryPolicy(max_attempts=DEFAULTS.max_attempts),
        lease_ms=30_000,
        settle_s=0.0,
        max_clock_skew_s=300,
        retention_s=86_400,
        clock=Clock(),
        monotonic=lambda: 1000.0,
    )
    # When a command is applied
    decision = executor.handle(block().model_dump(mode="json"), token="t1")
    # Then its write had to be over the lease's margin before the lease ends
    assert decision == Ack(Outcome.APPLIED)
    assert upstream.deadlines == [1000.0 + 30.0 - LEASE_MARGIN_S]
