"""Write counters, in-flight maxima and idempotency-key accounting."""

from __future__ import annotations

import asyncio

import httpx

from subswitch.simulator.stats import Stats
from subswitch.simulator.testing import SimulatorHandle
from tests.subswitch.simulator.helpers import AUTH


def test_in_flight_is_counted_per_target() -> None:
    # Given stats
    stats = Stats(100.0, key_cap=10)
    # When two writes overlap on one target and one runs alone on another
    stats.write_started("telco/1/block/1", 100.1)
    stats.write_started("telco/1/block/1", 100.2)
    stats.write_finished("telco/1/block/1")
    stats.write_finished("telco/1/block/1")
    stats.write_started("telco/2/block/1", 101.5)
    stats.write_finished("telco/2/block/1")
    # Then the maxima show the overlap only where it happened
    snapshot = stats.snapshot()
    assert snapshot["max_in_flight_per_target"] == {"telco/1/block/1": 2, "telco/2/block/1": 1}
    assert snapshot["max_in_flight_any"] == 2
    assert snapshot["in_flight_now"] == 0
    assert snapshot["writes_total"] == 3
    assert snapshot["writes_per_second"] == {"100": 2, "101": 1}
    assert snapshot["max_writes_in_any_second"] == 2


def test_sequential_writes_never_count_as_overlapping() -> None:
    # Given stats
    stats = Stats(0.0, key_cap=10)
    # When ten writes on one target each finish before the next starts
    for n in range(10):
        stats.write_started("telco/1/service/1", float(n))
        stats.write_finished("telco/1/service/1")
    # Then the target never had two in flight
    assert stats.snapshot()["max_in_flight_per_target"] == {"telco/1/service/1": 1}


def test_duplicate_applies_per_idempotency_key() -> None:
    # Given stats
    stats = Stats(0.0, key_cap=10)
    # When key "a" is applied three times, "b" once, and one write has no key
    for key in ("a", "a", "b", "a", None):
        stats.write_applied(key)
    # Then "a" is reported as applied three times
    snapshot = stats.snapshot()
    assert snapshot["writes_applied"] == 5
    assert snapshot["applied_per_idempotency_key_max"] == 3
    assert snapshot["duplicate_applies"] == {"a": 3}


def test_key_table_is_bounded() -> None:
    # Given stats tracking at most two keys
    stats = Stats(0.0, key_cap=2)
    # When three keys are applied, then the first again
    for key in ("a", "b", "c", "a"):
        stats.write_applied(key)
    # Then the first key was forgotten, so its second apply is not a duplicate
    assert stats.snapshot()["duplicate_applies"] == {}


def test_reset_keeps_tracking_writes_in_flight() -> None:
    # Given a write in flight when the stats are reset
    stats = Stats(0.0, key_cap=10)
    stats.write_started("t", 1.0)
    stats.reset(5.0)
    # When it finishes and another starts
    stats.write_finished("t")
    stats.write_started("t", 6.0)
    # Then the counters are consistent: one in flight, window started at the reset
    snapshot = stats.snapshot()
    assert snapshot["in_flight_now"] == 1
    assert snapshot["max_in_flight_per_target"] == {"t": 1}
    assert snapshot["started_at"] == 5.0
    assert snapshot["writes_total"] == 1


# Over real HTTP: concurrent writes as the simulator sees them.


async def _concurrently(sim: SimulatorHandle, paths: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH, timeout=10) as client:
        answers = await asyncio.gather(
            *(client.patch(path, json={"active": True}) for path in paths)
        )
    return [answer.status_code for answer in answers]


def test_concurrent_writes_on_one_target_are_seen_in_flight_together(
    sim: SimulatorHandle,
) -> None:
    # Given 500 ms of latency on every request
    sim.admin.set_faults(latency_ms=500)
    # When five writes on one block are sent at once
    statuses = asyncio.run(_concurrently(sim, ["/orgs/telco/subscriptions/7/blocks/1"] * 5))
    # Then all succeed, and the simulator saw more than one in flight on that target
    assert statuses == [201] * 5
    stats = sim.admin.stats()
    assert stats["max_in_flight_per_target"]["telco/7/block/1"] > 1
    assert stats["max_in_flight_any"] > 1
    assert stats["in_flight_now"] == 0


def test_concurrent_writes_on_different_targets_do_not_overlap_per_target(
    sim: SimulatorHandle,
) -> None:
    # Given 300 ms of latency on every request
    sim.admin.set_faults(latency_ms=300)
    # When four writes on four different targets are sent at once
    paths = [f"/orgs/telco/subscriptions/{n}/blocks/1" for n in range(1, 5)]
    asyncio.run(_concurrently(sim, paths))
    # Then each target had one in flight at most, though several were in flight overall
    stats = sim.admin.stats()
    assert stats["max_in_flight_per_target"] == {f"telco/{n}/block/1": 1 for n in range(1, 5)}
    assert stats["max_in_flight_any"] == 1
    assert stats["max_in_flight_total"] > 1
