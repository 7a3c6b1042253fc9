"""When a worker is ready: its checks, and a supervisor's children (the endpoints
themselves: tests/subswitch/test_health.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from subswitch.health import Readiness
from subswitch.urls import Endpoints
from worker.health import HealthFile, children_ready
from worker.metrics import PrometheusRecorder
from worker.observing import Serving, start_worker_process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5, trust_env=False) as client:
        yield client


def test_the_supervisor_is_ready_only_when_every_child_is(tmp_path: Path) -> None:
    # Given two children: one reported ready, one not yet, and one that exited
    HealthFile(tmp_path, 11).write(Readiness(ready=True))
    HealthFile(tmp_path, 12).write(Readiness(ready=False, problems=("runtime: not consuming",)))
    # When the supervisor looks
    both = children_ready([("urgent", 11, True), ("main", 12, True)], tmp_path)
    exited = children_ready([("urgent", 11, False)], tmp_path)
    silent = children_ready([("main", 13, True)], tmp_path)
    only_ready = children_ready([("urgent", 11, True)], tmp_path)
    # Then it is ready only when all run and report ready
    assert both.problems == ("main worker (pid 12): runtime: not consuming",)
    assert exited.problems == ("urgent worker (pid 11) has exited",)
    assert silent.problems == ("main worker (pid 13): not reporting yet",)
    assert only_ready.ready


def test_a_stale_health_file_is_not_ready(tmp_path: Path) -> None:
    # Given a child's report written a minute ago
    health = HealthFile(tmp_path, 21)
    health.write(Readiness(ready=True))
    # When it is read now
    readiness = health.read(max_age_s=6, now=time.time() + 60)
    # Then the child counts as silent
    assert not readiness.ready
    assert readiness.problems[0].startswith("silent for")


@pytest.mark.integration
def test_a_worker_process_is_not_ready_while_its_store_does_not_answer(
    clean_redis_url: str, http: httpx.Client
) -> None:
    # Given a worker process's endpoints on a real broker, once with a store that answers
    # and once with a store nobody listens on
    def readiness(store_url: str) -> httpx.Response:
        observing = start_worker_process(
            recorder=PrometheusRecorder(registry=CollectorRegistry()),
            registry=CollectorRegistry(),
            endpoints=Endpoints(clean_redis_url, store_url),
            runtime_problem=lambda: None,
            node="w1",
            serving=Serving("127.0.0.1", port),
            metrics_dir=None,
        )
        try:
            return http.get(f"http://127.0.0.1:{port}/readyz")
        finally:
            observing.stop()

    port = free_port()
    # When the readiness probe asks each
    good = readiness(clean_redis_url)
    port = free_port()
    bad = readiness(f"redis://127.0.0.1:{free_port()}/0")
    # Then the first is ready, the second is refused and names the store alone
    assert good.status_code == 200, good.text
    assert bad.status_code == 503
    problems = bad.json()["problems"]
    assert len(problems) == 1
    assert problems[0].startswith("store: does not answer")
