"""Reliability from the outside: slow bulk chunks, zombie writes, a small chaos run.

Real ``subswitch worker`` processes, a real broker and store, the simulator in its
own process. The store is this session's Redis test DB, flushed and locked for the
test (on Redis it is the broker's too).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import Broker, run_chaos
from bench.chaos_plan import SMALL
from producers import CommandProducer
from producers.commands import block_status_command
from producers.events import EventStream
from producers.publisher import CeleryPublisher
from subswitch.contract import Outcome
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.conftest import purge_subswitch_queues
from tests.worker.processes import wait_until
from tests.worker.test_pipeline import Pipeline

pytestmark = pytest.mark.integration

#: Redelivery window of these tests' workers (Redis visibility timeout).
WINDOW_S = 8


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with spawned_simulator("--token", "dev-token", "--seed", "11") as handle:
        yield handle


def _env(broker_url: str, store_url: str, simulator: SimulatorHandle, data: Path) -> dict[str, str]:
    return {
        "SUBSWITCH_BROKER_URL": broker_url,
        "SUBSWITCH_STORE_URL": store_url,
        "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
        "SUBSWITCH_UPSTREAM_TOKEN": "dev-token",
        "SUBSWITCH_DATA_DIR": str(data),
        "SUBSWITCH_VISIBILITY_TIMEOUT": str(WINDOW_S),
        "SUBSWITCH_CONNECT_TIMEOUT": "1",
        "SUBSWITCH_WRITE_TIMEOUT": "1",
        "SUBSWITCH_POOL_TIMEOUT": "1",
        "SUBSWITCH_READ_TIMEOUT": "3",
        "SUBSWITCH_MAX_ATTEMPTS": "15",
    }


def _pipeline(
    broker_url: str, store_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> Iterator[Pipeline]:
    purge_subswitch_queues(broker_url)
    simulator.admin.reset(faults=True)
    env = _env(broker_url, store_url, simulator, tmp_path)
    publisher = CeleryPublisher(
        broker_url=broker_url, visibility_timeout=WINDOW_S, queue_type="quorum"
    )
    producer = CommandProducer(publisher=publisher)
    with producer, EventStream(broker_url=broker_url) as events:
        yield Pipeline(broker_url, store_url, simulator, env, producer, events)


@pytest.fixture
def redis_pipeline(
    clean_redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> Iterator[Pipeline]:
    """Redis as broker and store (the broker whose redelivery window is a timer)."""
    yield from _pipeline(clean_redis_url, clean_redis_url, simulator, tmp_path)


def test_a_slow_bulk_chunk_is_never_redelivered_while_it_runs(redis_pipeline: Pipeline) -> None:
    # Given an upstream taking 1 s per write and a worker whose redelivery window is 8 s,
    # and a chunk of 12 commands on one target: they go one after the other (a chunk's
    # writes on distinct targets go out together), so the chunk takes 12 s
    pipeline = redis_pipeline
    pipeline.simulator.admin.set_faults(latency_ms=1000)
    issued = datetime.now(UTC)
    commands = [
        block_status_command(
            org_id="telco", subscription_id=1, block_id=1, active=n % 2 == 1,
            priority="bulk", source="tests", command_id=f"slow-chunk-{n:02d}",
            issued_at=issued + timedelta(milliseconds=n),
        )
        for n in range(1, 13)
    ]  # fmt: skip
    ids = [command.command_id for command in commands]
    publisher = CeleryPublisher(
        broker_url=pipeline.broker_url, visibility_timeout=WINDOW_S, queue_type="quorum"
    )
    with pipeline.worker(lanes="bulk") as worker:
        # When the chunk (12 s of writes, over the window) is sent
        try:
            publisher.publish_batch(commands)
        finally:
            publisher.close()
        outcomes = pipeline.outcomes(ids, timeout=90)
        counts = pipeline.settle(worker)
    # Then every command was applied once, with one event
    assert set(outcomes.values()) == {Outcome.APPLIED}
    assert all(counts[command_id] == 1 for command_id in ids)
    assert all(pipeline.writes_by_key()[command_id] == 1 for command_id in ids)
    # And the chunk never ran twice at once (no redelivered copy beside the original)
    assert pipeline.simulator.admin.stats()["max_in_flight_total"] == 1
    # And it went on as chunks of what was left, not as single commands
    assert "chunk out of time" in worker.log()


@pytest.fixture
def chaos_broker(broker_url: str, clean_redis_url: str) -> Broker:
    """The shared broker of this session's namespace, with this session's store."""
    name = "redis" if broker_url == clean_redis_url else "rabbitmq"
    return Broker(name, broker_url, clean_redis_url)


def test_a_small_chaos_run_keeps_every_promise(chaos_broker: Broker, tmp_path: Path) -> None:
    # Given 200 commands on 40 targets (shuffled, some twice, some ids reused), an
    # upstream with transient, ambiguous and late answers, and three workers
    # When they run while one worker is SIGKILLed and replaced
    report = run_chaos(SMALL, chaos_broker, data_dir=tmp_path, log=lambda line: None)
    # Then every command has one outcome, every target ends on its newest intent, no
    # older write landed after a newer one and no target ever had two writes in flight
    assert report.figures["kills"] == 1
    assert report.figures["faults"].get("late_apply", 0) > 0
    assert report.ok, "\n".join(report.failures()) + "\n" + report.worker_logs[-6000:]


# --- zombie writes (contract §2.5) ---------------------------------------------------

SETTLE_S = 6.0
LATE_MS = 4000


@pytest.fixture
def pipeline(
    broker_url: str, clean_redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> Iterator[Pipeline]:
    """Each broker in turn, with this session's namespaced store."""
    yield from _pipeline(broker_url, clean_redis_url, simulator, tmp_path)


def _writes_of(pipeline: Pipeline, command_id: str) -> list[dict[str, Any]]:
    writes = pipeline.simulator.admin.writes()["writes"]
    return [write for write in writes if write["idempotency_key"] == command_id]


def test_a_zombie_write_never_overtakes_or_overlaps_the_newer_command(pipeline: Pipeline) -> None:
    # Given an upstream that applies a write on the target 4 s after it arrived, and a
    # worker that gives up on an answer after 1 s and lets a lost write settle for 6 s
    target = "telco/41/block/1"
    pipeline.simulator.admin.set_faults(late_apply_ms=LATE_MS, late_apply_targets=[target])
    settle = {"SUBSWITCH_READ_TIMEOUT": "1", "SUBSWITCH_SETTLE_SECONDS": str(SETTLE_S)}
    with pipeline.worker(**settle) as worker:
        # When a stale unblock goes out (and its answer is lost: the write is late)
        issued = datetime.now(UTC) - timedelta(minutes=1)
        stale = pipeline.block(41, active=False, issued_at=issued, command_id="zombie-unblock")
        wait_until(lambda: bool(_writes_of(pipeline, stale)), timeout=30, what="the unblock")
        pipeline.simulator.admin.set_faults(late_apply_targets=[])
        # And the fraud block issued after it follows at once
        newer = pipeline.block(
            41, issued_at=issued + timedelta(seconds=1), command_id="zombie-fraud-block"
        )
        outcomes = pipeline.outcomes([stale, newer], timeout=60)
        wait_until(
            lambda: pipeline.simulator.admin.stats()["in_flight_now"] == 0,
            timeout=LATE_MS / 1000 + 5,
            what="the late write to land",
        )
        pipeline.settle(worker)
    # Then the newer block was applied and the upstream ends on it
    assert outcomes[newer] == Outcome.APPLIED
    assert outcomes[stale] in {Outcome.APPLIED, Outcome.SUPERSEDED}
    assert pipeline.simulator.admin.target("telco", 41, "block", 1)["active"] is True
    # And the stale write landed before the block went out: no overlap, no overtaking
    stale_writes, newer_writes = _writes_of(pipeline, stale), _writes_of(pipeline, newer)
    zombie = stale_writes[0]
    assert (zombie["fault"], zombie["applied"]) == ("late_apply", True)
    landed = max(w["applied_at"] for w in stale_writes if w["applied"])
    assert all(w["time"] > landed for w in newer_writes)
    assert pipeline.simulator.admin.stats()["max_in_flight_per_target"][target] == 1
    # And nothing on the target, its own retry included, went out within the settle time
    later = [w["time"] for w in stale_writes[1:] + newer_writes]
    assert all(sent - zombie["time"] >= SETTLE_S - 0.1 for sent in later)
