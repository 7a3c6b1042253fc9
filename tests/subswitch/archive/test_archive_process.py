"""The real ``subswitch archive`` process on a real broker: stopped while events are
published, it catches up after a restart with none lost and none doubled; and it
serves its metrics and probes on ``SUBSWITCH_METRICS_PORT``."""

from __future__ import annotations

import math
import socket
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from subswitch.archive.store import SqlArchive
from subswitch.archive.url import normalise_archive_url
from subswitch.broker import is_amqp
from subswitch.contract import ARCHIVE_QUEUE, ResultEvent
from tests.subswitch.archive.conftest import (
    T0,
    ArchiveProcess,
    archive_env,
    block,
    event_of,
    killed_at_exit,
    publish,
    queued,
    wait_until,
)

#: Generous: the machine running the suite may be busy with other processes.
_WAIT_S = 30.0


@pytest.fixture
def database_url(broker_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """SQLite beside Redis, PostgreSQL beside RabbitMQ: each database once, for real."""
    if not is_amqp(broker_url):
        return f"sqlite:///{tmp_path / 'archive.sqlite3'}"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


def _drop_archive_queue(broker_url: str) -> None:
    with Connection(broker_url, connect_timeout=2) as connection:
        connection.default_channel.queue_delete(ARCHIVE_QUEUE)


#: The sample of events stored (new).
STORED = ("subswitch_archive_events_total", "stored")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scraped(http: httpx.Client, base: str) -> dict[tuple[str, str], float]:
    """``/metrics``: each archive sample's value by name and ``result`` label."""
    samples = {}
    for family in text_string_to_metric_families(http.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("subswitch_archive_"):
                samples[sample.name, sample.labels.get("result", "")] = sample.value
    return samples


def _batch(count: int, offset: int) -> list[ResultEvent]:
    return [event_of(block(issued_at=T0 + timedelta(seconds=offset + n))) for n in range(count)]


def test_a_stopped_archive_catches_up_with_none_lost_and_none_doubled(
    broker_url: str, database_url: str, tmp_path: Path
) -> None:
    # Given a running archive process on a real broker
    _drop_archive_queue(broker_url)
    env = archive_env(broker_url, database_url, tmp_path)
    reader = SqlArchive.open(normalise_archive_url(database_url), create=True)
    first, second = _batch(50, 0), _batch(50, 100)
    processes: list[ArchiveProcess] = []
    with killed_at_exit(processes):
        processes.append(ArchiveProcess(env))
        publish(first, broker=broker_url)
        wait_until(lambda: reader.count() == 50, timeout=_WAIT_S)
        processes[0].stop()
        # When events are published while it is down, some of them again (redelivered)
        publish(second + first[:20], broker=broker_url)
        processes.append(ArchiveProcess(env))
        wait_until(lambda: reader.count() >= 100 and queued(broker_url) == 0, timeout=_WAIT_S)
        log = processes[1].stop()
    # Then every event is archived exactly once, and the restarted archive stored the
    # 50 it missed and skipped the 20 it had
    ids = {row.event_id for row in reader.source_history("fraud-engine")}
    assert ids == {event.id for event in first + second}
    assert reader.count() == 100
    assert "archive stopped; 50 events stored" in log, log
    assert queued(broker_url) == 0
    reader.close()


def test_the_archive_serves_its_metrics_and_is_ready_once_consuming(
    clean_redis_url: str, tmp_path: Path
) -> None:
    # Given a running archive process with a metrics port, on Redis and SQLite
    _drop_archive_queue(clean_redis_url)
    port = free_port()
    env = archive_env(clean_redis_url, f"sqlite:///{tmp_path / 'archive.sqlite3'}", tmp_path)
    base = f"http://127.0.0.1:{port}"
    processes: list[ArchiveProcess] = []
    with killed_at_exit(processes), httpx.Client(timeout=5, trust_env=False) as http:
        processes.append(ArchiveProcess(env | {"SUBSWITCH_METRICS_PORT": str(port)}))
        # When it has consumed an event
        publish(_batch(1, 0), broker=clean_redis_url)
        wait_until(lambda: scraped(http, base).get(STORED) == 1.0, timeout=_WAIT_S)
        alive, ready = http.get(f"{base}/healthz"), http.get(f"{base}/readyz")
        samples = scraped(http, base)
        log = processes[0].stop()
    # Then it is alive and ready on every check, and exports its events and its lag
    assert alive.status_code == 200, log
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"ready": True, "problems": []}
    assert samples[("subswitch_archive_events_total", "duplicate")] == 0.0
    assert math.isfinite(samples[("subswitch_archive_lag_seconds", "")])
