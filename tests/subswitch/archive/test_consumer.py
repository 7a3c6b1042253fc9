"""The archive consumer's batching and acknowledgement, on kombu's in-memory broker."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from kombu import Connection
from prometheus_client import REGISTRY

from subswitch.archive.consumer import RETENTION_BATCH, ArchiveConsumer
from subswitch.broker import EVENTS
from subswitch.contract import ARCHIVE_QUEUE, ResultEvent
from subswitch.errors import ArchiveError
from tests.subswitch.archive.conftest import T0, block, event_of, publish, queued, wait_until

BROKER = "memory://"


class RecordingSink:
    """An archive sink in memory that may be down for its first ``failures`` writes."""

    def __init__(self, *, failures: int = 0) -> None:
        self.batches: list[list[str]] = []
        self.ids: set[str] = set()
        self.failures = failures
        self.cutoffs: list[datetime] = []
        self.expired = 0

    def store(self, batch: list[ResultEvent]) -> int:
        if self.failures:
            self.failures -= 1
            raise ArchiveError("archive sqlite:///x: database is locked")
        self.batches.append([event.id for event in batch])
        new = {event.id for event in batch} - self.ids
        self.ids |= new
        return len(new)

    def delete_completed_before(self, cutoff: datetime, *, limit: int) -> int:
        self.cutoffs.append(cutoff)
        deleted, self.expired = min(limit, self.expired), max(0, self.expired - limit)
        return deleted

    def newest_completed_at(self) -> datetime | None:
        return None


def counted(result: str) -> float:
    return REGISTRY.get_sample_value("subswitch_archive_events_total", {"result": result}) or 0.0


@pytest.fixture(autouse=True)
def _empty_queue() -> None:
    with Connection(BROKER) as connection:
        channel = connection.default_channel
        EVENTS(channel).declare()
        channel.queue_delete(ARCHIVE_QUEUE)


class Running:
    """An archive consumer in a thread, bound before anything is published."""

    def __init__(self, sink: RecordingSink, broker: str = BROKER, **options: float) -> None:
        self.consumer = ArchiveConsumer(
            broker_url=broker,
            sink=sink,
            queue_type="classic",
            batch_size=int(options.get("batch_size", 10)),
            flush_seconds=options.get("flush_seconds", 60.0),
            retention_days=400,
            visibility_timeout=300,
            now=lambda: T0 + timedelta(days=401),
        )
        self.stop = threading.Event()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self.consumer.run, args=(self.stop,), kwargs={"on_ready": ready.set}
        )
        self.thread.start()
        assert ready.wait(10)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def events(count: int) -> list[ResultEvent]:
    return [event_of(block(issued_at=T0 + timedelta(seconds=n))) for n in range(count)]


def test_full_batches_are_written_at_once_and_the_rest_on_stop() -> None:
    # Given a consumer writing batches of 10, with a long flush interval
    sink = RecordingSink()
    running = Running(sink, batch_size=10, flush_seconds=60.0)
    # When 25 events come in, and the consumer is stopped
    publish(events(25), broker=BROKER)
    wait_until(lambda: len(sink.ids) >= 20)
    running.close()
    # Then two full batches were written as they filled, the last 5 on stop; all acked
    assert [len(batch) for batch in sink.batches] == [10, 10, 5]
    assert queued(BROKER) == 0


def test_a_partial_batch_is_written_after_the_flush_interval() -> None:
    # Given a consumer with large batches and a short flush interval
    sink = RecordingSink()
    running = Running(sink, batch_size=500, flush_seconds=0.2)
    # When only three events come
    sample = events(3)
    publish(sample, broker=BROKER)
    # Then they are written without waiting for more (or for a stop)
    wait_until(lambda: len(sink.ids) == 3)
    running.close()
    assert sink.batches == [[event.id for event in sample]]


def test_events_are_acked_only_after_their_batch_is_stored(clean_redis_url: str) -> None:
    # Given an archive database that is down (on Redis: the in-memory broker never
    # hands unacknowledged messages back)
    sink = RecordingSink(failures=1_000_000)
    running = Running(sink, clean_redis_url, batch_size=5, flush_seconds=0.1)
    # When events come and the consumer stops while it still cannot write them
    publish(events(5), broker=clean_redis_url)
    wait_until(lambda: sink.failures < 1_000_000)
    running.close()
    # Then none was acked: all five are back on the queue for the next start
    assert queued(clean_redis_url) == 5
    sink.failures = 0
    again = Running(sink, clean_redis_url, batch_size=5, flush_seconds=0.1)
    wait_until(lambda: len(sink.ids) == 5)
    again.close()
    assert queued(clean_redis_url) == 0


def test_duplicates_and_garbage_are_counted_not_stored() -> None:
    # Given an event already archived, and a message that is no event at all
    sink = RecordingSink()
    sample = events(2)
    sink.ids.add(sample[0].id)
    before = {name: counted(name) for name in ("stored", "duplicate", "skipped")}
    running = Running(sink, batch_size=3, flush_seconds=0.1)
    # When both events and the garbage come in
    publish(sample, b"not an event", broker=BROKER)
    wait_until(lambda: len(sink.ids) == 2)
    running.close()
    # Then one is stored, one is a duplicate, the garbage is skipped (and acked)
    after = {name: counted(name) for name in before}
    assert {name: after[name] - before[name] for name in before} == {
        "stored": 1,
        "duplicate": 1,
        "skipped": 1,
    }
    assert queued(BROKER) == 0


def test_retention_deletes_batch_after_batch_then_rests() -> None:
    # Given more expired events than one delete removes
    sink = RecordingSink()
    sink.expired = 2 * RETENTION_BATCH + 1
    # When the consumer runs a little
    running = Running(sink, batch_size=10, flush_seconds=0.1)
    wait_until(lambda: sink.expired == 0)
    publish(events(1), broker=BROKER)
    wait_until(lambda: len(sink.ids) == 1)
    running.close()
    # Then it deleted in three batches up to retention before its clock, and then rested
    assert len(sink.cutoffs) == 3
    assert set(sink.cutoffs) == {T0 + timedelta(days=1)}


def test_the_lag_gauge_follows_the_newest_archived_event() -> None:
    # Given a consumer whose clock reads T0 + 401 days
    sink = RecordingSink()
    running = Running(sink, batch_size=1, flush_seconds=0.1)
    # When an event completed at T0 + 1 s is archived
    publish(events(1), broker=BROKER)
    wait_until(lambda: len(sink.ids) == 1)
    running.close()
    # Then the lag is the time between them
    lag = REGISTRY.get_sample_value("subswitch_archive_lag_seconds")
    assert lag == pytest.approx((timedelta(days=401) - timedelta(seconds=1)).total_seconds())


def test_it_says_it_consumes_from_bound_until_stopped() -> None:
    # Given a consumer not started yet
    sink = RecordingSink()
    idle = ArchiveConsumer(
        broker_url=BROKER,
        sink=sink,
        queue_type="classic",
        batch_size=10,
        flush_seconds=60.0,
        retention_days=400,
        visibility_timeout=300,
    )
    # When one is bound and consuming, then stopped
    running = Running(sink)
    bound = running.consumer.consuming
    running.close()
    # Then only while bound does it say so (the archive's readiness)
    assert (idle.consuming, bound, running.consumer.consuming) == (False, True, False)
