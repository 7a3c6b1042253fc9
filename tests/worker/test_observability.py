"""A real worker's JSON log and task events, seen from the outside.

One ``subswitch worker --events`` process with ``SUBSWITCH_LOG_FORMAT=json`` on the
Redis test DB (broker and store) and the simulator in its own process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from producers import CommandProducer
from producers.publisher import CeleryPublisher
from subswitch.broker import celery_config
from subswitch.contract import Lane
from subswitch.logs import LogFormat
from subswitch.settings import Settings
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.worker.processes import running_worker, wait_until
from worker import cli as worker_cli
from worker.bootstrap import worker_config

PASSWORD = "dev-token"


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with spawned_simulator("--token", PASSWORD, "--subscriptions", "100") as handle:
        yield handle


class TaskEvents:
    """Celery task events on the broker, collected by a receiver thread."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("events-probe", set_as_current=False)
        self.app.conf.update(
            celery_config(
                broker_url=broker_url, visibility_timeout=8, queue_type="quorum", delivery_limit=5
            )
        )
        self.seen: list[dict[str, Any]] = []
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.seen.append})
            self.listening.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        self.listening.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self.receiver.should_stop = True  # seen within a second by its consume loop
        self._thread.join(10)
        self.app.close()

    def types(self, task_id: str) -> set[str]:
        return {e["type"] for e in list(self.seen) if e.get("uuid") == task_id}


@pytest.mark.integration
def test_json_logs_and_task_events(
    clean_redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    # Given a worker logging JSON with task events on (and an upstream token to keep secret)
    env = {
        "SUBSWITCH_BROKER_URL": clean_redis_url,
        "SUBSWITCH_STORE_URL": clean_redis_url,
        "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
        "SUBSWITCH_UPSTREAM_TOKEN": PASSWORD,
        "SUBSWITCH_DATA_DIR": str(tmp_path),
        "SUBSWITCH_VISIBILITY_TIMEOUT": "8",
        "SUBSWITCH_LOG_FORMAT": "json",
        "SUBSWITCH_TASK_EVENTS": "true",
    }
    publisher = CeleryPublisher(
        broker_url=clean_redis_url, visibility_timeout=8, queue_type="quorum", task_events=True
    )
    with (
        TaskEvents(clean_redis_url) as events,
        running_worker(env, concurrency=2, lanes="normal") as worker,
        CommandProducer(publisher=publisher) as producer,
    ):
        # When a command is sent
        command_id = producer.change_block_status(
            org_id="telco",
            subscription_id=5,
            block_id=1,
            active=True,
            source="tests",
            correlation_id="case-5",
        )

        # Then the worker logs its outcome as one JSON object with the command's fields
        def logged() -> dict[str, Any] | None:
            for line in list(worker.output):
                if command_id in line and '"outcome"' in line:
                    return json.loads(line)
            return None

        wait_until(lambda: logged() is not None, timeout=30, what="the command's log line")
        line = logged()
        assert line is not None
        assert line["message"] == "command applied"
        assert (line["command_id"], line["correlation_id"]) == (command_id, "case-5")
        assert (line["lane"], line["attempt"], line["outcome"]) == ("normal", 1, "applied")
        assert line["target"] == "orgs/telco/subscriptions/5/blocks/1"
        # ...and Flower's events show the task sent (by the producer), received and done
        wait_until(
            lambda: {"task-sent", "task-received", "task-succeeded"} <= events.types(command_id),
            timeout=30,
            what="the task's events",
        )
    # And every log line the worker wrote (Celery's own included) is one JSON object,
    # none with the upstream token. Celery prints one notice on stdout when it is told
    # to stop ("worker: Warm shutdown (MainProcess)", after a blank line), outside logging.
    output = [
        line for line in worker.log().splitlines() if line and not line.startswith("worker: ")
    ]
    assert any("ready." in json.loads(line)["message"] for line in output)
    for text in output:
        assert isinstance(json.loads(text), dict), text
        assert PASSWORD not in text


@pytest.mark.parametrize("events", [False, True])
def test_task_events_follow_the_setting(events: bool) -> None:
    # Given the setting (subswitch worker --events sets it) / When the worker's Celery
    # settings are made / Then workers send task events and sent-events for retries
    config = worker_config(Settings(task_events=events), "redis://127.0.0.1:6379/0")
    assert config["worker_send_task_events"] is events
    assert config["task_send_sent_event"] is events


def test_the_worker_command_passes_events_and_quiet_on_to_celery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker with JSON logs and task events, and Celery's start recorded
    started: list[list[str]] = []
    monkeypatch.setattr(worker_cli, "_start_celery", lambda _app, argv: started.append(argv) or 0)
    settings = Settings(
        broker_url="redis://127.0.0.1:6379/0",
        store_url="redis://127.0.0.1:6379/0",
        log_format=LogFormat.JSON,
        task_events=True,
    )
    plan = worker_cli.ConsumerPlan(None, (Lane.NORMAL,), 4)
    # When one Celery worker is started
    worker_cli._run_celery(plan, settings, loglevel="INFO", hostname=None)
    # Then Celery prints no banner (logs stay JSON lines) and sends task events
    [argv] = started
    assert argv[:2] == ["--quiet", "worker"]
    assert "--task-events" in argv


def test_the_supervisor_starts_its_workers_with_events(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the supervisor's child processes recorded instead of started
    spawned: list[list[str]] = []
    monkeypatch.setattr(worker_cli.subprocess, "Popen", lambda argv, **_: spawned.append(argv))
    plan = worker_cli.ConsumerPlan("urgent", (Lane.URGENT,), 8)
    # When a child is spawned with events on / Then its command line asks for them
    worker_cli._spawn(plan, loglevel="INFO", hostname=None, events=True)
    assert spawned[0][-1] == "--events"
