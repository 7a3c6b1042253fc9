"""Messages that kill their worker, hostile messages and the broker's own limits, proven
with real worker processes, the simulator, Redis and RabbitMQ 3.10.

The store is this session's Redis test DB (``clean_redis_url``); on Redis it is the
broker too.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest

from producers import CommandProducer
from producers.events import EventStream
from producers.publisher import CeleryPublisher
from subswitch.broker import COMMANDS_EXCHANGE, dead_letter_queue, is_amqp
from subswitch.contract import APPLY_TASK, Lane, Outcome, ResultEvent
from subswitch.embedded import ensure_embedded_redis, stop_embedded_redis
from subswitch.settings import Settings
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.worker.processes import WorkerProcess, running_worker, wait_until
from worker.bootstrap import worker_config

LIMIT = 2


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with spawned_simulator("--token", "dev-token", "--seed", "7") as handle:
        yield handle


@pytest.fixture(params=["redis", "rabbitmq"])
def urls(request: pytest.FixtureRequest, clean_redis_url: str) -> tuple[str, str]:
    """``(broker_url, store_url)``: Redis for both, or RabbitMQ and Redis."""
    if request.param == "redis":
        return clean_redis_url, clean_redis_url
    amqp_url: str = request.getfixturevalue("clean_amqp_url")
    return amqp_url, clean_redis_url


def worker_env(urls: tuple[str, str], simulator: SimulatorHandle, data_dir: Path) -> dict[str, str]:
    broker_url, store_url = urls
    return {
        "SUBSWITCH_BROKER_URL": broker_url,
        "SUBSWITCH_STORE_URL": store_url,
        "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
        "SUBSWITCH_UPSTREAM_TOKEN": "dev-token",
        "SUBSWITCH_DATA_DIR": str(data_dir),
        "SUBSWITCH_DELIVERY_LIMIT": str(LIMIT),
        # Short windows: a killed worker's message comes back within seconds, and the
        # target lock it left (a lease over the timeouts) runs out soon.
        "SUBSWITCH_VISIBILITY_TIMEOUT": "4",
        "SUBSWITCH_CONNECT_TIMEOUT": "0.5",
        "SUBSWITCH_WRITE_TIMEOUT": "0.5",
        "SUBSWITCH_POOL_TIMEOUT": "0.5",
        "SUBSWITCH_READ_TIMEOUT": "4",
        "SUBSWITCH_MAX_ATTEMPTS": "15",
        # ...and the target a killed attempt leaves settling is free soon after.
        "SUBSWITCH_SETTLE_SECONDS": "1",
    }


def first_event(events: EventStream, command_id: str, *, timeout: float) -> ResultEvent:
    for event in events.iter(timeout=timeout):
        if event.data.command_id == command_id:
            return event
    raise AssertionError(f"no event for {command_id} within {timeout}s")


def dead_letters(broker_url: str) -> list[kombu.Message]:
    """Every message in subswitch.dead, taken off it."""
    with kombu.Connection(broker_url) as connection:
        queue = dead_letter_queue(broker_url=broker_url, queue_type="quorum")(
            connection.default_channel
        )
        queue.declare()
        letters = []
        while (letter := queue.get(no_ack=True)) is not None:
            letters.append(letter)
        return letters


def kill_while_in_flight(worker: WorkerProcess, simulator: SimulatorHandle, writes: int) -> None:
    """SIGKILL ``worker`` as soon as the simulator holds its ``writes``-th write."""
    worker.wait_ready()
    try:
        wait_until(
            lambda: simulator.admin.stats()["writes_total"] >= writes,
            timeout=60,
            what=f"write {writes} in flight",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; worker output:\n{worker.log()[-4000:]}") from None
    worker.kill()


def test_a_message_that_kills_its_worker_is_dead_lettered_after_the_limit(
    urls: tuple[str, str], simulator: SimulatorHandle, tmp_path: Path
) -> None:
    # Given a slow upstream, so a write is in flight for seconds, and a delivery limit of 2
    broker_url, _ = urls
    simulator.admin.reset(faults=True)
    simulator.admin.set_faults(latency_ms=2500)
    env = worker_env(urls, simulator, tmp_path)
    started: list[WorkerProcess] = []
    publisher = CeleryPublisher(
        broker_url=broker_url, visibility_timeout=4, queue_type="quorum", delivery_limit=LIMIT
    )
    with EventStream(broker_url=broker_url) as events, CommandProducer(publisher=publisher) as sdk:
        command_id = sdk.change_block_status(
            org_id="telco", subscription_id=41, block_id=1, active=True, source="tests"
        )
        try:
            # When every worker that takes it is SIGKILLed while its write is in flight
            for kill in range(1, LIMIT + 1):
                worker = WorkerProcess(env, concurrency=4, name=f"doomed{kill}", lanes="normal")
                started.append(worker)
                kill_while_in_flight(worker, simulator, writes=kill)
            # ...and one more worker takes it
            with running_worker(env, concurrency=4, name="heir", lanes="normal", started=started):
                event = first_event(events, command_id, timeout=60)
        finally:
            for worker in started:
                worker.stop()
    logs = "".join(worker.log()[-3000:] for worker in started)
    # Then it is rejected, not run again, and kept in subswitch.dead with its reason
    assert event.outcome is Outcome.REJECTED, logs
    assert event.data.error is not None
    assert f"during {LIMIT} deliveries in a row" in event.data.error.message
    assert simulator.admin.stats()["writes_total"] == LIMIT
    [letter] = [
        letter for letter in dead_letters(broker_url) if letter.headers["command_id"] == command_id
    ]
    assert "SUBSWITCH_DELIVERY_LIMIT=2" in letter.headers["x-subswitch-reason"]


def test_rabbitmq_dead_letters_a_message_over_the_limit_itself(clean_amqp_url: str) -> None:
    # Given the lane queues as producers and workers declare them, and no worker at all
    publisher = CeleryPublisher(
        broker_url=clean_amqp_url, visibility_timeout=300, queue_type="quorum", delivery_limit=LIMIT
    )
    with CommandProducer(publisher=publisher) as sdk:
        command_id = sdk.change_block_status(
            org_id="telco", subscription_id=42, block_id=1, active=True, source="tests"
        )
    queue = publisher.app.conf.task_queues[1]
    assert queue.name == Lane.NORMAL.queue
    with kombu.Connection(clean_amqp_url) as connection:
        bound = queue(connection.default_channel)
        # When a consumer returns the message more often than the limit
        for _ in range(LIMIT + 1):
            message = None
            deadline = time.monotonic() + 10
            while message is None and time.monotonic() < deadline:
                message = bound.get()
            assert message is not None
            message.reject(requeue=True)
    # Then RabbitMQ dead-letters it into subswitch.dead (it would drop it without the
    # dead-letter exchange on 4.0), saying why
    letters = poll_dead_letters(clean_amqp_url)
    [letter] = letters
    assert letter.headers["id"] == command_id
    assert letter.headers["x-first-death-reason"] == "delivery_limit"


def poll_dead_letters(broker_url: str, timeout: float = 10) -> list[kombu.Message]:
    deadline = time.monotonic() + timeout
    while not (letters := dead_letters(broker_url)):
        assert time.monotonic() < deadline, "nothing reached subswitch.dead"
        time.sleep(0.1)  # poll interval, bounded by the deadline
    return letters


def test_producers_and_workers_declare_the_same_lane_queues(clean_amqp_url: str) -> None:
    # Given a worker's and a producer's settings with a non-default delivery limit
    settings = Settings(broker_url=clean_amqp_url, store_url="redis://unused", delivery_limit=7)
    worker_queues = worker_config(settings, clean_amqp_url)["task_queues"]
    producer_queues = CeleryPublisher.from_settings(settings).app.conf.task_queues
    # When both declare them on RabbitMQ (a mismatch is refused: PRECONDITION_FAILED)
    with kombu.Connection(clean_amqp_url) as connection:
        for queue in (*worker_queues, *producer_queues):
            queue(connection.channel()).declare()
    # Then they are the same, dead-lettering into subswitch.dead after 7 returns
    arguments = [queue.queue_arguments for queue in worker_queues]
    assert arguments == [queue.queue_arguments for queue in producer_queues]
    assert arguments[0] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "subswitch.dead",
        "x-dead-letter-routing-key": "subswitch.dead",
        "x-delivery-limit": 7,
    }
    assert is_amqp(clean_amqp_url)


def test_an_oversized_message_is_dead_lettered_unread_and_the_next_command_runs(
    urls: tuple[str, str], simulator: SimulatorHandle, tmp_path: Path
) -> None:
    # Given a worker with a 64 KiB message cap, and a 200 KB message on the normal lane
    broker_url, _ = urls
    simulator.admin.reset(faults=True)
    env = {**worker_env(urls, simulator, tmp_path), "SUBSWITCH_MAX_MESSAGE_BYTES": "65536"}
    body = b'[[{"command_id": "huge-1", "pad": "' + b"x" * 200_000 + b'"}], {}, {}]'
    publisher = CeleryPublisher(
        broker_url=broker_url, visibility_timeout=4, queue_type="quorum", delivery_limit=LIMIT
    )
    with (
        EventStream(broker_url=broker_url) as events,
        CommandProducer(publisher=publisher) as sdk,
        running_worker(env, concurrency=4, name="w1", lanes="normal"),
        kombu.Connection(broker_url) as connection,
    ):
        with connection.Producer() as producer:
            producer.publish(
                body,
                exchange=COMMANDS_EXCHANGE,
                routing_key=Lane.NORMAL.queue,
                content_type="application/json",
                content_encoding="utf-8",
                headers={"id": "huge-1", "task": APPLY_TASK},
            )
        # When a valid command follows it
        valid = sdk.change_block_status(
            org_id="telco", subscription_id=43, block_id=1, active=True, source="tests"
        )
        rejected = first_event(events, "huge-1", timeout=30)
        applied = first_event(events, valid, timeout=30)
    # Then the big one is rejected with a short reason and kept whole in subswitch.dead
    assert rejected.outcome is Outcome.REJECTED
    assert applied.outcome is Outcome.APPLIED
    [letter] = dead_letters(broker_url)
    reason = letter.headers["x-subswitch-reason"]
    assert reason.startswith(f"message of {len(body):,} bytes is over SUBSWITCH_MAX_MESSAGE_BYTES")
    assert len(reason) < 200
    assert letter.body == body


@pytest.fixture
def store_dir() -> Iterator[Path]:
    """A directory for a private embedded store that a test stops and restarts."""
    path = Path(tempfile.mkdtemp(prefix="ss-"))  # short: a unix socket path must fit
    try:
        yield path
    finally:
        stop_embedded_redis(path)
        shutil.rmtree(path, ignore_errors=True)


def test_with_the_store_down_a_poison_message_is_retried_slower_and_dead_lettered_once(
    urls: tuple[str, str], simulator: SimulatorHandle, tmp_path: Path, store_dir: Path
) -> None:
    # Given a worker whose store then goes away
    broker_url, _ = urls
    store = ensure_embedded_redis(store_dir)
    env = {
        **worker_env((broker_url, store.store_url), simulator, tmp_path),
        "SUBSWITCH_VISIBILITY_TIMEOUT": "40",
    }
    with (
        EventStream(broker_url=broker_url) as events,
        running_worker(env, concurrency=4, name="w1", lanes="normal") as worker,
        kombu.Connection(broker_url) as connection,
    ):
        stop_embedded_redis(store_dir)
        # When a message no worker can decode arrives
        with connection.Producer() as producer:
            producer.publish(
                b"\x80 not json",
                exchange=COMMANDS_EXCHANGE,
                routing_key=Lane.NORMAL.queue,
                content_type="application/json",
                content_encoding="binary",
                headers={"id": "poison-9", "task": APPLY_TASK},
            )
        wait_until(lambda: len(requeue_delays(worker.log())) >= 3, timeout=30, what="three tries")
        # Then nothing reached subswitch.dead while the store was away, and each try
        # waited longer than the one before
        assert dead_letters(broker_url) == []
        delays = requeue_delays(worker.log())
        assert delays[2] > delays[0], delays
        # And once the store is back, it is dead-lettered once and rejected
        ensure_embedded_redis(store_dir)
        event = first_event(events, "poison-9", timeout=30)
    assert event.outcome is Outcome.REJECTED
    assert [letter.headers["command_id"] for letter in dead_letters(broker_url)] == ["poison-9"]


def requeue_delays(log: str) -> list[float]:
    pattern = r"dead-lettering failed; (?:trying again|requeueing the message) in (\d+\.\d)s"
    return [float(delay) for delay in re.findall(pattern, log)]


def test_a_command_with_thousands_of_forged_fields_is_rejected_in_one_short_line(
    urls: tuple[str, str], simulator: SimulatorHandle, tmp_path: Path
) -> None:
    # Given a worker, and a command with 5,000 unknown fields whose names carry CR/LF
    broker_url, _ = urls
    simulator.admin.reset(faults=True)
    command = {
        "type": "ChangeBlockStatus", "schema_version": 1, "command_id": "hostile-1",
        "issued_at": "2026-11-22T09:00:00Z", "source": "tests", "org_id": "telco",
        "subscription_id": 44, "block_id": 1, "active": True,
        **{f"f{n}\r\nX-Evil: {n}": n for n in range(5000)},
    }  # fmt: skip
    env = worker_env(urls, simulator, tmp_path)
    with (
        EventStream(broker_url=broker_url) as events,
        running_worker(env, concurrency=4, name="w1", lanes="normal") as worker,
        kombu.Connection(broker_url) as connection,
    ):
        # When it arrives
        with connection.Producer() as producer:
            producer.publish(
                [[command], {}, {}],
                serializer="json",
                exchange=COMMANDS_EXCHANGE,
                routing_key=Lane.NORMAL.queue,
                headers={"id": "hostile-1", "task": APPLY_TASK},
            )
        event = first_event(events, "hostile-1", timeout=30)
        log = worker.log()
    # Then its reason is one escaped line of at most 1 KiB, in the event, the dead
    # letter's header (which must fit an AMQP frame) and the log alike
    assert event.outcome is Outcome.REJECTED and event.data.error is not None
    reason = event.data.error.message
    assert len(reason.encode()) <= 1024
    assert "f0\\r\\nX-Evil: 0: Extra inputs are not permitted" in reason
    assert reason.endswith("more")
    [letter] = dead_letters(broker_url)
    assert letter.headers["x-subswitch-reason"] == reason
    assert "\nX-Evil" not in log and "rejected message (command_id=hostile-1)" in log
    assert simulator.admin.stats()["writes_total"] == 0
