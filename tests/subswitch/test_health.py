"""``/metrics``, ``/healthz`` and ``/readyz``: what they answer, and how readiness
checks are cached."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from subswitch.errors import ConfigurationError
from subswitch.health import CachedReadiness, HealthServer, Readiness, start_health_server


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


def test_a_port_taken_is_one_line_naming_the_setting(registry: CollectorRegistry) -> None:
    # Given a port another socket listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # When a server is started on it, then it is refused naming SUBSWITCH_METRICS_PORT
        with pytest.raises(ConfigurationError, match="SUBSWITCH_METRICS_PORT: cannot listen on"):
            start_health_server(
                host="127.0.0.1",
                port=port,
                registry=lambda: registry,
                ready=lambda: Readiness(ready=True),
            )
