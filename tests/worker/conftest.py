"""Fixtures for worker tests: a fakeredis store, a scripted upstream, in-memory sinks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import fakeredis
import pytest
import redis

from subswitch.contract import ChangeBlockStatus, ChangeServiceStatus, ResultEvent
from subswitch.settings import Settings
from worker.executor import Authority, Executor
from worker.policy import RetryPolicy
from worker.sinks import InMemoryDeadLetters, InMemoryEventSink
from worker.store import RedisStore

Reply = int | Exception
#: Settings' own defaults (not the environment's) for what the tests do not vary.
DEFAULTS: Final = Settings.model_construct()


def new_store(client: redis.Redis, **overrides: Any) -> RedisStore:
    """A store on ``client`` with the default retention and clock skew."""
    values: dict[str, Any] = {
        "retention_s": DEFAULTS.retention_seconds,
        "max_clock_skew_s": DEFAULTS.max_clock_skew_seconds,
    }
    return RedisStore(client=client, **{**values, **overrides})


@dataclass
class ScriptedUpstream:
    """Answers writes from a script (status codes or exceptions to raise), else 201."""

    script: list[Reply] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    #: Run, one per write, while that write is in flight (before it is answered).
    during_writes: list[Callable[[], None]] = field(default_factory=list)

    def change_service_status(
        self,
        org_id: str,
        subscription_id: int,
        service_id: int,
        *,
        active: bool,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> int:
        return self._answer(kind="service", ident=service_id, active=active, key=idempotency_key)

    def change_block_status(
        self,
        org_id: str,
        subscription_id: int,
        block_id: int,
        *,
        active: bool,
        reason: str | None = None,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> int:
        return self._answer(kind="block", ident=block_id, active=active, key=idempotency_key)

    def _answer(self, **write: Any) -> int:
        self.writes.append(write)
        if self.during_writes:
            self.during_writes.pop(0)()
        reply = self.script.pop(0) if self.script else 201
        if isinstance(reply, Exception):
            raise reply
        return reply


@dataclass
class Clock:
    """A settable clock."""

    now: datetime = field(default_factory=lambda: datetime(2026, 11, 22, 10, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Harness:
    executor: Executor
    store: RedisStore
    upstream: ScriptedUpstream
    events: InMemoryEventSink
    dead_letters: InMemoryDeadLetters
    clock: Clock

    def events_of(self, command_id: str) -> list[ResultEvent]:
        parsed = [ResultEvent.model_validate_json(body) for _, body in self.events.published]
        return [event for event in parsed if event.data.command_id == command_id]


@pytest.fixture
def redis_client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()


HarnessFactory = Callable[..., Harness]


@pytest.fixture
def harness_factory(redis_client: fakeredis.FakeRedis) -> HarnessFactory:
    """Harnesses on one fakeredis; ``settle_s`` is the settle time (0: no settling)."""

    def make(
        *, settle_s: float = 0.0, lease_ms: int = 30_000, authority: Authority | None = None
    ) -> Harness:
        clock = Clock()
        store = new_store(redis_client)
        upstream = ScriptedUpstream()
        events, dead = InMemoryEventSink(), InMemoryDeadLetters()
        policy = RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=10.0)
        executor = Executor(
            store=store,
            upstream=upstream,
            events=events,
            dead_letters=dead,
            policy=policy,
            lease_ms=lease_ms,
            settle_s=settle_s,
            max_clock_skew_s=DEFAULTS.max_clock_skew_seconds,
            retention_s=DEFAULTS.retention_seconds,
            authority=authority,
            clock=clock,
        )
        return Harness(executor, store, upstream, events, dead, clock)

    return make


@pytest.fixture
def harness(harness_factory: HarnessFactory) -> Harness:
    return harness_factory()


@pytest.fixture
def block() -> Callable[..., ChangeBlockStatus]:
    def make(**overrides: Any) -> ChangeBlockStatus:
        fields: dict[str, Any] = {
            "org_id": "telco",
            "subscription_id": 7,
            "block_id": 1,
            "active": True,
            "source": "tests",
            "issued_at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC),
        }
        fields.update(overrides)
        return ChangeBlockStatus(**fields)

    return make


@pytest.fixture
def service() -> Callable[..., ChangeServiceStatus]:
    def make(**overrides: Any) -> ChangeServiceStatus:
        fields: dict[str, Any] = {
            "org_id": "telco",
            "subscription_id": 7,
            "service_id": 1,
            "active": False,
            "source": "tests",
            "issued_at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC),
        }
        fields.update(overrides)
        return ChangeServiceStatus(**fields)

    return make
