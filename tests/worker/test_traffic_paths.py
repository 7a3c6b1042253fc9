"""Traffic control on every path: probes handed back, waits bounded whatever the clock does."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import fakeredis
import pytest

from subswitch import keys
from subswitch.contract import ChangeBlockStatus, Lane
from tests.worker.conftest import Harness
from worker.executor import RetryLater
from worker.store import LuaScripts
from worker.traffic import BreakerPolicy, CircuitBreaker, RateLimiter, TrafficControl

POLICY = BreakerPolicy(
    failure_ratio=0.5, min_requests=4, window_s=10, cooldown_s=5.0, probe_ttl_s=30.0, recheck_s=0.0
)


@pytest.fixture
def server_client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def scripts(server_client: fakeredis.FakeRedis) -> LuaScripts:
    return LuaScripts(client=server_client)


def store_now_ms(client: fakeredis.FakeRedis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def half_open(client: fakeredis.FakeRedis) -> None:
    """The circuit is open and its cool-down is over: the next caller probes."""
    client.hset(keys.BREAKER_STATE, mapping={"state": "open", "until": 0})


def spent_limiter(scripts: LuaScripts) -> RateLimiter:
    """A limiter at 1 write/s whose next slot is a second away (more than it may wait)."""
    limiter = RateLimiter(scripts=scripts, rate_per_s=1, horizon_s=2.0, max_wait_s=0.5)
    assert limiter.acquire(Lane.BULK) is None
    return limiter


def test_a_probe_the_rate_limiter_sends_back_is_handed_back(
    scripts: LuaScripts, server_client: fakeredis.FakeRedis
) -> None:
    # Given a half-open circuit and a rate limit with no budget left
    half_open(server_client)
    traffic = TrafficControl(
        limiter=spent_limiter(scripts), breaker=CircuitBreaker(scripts=scripts, policy=POLICY)
    )
    # When a caller gets the probe but the limiter makes it wait
    wait = traffic.admit(Lane.BULK)
    # Then the probe is free at once for another worker, not after its 30 s lease
    assert wait is not None
    assert server_client.get(keys.BREAKER_PROBE) is None
    assert CircuitBreaker(scripts=scripts, policy=POLICY).before_request() is None


def test_a_probe_whose_send_fails_outside_the_upstream_is_handed_back(
    harness: Harness,
    block: Callable[..., ChangeBlockStatus],
    redis_client: fakeredis.FakeRedis,
) -> None:
    # Given a half-open circuit, and a send that fails before any answer (a bug)
    half_open(redis_client)
    breaker = CircuitBreaker(scripts=harness.store.scripts, policy=POLICY)
    harness.executor._traffic = TrafficControl(breaker=breaker)
    harness.upstream.script = [RuntimeError("bug in the client")]
    # When the probe holder's delivery fails
    with pytest.raises(RuntimeError):
        harness.executor.handle(block().model_dump(mode="json"), token="t1")
    # Then another worker may probe at once
    other = CircuitBreaker(scripts=harness.store.scripts, policy=POLICY)
    assert other.before_request() is None


def test_a_step_of_the_store_clock_does_not_stall_the_rate_limiter(
    scripts: LuaScripts, server_client: fakeredis.FakeRedis
) -> None:
    # Given a limiter whose stored state lies an hour ahead (the store's clock stepped back)
    limiter = RateLimiter(scripts=scripts, rate_per_s=10, horizon_s=0.25)
    ahead_us = (store_now_ms(server_client) + 3_600_000) * 1000
    server_client.set(keys.RATE_TAT, ahead_us)
    for n in range(10):
        server_client.zadd(keys.RATE_SENT, {f"sent-{n}": ahead_us})
    # When callers ask for a slot and for admission
    reservation = limiter.reserve(Lane.BULK)
    admitted = limiter.admit()
    # Then they get one now, not in an hour
    assert reservation.granted and reservation.wait_s <= 0.25
    assert admitted is None


def test_a_step_of_the_store_clock_keeps_an_open_circuit_to_one_cool_down(
    scripts: LuaScripts, server_client: fakeredis.FakeRedis
) -> None:
    # Given a circuit opened "until" an hour from now (the store's clock stepped back)
    until = store_now_ms(server_client) + 3_600_000
    server_client.hset(keys.BREAKER_STATE, mapping={"state": "open", "until": until})
    # When a caller asks to go
    wait = CircuitBreaker(scripts=scripts, policy=POLICY).before_request()
    # Then it is told to wait at most one cool-down (plus jitter)
    assert wait is not None and wait <= POLICY.cooldown_s + 1.0


class SlowTraffic:
    """Traffic control that asks for an hour's wait."""

    def admit(self, lane: Lane) -> float | None:
        return 3600.0

    def after_request(self, *, failed: bool) -> None:
        raise AssertionError("nothing was sent")

    def abandon(self) -> None:
        """Nothing to hand back."""


def test_every_traffic_wait_stays_inside_the_retry_bound(
    harness: Harness, block: Callable[..., ChangeBlockStatus]
) -> None:
    # Given traffic control that asks for an hour
    harness.executor._traffic = SlowTraffic()
    # When a command is delivered
    decision = harness.executor.handle(block().model_dump(mode="json"), token="t1")
    # Then it comes back within the policy's longest delay (10 s), nothing sent
    assert isinstance(decision, RetryLater) and decision.delay_s <= 10.0
    assert harness.upstream.writes == []
