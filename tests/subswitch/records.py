"""What status and retry tests share: a worker's executor on a given store client, a
command builder, and an in-memory :class:`~subswitch.audit.EventArchive`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

import redis

from subswitch.contract import ChangeBlockStatus, Outcome, ResultEvent, Target
from tests.worker.conftest import DEFAULTS, Clock, ScriptedUpstream, new_store
from worker.executor import Decision, Executor, Traffic
from worker.policy import RetryPolicy
from worker.sinks import InMemoryDeadLetters, InMemoryEventSink

#: When the test commands were issued: an hour before the test clock's now.
ISSUED: Final = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
SETTLE_S: Final = 30.0
MAX_ATTEMPTS: Final = 3


def worker_executor(
    client: redis.Redis, upstream: ScriptedUpstream, clock: Clock, traffic: Traffic | None = None
) -> Executor:
    """The worker's executor on ``client``, as a worker process builds it."""
    return Executor(
        traffic=traffic,
        store=new_store(client),
        upstream=upstream,
        events=InMemoryEventSink(),
        dead_letters=InMemoryDeadLetters(),
        policy=RetryPolicy(max_attempts=MAX_ATTEMPTS, base_delay_s=0.5, max_delay_s=10.0),
        lease_ms=30_000,
        settle_s=SETTLE_S,
        max_clock_skew_s=DEFAULTS.max_clock_skew_seconds,
        retention_s=DEFAULTS.retention_seconds,
        clock=clock,
    )


def block(**overrides: Any) -> ChangeBlockStatus:
    """A fraud block of subscription 7, issued at ``ISSUED``."""
    fields: dict[str, Any] = {
        "command_id": "case-1",
        "org_id": "telco",
        "subscription_id": 7,
        "block_id": 1,
        "active": True,
        "reason": "stolen",
        "source": "fraud-engine",
        "issued_at": ISSUED,
        "correlation_id": "case-8812",
    }
    return ChangeBlockStatus(**{**fields, **overrides})


def deliver(executor: Executor, command: ChangeBlockStatus, token: str = "t1") -> Decision:
    """One delivery of ``command`` to the worker."""
    return executor.handle(command.model_dump(mode="json"), token=token)


class MemoryArchive:
    """Keeps every event given; answers as the SQL archive does."""

    def __init__(self, events: Iterable[ResultEvent] = ()) -> None:
        self.events: list[ResultEvent] = list(events)

    def add(self, event: ResultEvent) -> None:
        """Archive one more event."""
        self.events.append(event)

    def latest_event(self, command_id: str) -> ResultEvent | None:
        """The newest event of ``command_id`` by completion time."""
        mine = [e for e in self.events if e.data.command_id == command_id]
        return max(mine, key=lambda e: e.data.completed_at, default=None)

    def newest_applied(self, target: Target) -> ResultEvent | None:
        """The applied event of the newest command on ``target``."""
        applied = [
            e
            for e in self.events
            if e.data.outcome is Outcome.APPLIED and e.subject == target.subject
        ]
        return max(applied, key=lambda e: (e.data.issued_at, e.data.command_id or ""), default=None)
