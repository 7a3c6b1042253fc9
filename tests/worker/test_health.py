"""``/metrics``, ``/healthz`` and ``/readyz``: what they answer, and when a worker is ready."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from subswitch.urls import Endpoints
from worker.health import (
    CachedReadiness,
    HealthFile,
    HealthServer,
    Readiness,
    children_ready,
)
from worker.metrics import PrometheusRecorder
from worker.observing import Serving, start_worker_process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("subswitch_probe", "A probe.", registry=registry).inc()
    return registry


def serve(registry: CollectorRegistry, ready: Readiness) -> HealthServer:
    return HealthServer(
        host="127.0.0.1", port=0, registry=lambda: registry, ready=lambda: ready
    ).start()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5, trust_env=False) as client:
        yield client


def test_the_endpoints_answer_metrics_liveness_and_readiness(
    registry: CollectorRegistry, http: httpx.Client
) -> None:
    # Given a server whose process is ready
    server = serve(registry, Readiness(ready=True))
    base = f"http://127.0.0.1:{server.port}"
    try:
        # When each endpoint is asked
        metrics = http.get(f"{base}/metrics")
        alive = http.get(f"{base}/healthz")
        ready = http.get(f"{base}/readyz")
        other = http.get(f"{base}/admin")
    finally:
        server.stop()
    # Then metrics are Prometheus text, both probes pass, and nothing else is served
    assert metrics.status_code == 200
    assert "subswitch_probe_total 1.0" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain; version=")
    assert (alive.status_code, ready.status_code) == (200, 200)
    assert ready.json() == {"ready": True, "problems": []}
    assert other.status_code == 404


def test_readyz_is_503_with_the_problems_when_not_ready(
    registry: CollectorRegistry, http: httpx.Client
) -> None:
    # Given a process whose store does not answer
    server = serve(registry, Readiness(ready=False, problems=("store: does not answer",)))
    try:
        # When the readiness probe asks
        answer = http.get(f"http://127.0.0.1:{server.port}/readyz")
    finally:
        server.stop()
    # Then it is refused, naming the store
    assert answer.status_code == 503
    assert answer.json() == {"ready": False, "problems": ["store: does not answer"]}


def test_checks_run_at_most_once_per_cache_period_and_a_raising_check_is_a_problem() -> None:
    # Given a check that raises, counted, and a settable clock
    calls, now = [], [0.0]

    def broken() -> str | None:
        calls.append(now[0])
        raise RuntimeError("boom")

    readiness = CachedReadiness({"broker": broken, "store": lambda: None}, monotonic=lambda: now[0])
    # When asked three times within the cache period, then after it
    first = readiness()
    readiness()
    readiness()
    now[0] = 5.0
    readiness()
    # Then the check ran twice, and its exception made the process not ready
    assert calls == [0.0, 5.0]
    assert first == Readiness(ready=False, problems=("broker: RuntimeError",))


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
