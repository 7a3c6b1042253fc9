"""The worker's metrics: what the executor, traffic control and the store report, and how
the Prometheus recorder turns it into bounded series."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from subswitch.contract import ChangeBlockStatus, Lane, Outcome, ResultEvent
from subswitch.errors import StoreError
from tests.worker.conftest import DEFAULTS, Clock, ScriptedUpstream, new_store
from worker.executor import Executor, RetryCause
from worker.metrics import InMemoryRecorder, PrometheusRecorder, command_type_label, lane_label
from worker.policy import RetryPolicy
from worker.sinks import InMemoryDeadLetters, InMemoryEventSink
from worker.store import LuaScripts
from worker.traffic import BreakerPolicy, CircuitBreaker, RateLimiter
from worker.upstream import UpstreamTimeout, UpstreamUnavailable

BlockFactory = Callable[..., ChangeBlockStatus]


def executor_with(
    recorder: InMemoryRecorder, client: fakeredis.FakeRedis, upstream: ScriptedUpstream
) -> tuple[Executor, Clock]:
    clock = Clock()
    executor = Executor(
        store=new_store(client),
        upstream=upstream,
        events=InMemoryEventSink(),
        dead_letters=InMemoryDeadLetters(),
        policy=RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=10.0),
        lease_ms=30_000,
        settle_s=5.0,
        max_clock_skew_s=DEFAULTS.max_clock_skew_seconds,
        retention_s=DEFAULTS.retention_seconds,
        clock=clock,
        metrics=recorder,
    )
    return executor, clock


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_an_applied_command_is_counted_once_with_its_write(
    redis_client: fakeredis.FakeRedis, block: BlockFactory
) -> None:
    # Given an executor reporting to an in-memory recorder
    recorder, upstream = InMemoryRecorder(), ScriptedUpstream()
    executor, _ = executor_with(recorder, redis_client, upstream)
    command = block(command_id="c1", priority=Lane.URGENT)
    # When the command is delivered twice (a duplicate)
    executor.handle(command.model_dump(mode="json"), token="t1")
    executor.handle(command.model_dump(mode="json"), token="t2")
    # Then one outcome is counted, with one write and nothing left in flight
    assert [event.data.outcome for event in recorder.finished] == [Outcome.APPLIED]
    assert recorder.requests == [("change_block_status", "201")]
    assert (recorder.inflight_now, recorder.inflight_peak) == (0, 1)


def test_a_transient_error_is_a_retry_with_a_bounded_reason(
    redis_client: fakeredis.FakeRedis, block: BlockFactory
) -> None:
    # Given an upstream that answers 503 once, then times out with the answer lost
    recorder = InMemoryRecorder()
    upstream = ScriptedUpstream(
        script=[
            UpstreamUnavailable("503", status=503),
            UpstreamTimeout("read timeout", maybe_applied=True),
        ]
    )
    executor, clock = executor_with(recorder, redis_client, upstream)
    command = block(command_id="c2").model_dump(mode="json")
    # When it is delivered twice, the second time after the first retry's delay
    executor.handle(command, token="t1")
    clock.advance(60)
    executor.handle(command, token="t2")
    # Then both are retries with reasons from the fixed set, and the lost answer settles
    assert recorder.retries == [RetryCause.UPSTREAM_5XX.value, RetryCause.UPSTREAM_TIMEOUT.value]
    assert recorder.requests == [
        ("change_block_status", "503"),
        ("change_block_status", "timeout"),
    ]
    assert recorder.settles == [5.0]
    assert recorder.finished == []


def test_the_prometheus_recorder_labels_an_outcome_by_type_lane_and_outcome(
    redis_client: fakeredis.FakeRedis, block: BlockFactory
) -> None:
    # Given a Prometheus recorder and the event of an applied urgent block, 2.5 s late
    registry = CollectorRegistry()
    recorder = PrometheusRecorder(registry=registry, retry_reasons=["target_busy"])
    command = block(command_id="c3", priority=Lane.URGENT)
    completed = command.issued_at + timedelta(seconds=2.5)
    executor = Executor(
        store=new_store(redis_client), upstream=ScriptedUpstream(), events=InMemoryEventSink(),
        dead_letters=InMemoryDeadLetters(), policy=RetryPolicy(max_attempts=4), lease_ms=30_000,
        settle_s=0, max_clock_skew_s=300, retention_s=86_400, metrics=recorder,
        clock=lambda: completed,
    )  # fmt: skip
    # When it runs
    executor.handle(command.model_dump(mode="json"), token="t1")
    # Then the series carry bounded labels, latency is issued_at to completion
    labels = {"type": "block", "outcome": "applied", "lane": "urgent"}
    assert sample(registry, "subswitch_commands_total", **labels) == 1
    assert sample(registry, "subswitch_command_latency_seconds_sum", lane="urgent") == 2.5
    assert sample(registry, "subswitch_attempts_sum") == 1
    assert (
        sample(
            registry,
            "subswitch_upstream_requests_total",
            operation="change_block_status",
            status="201",
        )
        == 1
    )
    # ...and every known series exists from the start, at zero
    zero = {"type": "service", "outcome": "failed", "lane": "bulk"}
    assert sample(registry, "subswitch_commands_total", **zero) == 0
    assert sample(registry, "subswitch_retries_total", reason="target_busy") == 0
    assert sample(registry, "subswitch_breaker_transitions_total", to="open") == 0


def test_unknown_types_and_lanes_become_unknown() -> None:
    # Given labels from a message that is no valid command
    # When they are mapped
    # Then nothing outside the fixed sets gets through
    assert command_type_label(None) == "unknown"
    assert command_type_label("Evil\nType") == "unknown"
    assert command_type_label("ChangeServiceStatus") == "service"
    assert lane_label(None) == "unknown"
    assert lane_label("telco-42") == "unknown"
    assert lane_label(Lane.BULK) == "bulk"


def test_settling_targets_count_down_as_their_hold_runs_out() -> None:
    # Given a recorder with a settable monotonic clock
    now = [100.0]
    registry = CollectorRegistry()
    recorder = PrometheusRecorder(registry=registry, monotonic=lambda: now[0])
    # When two targets start settling, for 5 s and 30 s
    recorder.settling(5.0)
    recorder.settling(30.0)
    assert sample(registry, "subswitch_settling_targets") == 2
    now[0] += 10
    # Then after 10 s only one is held, in the gauge and in the live figures
    assert recorder.refresh() == 1
    assert sample(registry, "subswitch_settling_targets") == 1
    assert recorder.snapshot(node="w1", pid=1).settling == 1


def test_the_live_figures_total_outcomes_by_lane(block: BlockFactory) -> None:
    # Given a recorder that saw two applied urgent commands and one failed bulk command
    recorder = PrometheusRecorder(registry=CollectorRegistry())

    def event(outcome: Outcome, lane: Lane) -> ResultEvent:
        data: dict[str, Any] = {
            "command_id": "x", "command_type": "ChangeBlockStatus", "org_id": "telco",
            "subscription_id": 1, "active": True, "outcome": outcome, "attempts": 1,
            "issued_at": None, "completed_at": block().issued_at, "priority": lane,
            "source": "tests",
        }  # fmt: skip
        return ResultEvent.model_validate(
            {"id": "e", "type": "t", "time": block().issued_at, "subject": "s", "data": data}
        )

    for outcome, lane in [
        (Outcome.APPLIED, Lane.URGENT),
        (Outcome.APPLIED, Lane.URGENT),
        (Outcome.FAILED, Lane.BULK),
    ]:
        recorder.command_finished(event(outcome, lane))
    # When its snapshot is taken
    stats = recorder.snapshot(node="w1", pid=7)
    # Then it holds the totals per lane and outcome
    assert stats.outcomes == {"urgent:applied": 2, "bulk:failed": 1}
    assert (stats.node, stats.pid) == ("w1", 7)


def test_a_store_that_does_not_answer_counts_a_store_error() -> None:
    # Given scripts on a Redis that is not there
    recorder = InMemoryRecorder()
    client = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    scripts = LuaScripts(client=client, metrics=recorder)
    run = scripts.register("return 1")
    # When a script runs
    with pytest.raises(StoreError):
        run([], [])
    # Then one store error is counted
    assert recorder.store_errors == 1


def test_the_breaker_reports_its_transitions_and_the_limiter_its_waits() -> None:
    # Given a breaker and a limiter reporting to one recorder, on one store
    recorder = InMemoryRecorder()
    scripts = LuaScripts(client=fakeredis.FakeRedis())
    policy = BreakerPolicy(failure_ratio=0.5, min_requests=2, window_s=10, cooldown_s=5.0)
    breaker = CircuitBreaker(scripts=scripts, policy=policy, metrics=recorder)
    limiter = RateLimiter(scripts=scripts, rate_per_s=1000, metrics=recorder, sleep=lambda _: None)
    # When two requests fail and a slot is taken
    for _ in range(2):
        assert breaker.before_request() is None
        breaker.after_request(failed=True)
    assert limiter.acquire(Lane.URGENT) is None
    # Then the circuit's opening is counted and the wait observed
    assert recorder.transitions == ["open"]
    assert len(recorder.waits) == 1
