"""The worker's promises, proven from the outside.

A real ``subswitch worker`` process, a real broker (Redis and RabbitMQ), a real
store (Redis) and the simulator in its own process. Every check reads the
simulator's admin view or the ``subswitch.events`` exchange.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kombu
import pytest

from producers import CommandProducer
from producers.events import EventStream
from producers.publisher import CeleryPublisher
from subswitch.broker import COMMANDS_EXCHANGE, dead_letter_queue
from subswitch.contract import (
    APPLY_TASK,
    DEAD_LETTER_QUEUE,
    Lane,
    Outcome,
    ResultEvent,
)
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.conftest import purge_subswitch_queues
from tests.worker.processes import (
    WorkerProcess,
    running_worker,
    running_workers,
    wait_idle,
    wait_until,
)

pytestmark = pytest.mark.integration

#: An hour ago: inside the window in which the worker accepts commands (contract §2.6).
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    # 1000 subscriptions, so that 999_999 is one the upstream does not know
    with spawned_simulator("--token", "dev-token", "--seed", "7", "--subscriptions", "1000") as h:
        yield h


@dataclass
class Pipeline:
    """Producer, event stream and worker settings around one broker."""

    broker_url: str
    store_url: str
    simulator: SimulatorHandle
    env: dict[str, str]
    producer: CommandProducer
    events: EventStream
    seen: list[ResultEvent] = field(default_factory=list)

    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(
        self, *, concurrency: int = 8, name: str = "w1", lanes: str | None = None, **env: str
    ) -> AbstractContextManager[WorkerProcess]:
        return running_worker(
            {**self.env, **env},
            concurrency=concurrency,
            name=name,
            lanes=lanes,
            started=self.workers,
        )

    def workers_together(
        self, *names: str, **env: str
    ) -> AbstractContextManager[list[WorkerProcess]]:
        """Workers of all lanes named ``names``, started side by side."""
        return running_workers({**self.env, **env}, names=names, started=self.workers)

    def block(self, subscription_id: int, *, active: bool = True, **envelope: Any) -> str:
        envelope.setdefault("source", "tests")
        return self.producer.change_block_status(
            org_id="telco", subscription_id=subscription_id, block_id=1, active=active, **envelope
        )

    def outcomes(self, command_ids: list[str], *, timeout: float = 60) -> dict[str, Outcome]:
        """The first event of each command, waiting for those not seen yet; every event
        received is kept in ``seen``, whoever it is for."""
        wanted = set(command_ids)
        found = {event.data.command_id: event for event in reversed(self.seen)}
        found = {key: event for key, event in found.items() if key in wanted}
        if len(found) < len(wanted):
            for event in self.events.iter(timeout=timeout):
                self.seen.append(event)
                command_id = event.data.command_id
                if command_id in wanted and command_id not in found:
                    found[command_id] = event
                if len(found) == len(wanted):
                    break
        missing = wanted - found.keys()
        logs = "".join(worker.log()[-3000:] for worker in self.workers)
        assert not missing, f"no event for {sorted(missing)[:5]}; worker output:\n{logs}"
        return {command_id: event.outcome for command_id, event in found.items()}

    def settle(self, worker: WorkerProcess) -> Counter[str | None]:
        """Wait until nothing is queued or held, stop the worker, count every event."""
        wait_idle(self.broker_url, self.store_url, nodes=self.consumers())
        worker.stop()
        self.seen.extend(self.events.iter(timeout=0.5))
        return Counter(event.data.command_id for event in self.seen)

    def consumers(self) -> int:
        """The Celery workers of the worker processes still running."""
        return sum(w.consumers for w in self.workers if w.process.poll() is None)

    def writes_by_key(self) -> Counter[str]:
        writes = self.simulator.admin.writes()["writes"]
        return Counter(write["idempotency_key"] for write in writes)


@pytest.fixture
def pipeline(
    broker_url: str, clean_redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> Iterator[Pipeline]:
    # The store is this session's Redis test DB, flushed and locked for this test (on
    # Redis it is the broker's too): a DB shared by every session would let another
    # session's commands on the same targets supersede this one's.
    store_url = clean_redis_url
    purge_subswitch_queues(broker_url)
    simulator.admin.reset(faults=True)
    env = {
        "SUBSWITCH_BROKER_URL": broker_url,
        "SUBSWITCH_STORE_URL": store_url,
        "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
        "SUBSWITCH_UPSTREAM_TOKEN": "dev-token",
        "SUBSWITCH_DATA_DIR": str(tmp_path),
        # Short windows so redelivery after a crash happens within the test.
        "SUBSWITCH_VISIBILITY_TIMEOUT": "8",
        "SUBSWITCH_CONNECT_TIMEOUT": "1",
        "SUBSWITCH_WRITE_TIMEOUT": "1",
        "SUBSWITCH_POOL_TIMEOUT": "1",
        "SUBSWITCH_READ_TIMEOUT": "3",
        "SUBSWITCH_MAX_ATTEMPTS": "15",
        # A lost answer holds its target this long (contract §2.5): short, for the test.
        "SUBSWITCH_SETTLE_SECONDS": "2",
    }
    producer = CommandProducer(
        publisher=CeleryPublisher(broker_url=broker_url, visibility_timeout=8, queue_type="quorum")
    )
    with producer, EventStream(broker_url=broker_url) as events:
        yield Pipeline(broker_url, store_url, simulator, env, producer, events)


def test_commands_are_applied_with_exactly_one_event_each(pipeline: Pipeline) -> None:
    # Given a worker
    with pipeline.worker() as worker:
        # When blocks and service changes for 30 subscriptions are sent
        ids = [pipeline.block(n) for n in range(1, 16)]
        ids += [
            pipeline.producer.change_service_status(
                org_id="acme", subscription_id=n, service_id=2, active=False, source="tests"
            )
            for n in range(1, 16)
        ]
        outcomes = pipeline.outcomes(ids)
        counts = pipeline.settle(worker)
    # Then each was applied, reported once, and the simulator holds the new states
    assert set(outcomes.values()) == {Outcome.APPLIED}
    assert all(counts[command_id] == 1 for command_id in ids)
    target = pipeline.simulator.admin.target("acme", 3, "service", 2)
    assert target["active"] is False
    assert pipeline.simulator.admin.target("telco", 3, "block", 1)["active"] is True


def test_a_duplicated_command_reaches_the_upstream_once(pipeline: Pipeline) -> None:
    # Given a worker
    with pipeline.worker() as worker:
        # When one command is enqueued five times
        command_id = pipeline.block(1, command_id="fraud-case-8812-block", issued_at=T0)
        for _ in range(4):
            pipeline.block(1, command_id=command_id, issued_at=T0)
        outcome = pipeline.outcomes([command_id])[command_id]
        counts = pipeline.settle(worker)
    # Then it was written once upstream and reported once
    assert outcome == Outcome.APPLIED
    assert pipeline.writes_by_key()[command_id] == 1
    assert counts[command_id] == 1


def test_a_reused_command_id_with_another_payload_is_rejected(pipeline: Pipeline) -> None:
    # Given an applied block
    with pipeline.worker() as worker:
        first = pipeline.block(2, command_id="case-1", issued_at=T0)
        assert pipeline.outcomes([first]) == {first: Outcome.APPLIED}
        # When an unblock reuses its command id
        pipeline.block(2, command_id="case-1", active=False, issued_at=T0)
        pipeline.settle(worker)
    # Then the unblock got its own rejected event and never reached the upstream
    events = [event for event in pipeline.seen if event.data.command_id == "case-1"]
    assert sorted(event.outcome for event in events) == [Outcome.APPLIED, Outcome.REJECTED]
    assert len({event.id for event in events}) == 2
    assert pipeline.writes_by_key()["case-1"] == 1
    assert pipeline.simulator.admin.target("telco", 2, "block", 1)["active"] is True


def test_out_of_order_commands_end_with_the_newest_intent(pipeline: Pipeline) -> None:
    # Given a worker with many threads
    with pipeline.worker(concurrency=16) as worker:
        # When, for 20 subscriptions, block/unblock/block/unblock are enqueued newest first
        ids: list[str] = []
        for n in range(1, 21):
            for step in reversed(range(4)):
                ids.append(
                    pipeline.block(n, active=step % 2 == 0, issued_at=T0 + timedelta(seconds=step))
                )
        outcomes = pipeline.outcomes(ids)
        pipeline.settle(worker)
    # Then every target ends unblocked (the newest intent), older commands were
    # superseded or applied before it, and no target ever had two writes in flight
    for n in range(1, 21):
        assert pipeline.simulator.admin.target("telco", n, "block", 1)["active"] is False
    assert set(outcomes.values()) <= {Outcome.APPLIED, Outcome.SUPERSEDED}
    assert Outcome.SUPERSEDED in outcomes.values()
    assert pipeline.simulator.admin.stats()["max_in_flight_any"] == 1


def test_a_sigkilled_worker_loses_nothing_and_sends_no_second_event(pipeline: Pipeline) -> None:
    # Given a slow upstream and a worker busy with 12 commands
    pipeline.simulator.admin.set_faults(latency_ms=1500)
    first = WorkerProcess(pipeline.env, concurrency=8, name="doomed")
    pipeline.workers.append(first)
    first.wait_ready()
    ids = [pipeline.block(n) for n in range(1, 13)]
    wait_until(
        lambda: pipeline.simulator.admin.stats()["writes_total"] >= 4,
        timeout=30,
        what="writes in flight",
    )
    # When it is SIGKILLed mid-command and another worker takes over
    first.kill()
    pipeline.simulator.admin.set_faults(latency_ms=0)
    with pipeline.worker(name="heir") as heir:
        outcomes = pipeline.outcomes(ids, timeout=90)
        counts = pipeline.settle(heir)
    # Then every command was applied and reported exactly once
    assert set(outcomes.values()) == {Outcome.APPLIED}
    assert all(counts[command_id] == 1 for command_id in ids)
    assert all(
        pipeline.simulator.admin.target("telco", n, "block", 1)["active"] for n in range(1, 13)
    )


def test_transient_faults_and_lost_answers_still_apply_everything_once(pipeline: Pipeline) -> None:
    # Given an upstream failing 30% of writes, some after applying them
    pipeline.simulator.admin.set_faults(
        p_429=0.05, p_500=0.05, p_502=0.05, p_503=0.05, p_504=0.05, p_lost_response=0.05
    )
    with pipeline.worker(concurrency=16) as worker:
        # When 60 commands on distinct targets are sent
        ids = [pipeline.block(n) for n in range(1, 61)]
        outcomes = pipeline.outcomes(ids, timeout=120)
        counts = pipeline.settle(worker)
    # Then all were applied, each reported once, and faults really happened
    assert set(outcomes.values()) == {Outcome.APPLIED}
    assert all(counts[command_id] == 1 for command_id in ids)
    writes = pipeline.simulator.admin.writes()["writes"]
    assert any(write["fault"] for write in writes)
    assert all(
        pipeline.simulator.admin.target("telco", n, "block", 1)["active"] for n in range(1, 61)
    )


def test_permanent_errors_fail_at_once_without_retry(pipeline: Pipeline) -> None:
    # Given a worker
    with pipeline.worker() as worker:
        # When a block for an unknown subscription and a change of a fixed service are sent
        unknown = pipeline.block(999_999)
        fixed = pipeline.producer.change_service_status(
            org_id="telco", subscription_id=5, service_id=4, active=True, source="tests"
        )
        outcomes = pipeline.outcomes([unknown, fixed])
        pipeline.settle(worker)
    # Then both failed after a single write, with the upstream's error
    assert outcomes == {unknown: Outcome.FAILED, fixed: Outcome.FAILED}
    writes = pipeline.writes_by_key()
    assert (writes[unknown], writes[fixed]) == (1, 1)
    statuses = {event.data.command_id: event.data.upstream_status for event in pipeline.seen}
    assert (statuses[unknown], statuses[fixed]) == (404, 400)


POISONS = {
    "garbage": (b"\x80\x04 not json", "application/json", APPLY_TASK, "undecodable"),
    "pickle": (b"\x80\x04K\x01.", "application/x-python-serialize", APPLY_TASK, "pickle"),
    "unknown-task": (b"[[1], {}, {}]", "application/json", "billing.nuke", "unknown task"),
    "wrong-schema": (b'[[{"type": "Nope"}], {}, {}]', "application/json", APPLY_TASK, "missing"),
}


@pytest.mark.parametrize("poison", POISONS, ids=list(POISONS))
def test_a_poison_message_is_dead_lettered_and_the_next_command_still_runs(
    pipeline: Pipeline, poison: str
) -> None:
    # Given a worker, and a message no worker can run published on the normal lane
    body, content_type, task, reason_part = POISONS[poison]
    with pipeline.worker() as worker, kombu.Connection(pipeline.broker_url) as connection:
        with connection.Producer() as producer:
            producer.publish(
                body,
                exchange=COMMANDS_EXCHANGE,
                routing_key=Lane.NORMAL.queue,
                content_type=content_type,
                content_encoding="binary",
                headers={"id": "poison-1", "task": task},
            )
        # When a valid command follows it
        valid = pipeline.block(3)
        outcomes = pipeline.outcomes(["poison-1", valid])
        pipeline.settle(worker)
        dead = dead_letter_queue(broker_url=pipeline.broker_url, queue_type="quorum")(
            connection.default_channel
        )
        letter = dead.get(no_ack=True)
    # Then it is rejected and dead-lettered with its reason, and the command is applied
    assert outcomes == {"poison-1": Outcome.REJECTED, valid: Outcome.APPLIED}
    assert letter is not None
    assert reason_part in letter.headers["x-subswitch-reason"]
    assert dead.name == DEAD_LETTER_QUEUE


def test_an_urgent_command_runs_while_every_bulk_slot_is_busy(pipeline: Pipeline) -> None:
    # Given a slow upstream and a worker whose two bulk slots are busy with a backlog
    pipeline.simulator.admin.set_faults(latency_ms=2000)
    with pipeline.worker(concurrency=2) as worker:
        backlog = [pipeline.block(n, priority="bulk") for n in range(1, 21)]
        wait_until(
            lambda: pipeline.simulator.admin.stats()["in_flight_now"] >= 2,
            timeout=30,
            what="both bulk slots busy",
        )
        # When an urgent block arrives
        urgent = pipeline.block(100, priority="urgent")
        outcome = pipeline.outcomes([urgent], timeout=30)
        stats = pipeline.simulator.admin.stats()
        pipeline.simulator.admin.set_faults(latency_ms=0)
        pipeline.outcomes(backlog, timeout=120)
        pipeline.settle(worker)
    # Then it was applied alongside the two busy bulk writes, long before the backlog drained
    assert outcome == {urgent: Outcome.APPLIED}
    assert stats["max_in_flight_total"] >= 3
    assert stats["writes_applied"] < len(backlog)


def test_the_global_rate_limit_holds_across_worker_processes(pipeline: Pipeline) -> None:
    # Given two worker processes sharing a cap of 50 upstream writes per second
    limited = {"SUBSWITCH_RATE_LIMIT": "50"}
    with pipeline.workers_together("r1", "r2", **limited) as [first, _]:
        # When 150 commands arrive at once
        ids = [pipeline.block(n) for n in range(1, 151)]
        outcomes = pipeline.outcomes(ids, timeout=90)
        pipeline.settle(first)
    # Then all were applied and no second at the upstream saw more than the cap (+2%, +1
    # for a request that crossed a second boundary on the wire)
    assert set(outcomes.values()) == {Outcome.APPLIED}
    stats = pipeline.simulator.admin.stats()
    assert stats["max_writes_in_any_second"] <= 52
