"""The real ``subswitch archive`` process on a real broker: stopped while events are
published, it catches up after a restart with none lost and none doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from kombu import Connection

from subswitch.archive.consumer import READY_MARK
from subswitch.archive.store import SqlArchive
from subswitch.archive.url import normalise_archive_url
from subswitch.broker import is_amqp
from subswitch.contract import ARCHIVE_QUEUE, ResultEvent
from tests.subswitch.archive.conftest import T0, block, event_of, publish, queued, wait_until

_START_S = 30.0
#: Generous: the machine running the suite may be busy with other processes.
_WAIT_S = 30.0


class ArchiveProcess:
    """``python -m subswitch archive`` with its log collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "subswitch", "archive"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        assert self._ready.wait(_START_S), "\n".join(self.lines)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip())
            if READY_MARK in line:
                self._ready.set()

    def stop(self) -> str:
        """SIGTERM, the exit status checked; the whole log."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=20) == 0, "\n".join(self.lines)
        return "\n".join(self.lines)


@contextmanager
def _killed_at_exit(processes: list[ArchiveProcess]) -> Iterator[None]:
    try:
        yield
    finally:
        for archive in processes:
            if archive.process.poll() is None:
                archive.process.kill()
                archive.process.wait()


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


def _batch(count: int, offset: int) -> list[ResultEvent]:
    return [event_of(block(issued_at=T0 + timedelta(seconds=offset + n))) for n in range(count)]


def test_a_stopped_archive_catches_up_with_none_lost_and_none_doubled(
    broker_url: str, database_url: str, tmp_path: Path
) -> None:
    # Given a running archive process on a real broker
    _drop_archive_queue(broker_url)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SUBSWITCH_")}
    env |= {
        "SUBSWITCH_BROKER_URL": broker_url,
        "SUBSWITCH_ARCHIVE_URL": database_url,
        "SUBSWITCH_DATA_DIR": str(tmp_path),
        "SUBSWITCH_ARCHIVE_FLUSH_SECONDS": "0.1",
    }
    reader = SqlArchive.open(normalise_archive_url(database_url), create=True)
    first, second = _batch(50, 0), _batch(50, 100)
    processes: list[ArchiveProcess] = []
    with _killed_at_exit(processes):
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
