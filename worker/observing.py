"""What a worker process runs besides its tasks so it can be watched.

* Every worker process reports its running totals to the store every two seconds
  (:mod:`subswitch.livestats`), for ``subswitch top``.
* With ``SUBSWITCH_METRICS_PORT`` set, the process that serves (a lone Celery
  worker, or the supervisor of ``subswitch worker``'s two) answers ``/metrics``,
  ``/healthz`` and ``/readyz`` (:mod:`subswitch.health`) and samples the broker's
  backlog and the shared breaker state every five seconds (:class:`BrokerMetrics`).
* A supervised child serves nothing: it writes its metrics into the supervisor's
  multiprocess directory and its readiness into a file there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import redis
from prometheus_client import CollectorRegistry

from subswitch import livestats
from subswitch.backlog import BacklogSource, BrokerBacklog
from subswitch.errors import ConfigurationError
from subswitch.health import (
    CachedReadiness,
    Check,
    HealthServer,
    Readiness,
    broker_problem,
    start_health_server,
)
from subswitch.redis_client import redis_client
from subswitch.urls import Endpoints
from worker.health import HEALTH_FILE_PERIOD_S, HealthFile, Periodic, children_ready
from worker.metrics import BrokerMetrics, PrometheusRecorder, multiprocess_registry

logger = logging.getLogger(__name__)

STATS_PERIOD_S: Final = 2.0
SAMPLE_PERIOD_S: Final = 5.0
_PROBE_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True)
class Serving:
    """Where the endpoints listen (``SUBSWITCH_METRICS_HOST``/``_PORT``)."""

    host: str
    port: int


@dataclass
class Observing:
    """The background jobs (and server) of one process; :meth:`stop` ends them."""

    jobs: list[Periodic] = field(default_factory=list)
    server: HealthServer | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: Run by :meth:`refresh`: readiness changed, say so now rather than next period.
    refreshers: list[Callable[[], None]] = field(default_factory=list)

    def refresh(self) -> None:
        """The process's readiness changed (it consumes, or it stops)."""
        for refresh in self.refreshers:
            with contextlib.suppress(Exception):
                refresh()

    def stop(self) -> None:
        """Stop the jobs and the server, close the connections."""
        for job in self.jobs:
            job.stop()
        if self.server is not None:
            self.server.stop()
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()


def store_problem(client: redis.Redis) -> str | None:
    """``None`` when the store answers a PING."""
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"does not answer ({type(exc).__name__})"
    return None


def store_client(store_url: str) -> redis.Redis:
    """A short-timeout client for reports and checks (never for commands)."""
    return redis_client(store_url, timeout_s=_PROBE_TIMEOUT_S)


def start_worker_process(
    *,
    recorder: PrometheusRecorder,
    registry: CollectorRegistry,
    endpoints: Endpoints,
    runtime_problem: Check,
    node: str,
    serving: Serving | None,
    metrics_dir: Path | None,
) -> Observing:
    """Report to the store; then serve (``serving``) or, supervised, write the health file."""
    client = store_client(endpoints.store_url)
    observing = Observing(closers=[client.close])
    pid = os.getpid()
    observing.jobs.append(
        Periodic(
            lambda: livestats.publish(client, recorder.snapshot(node=node, pid=pid)),
            period_s=STATS_PERIOD_S,
            name="live figures report",
        ).start()
    )
    readiness = CachedReadiness(
        {
            "runtime": runtime_problem,
            "store": lambda: store_problem(client),
            "broker": lambda: broker_problem(endpoints.broker_url),
        }
    )
    observing.refreshers.append(readiness.invalidate)
    if metrics_dir is not None:
        health = HealthFile(metrics_dir, pid)
        observing.refreshers.append(lambda: health.write(readiness()))
        observing.jobs.append(
            Periodic(
                lambda: health.write(readiness()),
                period_s=HEALTH_FILE_PERIOD_S,
                name="readiness report",
            ).start()
        )
    elif serving is not None:
        _serve(
            observing,
            serving=serving,
            registry=registry,
            ready=readiness,
            endpoints=endpoints,
            client=client,
        )
    return observing


def start_supervisor(
    *,
    serving: Serving,
    metrics_dir: Path,
    endpoints: Endpoints,
    children: Callable[[], Sequence[tuple[str, int, bool]]],
) -> Observing:
    """Serve the children's metrics (multiprocess) and readiness, and sample the broker."""
    client = store_client(endpoints.store_url)
    observing = Observing(closers=[client.close])
    registry = multiprocess_registry(metrics_dir)

    def ready() -> Readiness:
        return children_ready(children(), metrics_dir)

    def alive() -> bool:
        return all(running for _, _, running in children())

    _serve(
        observing,
        serving=serving,
        registry=registry,
        ready=ready,
        endpoints=endpoints,
        client=client,
        alive=alive,
    )
    return observing


def _serve(
    observing: Observing,
    *,
    serving: Serving,
    registry: CollectorRegistry,
    ready: Callable[[], Readiness],
    endpoints: Endpoints,
    client: redis.Redis,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    broker = BrokerMetrics(registry=registry)
    backlog = BrokerBacklog(broker_url=endpoints.broker_url)
    observing.closers.append(backlog.close)
    observing.jobs.append(
        Periodic(
            lambda: sample(backlog, client, broker),
            period_s=SAMPLE_PERIOD_S,
            name="broker backlog sample",
        ).start()
    )
    try:
        observing.server = start_health_server(
            host=serving.host,
            port=serving.port,
            registry=lambda: registry,
            ready=ready,
            alive=alive,
        )
    except ConfigurationError:
        observing.stop()
        raise


def sample(backlog: BacklogSource, client: redis.Redis, metrics: BrokerMetrics) -> None:
    """One sample of the lanes' depth, the dead letters and the breaker's state.

    Raises:
        SubswitchError: the broker did not answer.
        redis.RedisError: the store did not answer.
    """
    now = backlog.sample()
    metrics.sampled(depths=now.depths, dead=now.dead, breaker=livestats.breaker_state(client))
