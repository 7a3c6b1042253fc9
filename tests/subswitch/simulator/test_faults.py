"""Drawing faults from a seeded stream."""

from __future__ import annotations

import time
from collections import Counter
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from subswitch.simulator.config import Faults, SimulatorConfig
from subswitch.simulator.faults import FaultInjector
from subswitch.simulator.testing import SimulatorHandle, running_simulator
from tests.subswitch.simulator.helpers import AUTH


@pytest.mark.parametrize(
    ("field", "name"),
    [("p_drop", "drop"), ("p_lost_response", "lost_response"), ("p_429", "http_429"),
     ("p_500", "http_500"), ("p_502", "http_502"), ("p_503", "http_503"),
     ("p_504", "http_504"), ("p_slow", "slow")],
)  # fmt: skip
def test_probability_one_always_injects_that_fault(field: str, name: str) -> None:
    # Given one fault at probability 1
    injector = FaultInjector(Faults.model_validate({field: 1.0}), seed=3)
    # When a hundred writes draw
    # Then every one gets that fault
    assert {injector.pick(write=True) for _ in range(100)} == {name}


def test_lost_response_never_hits_reads() -> None:
    # Given lost responses at probability 1
    injector = FaultInjector(Faults(p_lost_response=1.0), seed=3)
    # Then reads are untouched
    assert {injector.pick(write=False) for _ in range(100)} == {None}


def test_no_faults_means_no_faults() -> None:
    # Given the default faults
    injector = FaultInjector(Faults(), seed=None)
    # Then nothing is ever injected
    assert {injector.pick(write=True) for _ in range(1000)} == {None}


def test_same_seed_same_faults_and_reseed_repeats_them() -> None:
    # Given two injectors with the same seed and mixed faults
    faults = Faults(p_500=0.2, p_429=0.2, p_drop=0.1, jitter_ms=10)
    first, second = FaultInjector(faults, seed=42), FaultInjector(faults, seed=42)
    # When both draw
    draws = [(first.pick(write=True), first.delay_s()) for _ in range(200)]
    # Then they agree, and a reseeded injector repeats the stream
    assert draws == [(second.pick(write=True), second.delay_s()) for _ in range(200)]
    first.reseed()
    assert draws == [(first.pick(write=True), first.delay_s()) for _ in range(200)]


def test_fault_frequencies_follow_the_probabilities() -> None:
    # Given 30% 500s and 10% 503s
    injector = FaultInjector(Faults(p_500=0.3, p_503=0.1), seed=7)
    # When 20,000 writes draw
    counts = Counter(injector.pick(write=True) for _ in range(20_000))
    # Then the shares are close to the probabilities
    assert 0.28 < counts["http_500"] / 20_000 < 0.32
    assert 0.08 < counts["http_503"] / 20_000 < 0.12
    assert 0.58 < counts[None] / 20_000 < 0.62


def test_earlier_faults_win_when_probabilities_exceed_one() -> None:
    # Given drop and 500 both at probability 1
    injector = FaultInjector(Faults(p_drop=1.0, p_500=1.0), seed=1)
    # Then drop, first in the draw order, always wins
    assert {injector.pick(write=True) for _ in range(50)} == {"drop"}


def test_delay_is_latency_plus_bounded_jitter() -> None:
    # Given 100 ms latency and 50 ms jitter
    injector = FaultInjector(Faults(latency_ms=100, jitter_ms=50), seed=1)
    # When delays are drawn
    delays = [injector.delay_s() for _ in range(500)]
    # Then each lies in 100..150 ms and they vary
    assert all(0.1 <= delay <= 0.15 for delay in delays)
    assert len(set(delays)) > 100


def test_retry_after_in_seconds_as_date_or_absent() -> None:
    # Given 429s with Retry-After in seconds, as a date, and never
    seconds = FaultInjector(Faults(p_429=1, retry_after_s=7), seed=1)
    dated = FaultInjector(Faults(p_429=1, retry_after_s=60, retry_after_http_date=True), seed=1)
    never = FaultInjector(Faults(p_429=1, p_429_retry_after=0.0), seed=1)
    # When each answers a 429 at epoch 1,700,000,000
    now = 1_700_000_000.0
    # Then the headers are as configured
    assert seconds.http_fault("http_429", now) == (429, {"Retry-After": "7"})
    status, headers = dated.http_fault("http_429", now)
    assert status == 429
    assert parsedate_to_datetime(headers["Retry-After"]).timestamp() == now + 60
    assert never.http_fault("http_429", now) == (429, {})
    assert seconds.http_fault("http_503", now) == (503, {})


# Over real HTTP: what a client sees of each fault, and what the simulator did.

BLOCK = "/orgs/telco/subscriptions/7/blocks/1"


def _patch(sim: SimulatorHandle, timeout: float = 5.0) -> httpx.Response:
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=timeout) as client:
        return client.patch(BLOCK, json={"active": True}, headers={"Idempotency-Key": "k"})


def _last_write(sim: SimulatorHandle) -> dict[str, Any]:
    write: dict[str, Any] = sim.admin.writes()["writes"][-1]
    return write


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_http_faults_answer_an_error_and_apply_nothing(sim: SimulatorHandle, status: int) -> None:
    # Given every request fails with the status
    sim.admin.set_faults(**{f"p_{status}": 1.0})
    # When a block is put on
    response = _patch(sim)
    # Then the client gets that status with an ErrorMessage, and nothing changed
    assert response.status_code == status
    assert set(response.json()) == {"code", "status", "message", "detailMsg"}
    assert sim.admin.target("telco", 7, "block", 1)["active"] is False
    write = _last_write(sim)
    assert (write["status"], write["applied"], write["fault"]) == (status, False, f"http_{status}")


@pytest.mark.parametrize(
    ("faults", "expected"),
    [({"retry_after_s": 3}, "3"), ({"p_429_retry_after": 0.0}, None),
     ({"retry_after_s": 120, "retry_after_http_date": True}, "date")],
)  # fmt: skip
def test_429_retry_after_variants(
    sim: SimulatorHandle, faults: dict[str, Any], expected: str | None
) -> None:
    # Given 429s with a Retry-After variant
    sim.admin.set_faults(p_429=1.0, **faults)
    # When a write is attempted
    retry_after = _patch(sim).headers.get("retry-after")
    # Then Retry-After is absent, in seconds, or an HTTP date about two minutes ahead
    if expected == "date":
        assert retry_after is not None
        ahead = parsedate_to_datetime(retry_after).timestamp() - time.time()
        assert 100 < ahead <= 121
    else:
        assert retry_after == expected


def test_drop_is_a_transport_error_and_applies_nothing(sim: SimulatorHandle) -> None:
    # Given every connection is dropped
    sim.admin.set_faults(p_drop=1.0)
    # When a write is attempted
    # Then the client sees a protocol error, not a status, and nothing was applied
    with pytest.raises(httpx.RemoteProtocolError):
        _patch(sim)
    assert sim.admin.target("telco", 7, "block", 1)["active"] is False
    write = _last_write(sim)
    assert (write["status"], write["applied"], write["fault"]) == (None, False, "drop")


def test_lost_response_applies_but_the_client_sees_a_transport_error(
    sim: SimulatorHandle,
) -> None:
    # Given every write's answer is lost
    sim.admin.set_faults(p_lost_response=1.0)
    # When a write is attempted
    # Then the client sees a protocol error, yet the block is on
    with pytest.raises(httpx.RemoteProtocolError):
        _patch(sim)
    assert sim.admin.target("telco", 7, "block", 1)["active"] is True
    write = _last_write(sim)
    assert (write["status"], write["applied"], write["fault"]) == (None, True, "lost_response")
    assert sim.admin.stats()["applied_per_idempotency_key_max"] == 1


def test_lost_response_leaves_reads_alone(sim: SimulatorHandle) -> None:
    # Given every write's answer is lost
    sim.admin.set_faults(p_lost_response=1.0)
    # When the blocks are read
    with httpx.Client(base_url=sim.base_url, headers=AUTH) as client:
        response = client.get("/orgs/telco/subscriptions/7/blocks")
    # Then the read succeeds
    assert response.status_code == 200


def test_reads_get_faults_too(sim: SimulatorHandle) -> None:
    # Given every request gets a 503
    sim.admin.set_faults(p_503=1.0)
    # When the services are read
    with httpx.Client(base_url=sim.base_url, headers=AUTH) as client:
        response = client.get("/orgs/telco/subscriptions/7/services")
    # Then the read fails with 503
    assert response.status_code == 503


def test_slow_answer_beyond_the_client_timeout_is_abandoned(sim: SimulatorHandle) -> None:
    # Given answers that take 3 s and a client that waits 0.2 s
    sim.admin.set_faults(p_slow=1.0, slow_ms=3000)
    started = time.monotonic()
    # When a write is attempted
    # Then the client times out
    with pytest.raises(httpx.ReadTimeout):
        _patch(sim, timeout=0.2)
    # And once the simulator has noticed the client left, nothing was applied
    sim.admin.wait_for_stats(lambda stats: stats["in_flight_now"] == 0, timeout=5)
    assert time.monotonic() - started < 2.5
    assert sim.admin.target("telco", 7, "block", 1)["active"] is False
    write = _last_write(sim)
    assert (write["status"], write["applied"], write["fault"]) == (None, False, "slow")


def test_slow_answer_to_a_patient_client_is_applied(sim: SimulatorHandle) -> None:
    # Given answers that take 0.3 s and a client that waits 5 s
    sim.admin.set_faults(p_slow=1.0, slow_ms=300)
    started = time.monotonic()
    # When a write is made
    response = _patch(sim)
    # Then it succeeds late and is applied
    assert response.status_code == 201
    assert time.monotonic() - started >= 0.3
    assert _last_write(sim)["applied"] is True


def test_latency_delays_reads_and_writes(sim: SimulatorHandle) -> None:
    # Given 200 ms of latency
    sim.admin.set_faults(latency_ms=200)
    with httpx.Client(base_url=sim.base_url, headers=AUTH) as client:
        # When a read and a write are made
        began = time.monotonic()
        read = client.get("/orgs/telco/subscriptions/7/blocks")
        between = time.monotonic()
        written = client.patch(BLOCK, json={"active": True})
        ended = time.monotonic()
    # Then each took at least the latency and succeeded
    assert (read.status_code, written.status_code) == (200, 201)
    assert between - began >= 0.2
    assert ended - between >= 0.2


def test_seed_makes_faults_reproducible() -> None:
    # Given two simulators with the same seed and 50% 500s
    config = SimulatorConfig(seed=5, faults=Faults(p_500=0.5))
    outcomes: list[list[int]] = []
    for _ in range(2):
        with running_simulator(config) as sim, httpx.Client(base_url=sim.base_url) as client:
            # When each gets the same 20 writes
            answers = [client.patch(BLOCK, json={"active": True}, headers=AUTH) for _ in range(20)]
            outcomes.append([answer.status_code for answer in answers])
    # Then they fail at the same places, and both outcomes occur
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {201, 500}


# Late apply: the zombie write, applied long after its client gave up.


def test_late_apply_hits_writes_only_and_chosen_targets_always() -> None:
    # Given late writes at probability 1 on one injector, on one chosen target on another
    everywhere = FaultInjector(Faults(p_late_apply=1.0), seed=3)
    chosen = FaultInjector(Faults(late_apply_targets=("telco/7/block/1",)), seed=3)
    # When writes and reads draw
    # Then every write is late, reads never are, and only the chosen target's writes are
    assert {everywhere.pick(write=True) for _ in range(100)} == {"late_apply"}
    assert {everywhere.pick(write=False) for _ in range(100)} == {None}
    assert {chosen.pick(write=True, target="telco/7/block/1") for _ in range(50)} == {"late_apply"}
    assert {chosen.pick(write=True, target="telco/7/block/2") for _ in range(50)} == {None}
    assert chosen.pick(write=False, target="telco/7/block/1") is None


def test_late_apply_share_follows_its_probability() -> None:
    # Given 20% late writes
    injector = FaultInjector(Faults(p_late_apply=0.2), seed=11)
    # When 10,000 writes draw
    counts = Counter(injector.pick(write=True) for _ in range(10_000))
    # Then about a fifth are late
    assert 0.18 < counts["late_apply"] / 10_000 < 0.22


@pytest.mark.parametrize("name", ["telco/7/blocks/1", "telco/x/block/1", "bad org/1/block/1"])
def test_late_apply_targets_must_be_target_names(name: str) -> None:
    # When a malformed target is configured
    # Then it is refused
    with pytest.raises(ValueError, match="late_apply_targets"):
        Faults(late_apply_targets=(name,))


def _wait_applied(sim: SimulatorHandle, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        write = _last_write(sim)
        if write["applied"] or time.monotonic() > deadline:
            return write
        time.sleep(0.02)  # poll interval, bounded by the deadline


def test_a_late_write_lands_after_its_client_gave_up(sim: SimulatorHandle) -> None:
    # Given writes on the block applied only 1.5 s after they arrive
    sim.admin.set_faults(late_apply_ms=1500, late_apply_targets=["telco/7/block/1"])
    # When a client that waits 0.2 s puts the block on
    with pytest.raises(httpx.ReadTimeout):
        _patch(sim, timeout=0.2)
    # Then right after its timeout nothing is applied yet, and the write is still in flight
    pending = _last_write(sim)
    assert (pending["applied"], pending["applied_at"]) == (False, None)
    assert sim.admin.target("telco", 7, "block", 1)["active"] is False
    assert sim.admin.stats()["in_flight_now"] == 1
    # And 1.5 s after arrival the block is on, the log says when, and the write is done
    write = _wait_applied(sim, timeout=5)
    assert (write["applied"], write["status"], write["fault"]) == (True, None, "late_apply")
    assert 1.45 <= write["applied_at"] - write["time"] < 2.5  # two clocks: allow 50 ms
    assert sim.admin.target("telco", 7, "block", 1)["active"] is True
    assert sim.admin.stats()["in_flight_now"] == 0


def test_a_patient_client_gets_the_late_write_answered(sim: SimulatorHandle) -> None:
    # Given every write applied 0.3 s after it arrives
    sim.admin.set_faults(p_late_apply=1.0, late_apply_ms=300)
    started = time.monotonic()
    # When a client that waits 5 s writes
    response = _patch(sim)
    # Then it gets 201 once the write is applied
    assert response.status_code == 201
    assert time.monotonic() - started >= 0.3
    write = _last_write(sim)
    assert (write["applied"], write["status"], write["fault"]) == (True, 201, "late_apply")


def test_a_late_write_overlaps_the_next_write_on_its_target(sim: SimulatorHandle) -> None:
    # Given writes on one block applied 1 s after they arrive, and a client that gave up
    sim.admin.set_faults(late_apply_ms=1000, late_apply_targets=["telco/7/block/1"])
    with pytest.raises(httpx.ReadTimeout):
        _patch(sim, timeout=0.1)
    # When the client sends its next write on that target at once
    with pytest.raises(httpx.ReadTimeout):
        _patch(sim, timeout=0.1)
    # Then the simulator saw two writes in flight on the target together
    stats = sim.admin.wait_for_stats(lambda stats: stats["in_flight_now"] == 0, timeout=5)
    assert stats["max_in_flight_per_target"]["telco/7/block/1"] == 2
    assert stats["writes_applied"] == 2
