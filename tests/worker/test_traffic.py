"""The rate limiter and the circuit breaker, on a shared fakeredis server."""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import fakeredis
import pytest
from fakeredis._socket import _base as fake_socket
from fakeredis.commands_mixins import server_mixin

from subswitch import keys
from subswitch.contract import ChangeBlockStatus, Lane, Outcome
from tests.worker.conftest import Harness
from worker.executor import Ack, RetryLater
from worker.store import LuaScripts
from worker.traffic import BreakerPolicy, CircuitBreaker, RateLimiter, TrafficControl
from worker.upstream import UpstreamUnavailable


@dataclass
class StoreClock:
    """What the fake store's ``TIME`` answers: standing still until advanced."""

    now: float = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store_clock(monkeypatch: pytest.MonkeyPatch) -> StoreClock:
    clock = StoreClock()
    # fakeredis answers TIME (in Lua too) from time.time() of server_mixin, and expires
    # keys by the time.time() of its socket module: both follow this clock, so a slow
    # run (a busy machine) changes nothing
    monkeypatch.setattr(server_mixin, "time", clock)
    monkeypatch.setattr(fake_socket, "time", clock)
    return clock


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client_factory(server: fakeredis.FakeServer) -> Iterator[Callable[[], fakeredis.FakeRedis]]:
    clients: list[fakeredis.FakeRedis] = []

    def make() -> fakeredis.FakeRedis:
        clients.append(fakeredis.FakeRedis(server=server))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def scripts_factory(
    client_factory: Callable[[], fakeredis.FakeRedis],
) -> Callable[[], LuaScripts]:
    return lambda: LuaScripts(client=client_factory())


def test_concurrent_workers_never_get_slots_closer_than_the_interval(
    scripts_factory: Callable[[], LuaScripts],
) -> None:
    # Given eight workers, each with its own limiter and connection, at 100 writes/s
    limiters = [
        RateLimiter(scripts=scripts_factory(), rate_per_s=100, horizon_s=5.0) for _ in range(8)
    ]
    slots: list[int] = []
    lock, barrier = threading.Lock(), threading.Barrier(len(limiters))

    def reserve_many(limiter: RateLimiter) -> None:
        barrier.wait()
        for _ in range(40):
            reservation = limiter.reserve(Lane.BULK)
            if reservation.slot_us is not None:
                with lock:
                    slots.append(reservation.slot_us)

    # When they all reserve at once
    threads = [threading.Thread(target=reserve_many, args=(lim,)) for lim in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every granted slot is distinct and exactly one interval (10 ms, or a little
    # more: the pace is just under the rate) after the last
    ordered = sorted(slots)
    assert len(ordered) > 100
    interval = limiters[0].interval_us
    assert 10_000 <= interval <= 10_200
    assert {later - earlier for earlier, later in itertools.pairwise(ordered)} == {interval}


def test_a_slot_beyond_the_horizon_is_refused_with_a_hint(
    scripts_factory: Callable[[], LuaScripts],
) -> None:
    # Given a limiter at 10 writes/s whose bulk reach is 0.25 s
    limiter = RateLimiter(scripts=scripts_factory(), rate_per_s=10, horizon_s=0.25)
    # When bulk reserves until refused
    grants = []
    while (reservation := limiter.reserve(Lane.BULK)).granted:
        grants.append(reservation)
    # Then three slots (0, ~100, ~200 ms ahead) were granted and the refusal says when
    # to return (at most one interval later)
    assert len(grants) == 3
    assert 0 < reservation.wait_s <= limiter.interval_us / 1_000_000


def test_urgent_commands_go_first_when_the_budget_is_short(
    client_factory: Callable[[], fakeredis.FakeRedis],
    scripts_factory: Callable[[], LuaScripts],
) -> None:
    # Given a budget that bulk has reserved as far as it may (slots ~101 ms apart)
    limiter = RateLimiter(scripts=scripts_factory(), rate_per_s=10, horizon_s=0.26)
    while limiter.reserve(Lane.BULK).granted:
        pass
    # When urgent asks, and keeps asking beyond its own reach
    urgent = [limiter.reserve(Lane.URGENT) for _ in range(4)]
    # Then urgent got slots bulk could not, and once it was refused, bulk and normal step
    # back even where they would fit
    assert [reservation.granted for reservation in urgent] == [True, True, True, False]
    assert limiter.reserve(Lane.NORMAL).granted is False
    assert client_factory().exists(keys.RATE_URGENT_WAITING)


def test_acquire_waits_briefly_in_place_and_sends_the_rest_back(
    scripts_factory: Callable[[], LuaScripts], store_clock: StoreClock
) -> None:
    # Given a limiter at 10 writes/s that may hold a thread for at most 0.3 s, and a
    # store whose clock stands still (so the answers do not depend on the machine's load)
    slept: list[float] = []
    limiter = RateLimiter(
        scripts=scripts_factory(), rate_per_s=10, horizon_s=0.25, max_wait_s=0.3, sleep=slept.append
    )
    interval = limiter.interval_us / 1_000_000
    # When one caller after another asks (no time passes: sleeping is recorded only)
    answers = [limiter.acquire(Lane.BULK) for _ in range(4)]
    # Then three sent after waiting their turn, the fourth is told to come back later
    assert answers[:3] == [None, None, None]
    assert answers[3] is not None and answers[3] > 0
    assert slept[:3] == pytest.approx([0.0, interval, 2 * interval])


def test_the_hard_cap_admits_no_more_than_the_rate_in_any_second(
    scripts_factory: Callable[[], LuaScripts], store_clock: StoreClock
) -> None:
    # Given a cap of 5 writes/s shared by two workers
    first = RateLimiter(scripts=scripts_factory(), rate_per_s=5)
    second = RateLimiter(scripts=scripts_factory(), rate_per_s=5)
    admitted = 0
    # When they try to send 8 times every 10 ms for a second, however late their
    # reservations woke
    for _ in range(100):
        answers = [limiter.admit() for limiter in (first, second) * 4]
        admitted += answers.count(None)
        assert all(wait is None or 0 < wait <= 1.0 for wait in answers)
        store_clock.advance(0.01)
    # Then no more than 5 went in that second
    assert 0 < admitted <= 5


def test_callers_that_woke_late_together_are_admitted_one_interval_apart(
    scripts_factory: Callable[[], LuaScripts], store_clock: StoreClock
) -> None:
    # Given a cap of 100 writes/s with room in its last second
    limiter = RateLimiter(scripts=scripts_factory(), rate_per_s=100)
    interval = limiter.interval_us / 1_000_000
    # When ten callers whose slots have passed ask for admission at the same instant
    answers = [limiter.admit() for _ in range(10)]
    # Then only the pace's tolerance (two intervals ahead) goes at once; the others are
    # told to come back when the pace allows them, not at once
    assert answers[:3] == [None, None, None]
    assert all(wait == pytest.approx(interval, abs=1e-5) for wait in answers[3:])
    store_clock.advance(interval)
    assert limiter.admit() is None
    assert limiter.admit() is not None


def test_late_bunches_are_spread_out_and_no_second_holds_more_than_the_cap(
    scripts_factory: Callable[[], LuaScripts], store_clock: StoreClock
) -> None:
    # Given 4 workers at 200/s whose callers reach admission a little after their slots
    # (up to 2 ms), and, twice a second, one worker whose process had no core for 100 ms:
    # its callers arrive together when it runs again
    limiters = [RateLimiter(scripts=scripts_factory(), rate_per_s=200) for _ in range(4)]
    interval, start, rng = limiters[0].interval_us / 1_000_000, store_clock.now, random.Random(7)
    stalls = {k: rng.randrange(4) for k in range(6)}  # half-second -> stalled worker

    def arrival(slot: int) -> float:
        planned = slot * interval
        stalled = stalls[int(planned * 2)] == slot % 4 and planned % 0.5 < 0.1
        return (planned - planned % 0.5 + 0.1 if stalled else planned) + rng.uniform(0, 0.002)

    waiting = [(arrival(slot), slot) for slot in range(int(3 / interval))]
    heapq.heapify(waiting)
    admitted: list[float] = []
    # When every caller asks for admission at its time, and comes back when told
    while waiting:
        moment, slot = heapq.heappop(waiting)
        store_clock.now = start + moment
        wait = limiters[slot % 4].admit()
        if wait is None:
            admitted.append(moment)
        else:
            heapq.heappush(waiting, (moment + wait + rng.uniform(0, interval), slot))
    # Then no sliding second holds more than the cap, no 50 ms more than the pace and its
    # tolerance allow (a late bunch does not go at once), and the pace is kept overall
    assert max_in_window(admitted, 1.0) <= 200
    assert max_in_window(admitted, 0.05) <= math.floor(0.05 / interval) + 3
    assert len(admitted) / admitted[-1] >= 196


def max_in_window(moments: list[float], width: float) -> int:
    """The most moments in any window of ``width`` seconds."""
    ordered, most, first = sorted(moments), 0, 0
    for last, moment in enumerate(ordered):
        while moment - ordered[first] >= width:
            first += 1
        most = max(most, last - first + 1)
    return most


FAST = BreakerPolicy(failure_ratio=0.5, min_requests=4, window_s=10, cooldown_s=0.3, recheck_s=0.0)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)  # poll interval, bounded by the deadline


def test_the_breaker_opens_when_most_requests_fail(
    scripts_factory: Callable[[], LuaScripts],
) -> None:
    # Given a closed breaker
    breaker = CircuitBreaker(scripts=scripts_factory(), policy=FAST)
    assert breaker.before_request() is None
    # When three of four requests fail
    for failed in (False, True, True, True):
        breaker.after_request(failed=failed)
    # Then requests are held back for about the cool-down, in every process
    wait = CircuitBreaker(scripts=scripts_factory(), policy=FAST).before_request()
    assert wait is not None and 0 < wait <= FAST.cooldown_s + 1.0


def test_successes_and_too_few_requests_keep_it_closed(
    scripts_factory: Callable[[], LuaScripts],
) -> None:
    # Given a breaker
    breaker = CircuitBreaker(scripts=scripts_factory(), policy=FAST)
    # When only three requests failed (fewer than the minimum), then many succeed
    for failed in [True] * 3 + [False] * 10:
        breaker.after_request(failed=failed)
    # Then it stays closed
    assert breaker.before_request() is None


def test_after_the_cool_down_one_probe_decides(
    scripts_factory: Callable[[], LuaScripts],
) -> None:
    # Given an open breaker shared by two workers
    first = CircuitBreaker(scripts=scripts_factory(), policy=FAST)
    second = CircuitBreaker(scripts=scripts_factory(), policy=FAST)
    for _ in range(4):
        first.after_request(failed=True)
    # When the cool-down ends: one worker gets to probe, the other waits
    wait_for(lambda: first.before_request() is None)
    assert second.before_request() is not None
    # Then a failed probe opens it again, and a good one closes it
    first.after_request(failed=True)
    assert second.before_request() is not None
    wait_for(lambda: second.before_request() is None)
    second.after_request(failed=False)
    assert first.before_request() is None


def test_an_open_circuit_holds_commands_without_spending_attempts(
    harness: Harness, block: Callable[..., ChangeBlockStatus]
) -> None:
    # Given an executor whose breaker opened after the upstream failed four times
    breaker = CircuitBreaker(scripts=harness.store.scripts, policy=FAST)
    harness.executor._traffic = TrafficControl(breaker=breaker)
    harness.upstream.script = [UpstreamUnavailable("503", status=503)] * 4
    for n in range(4):
        harness.executor.handle(block(subscription_id=n + 1).model_dump(mode="json"), token=f"t{n}")
    # When another command arrives while it is open
    command = block(subscription_id=50)
    decision = harness.executor.handle(command.model_dump(mode="json"), token="t9")
    # Then it waits without reaching the upstream, and keeps all its attempts for later
    assert isinstance(decision, RetryLater)
    assert len(harness.upstream.writes) == 4
    wait_for(lambda: breaker.before_request() is None)
    breaker.after_request(failed=False)
    harness.clock.advance(timedelta(seconds=1).total_seconds())
    assert harness.executor.handle(command.model_dump(mode="json"), token="t10") == Ack(
        Outcome.APPLIED
    )
    assert harness.events_of(command.command_id)[0].data.attempts == 1
