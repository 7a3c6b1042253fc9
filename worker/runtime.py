"""Per-process resources of a worker: one store client, one upstream client, sinks.

Built lazily on first use in each process (prefork children must not share the
parent's sockets) and shared by every thread of the pool.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from celery import Celery

from subswitch.settings import Settings
from worker import upstream
from worker.deliveries import DeadLetterOnce, DeliveryCounter
from worker.executor import LEASE_MARGIN_S, Executor
from worker.factory import request_budget_s
from worker.policy import RetryPolicy
from worker.sinks import KombuDeadLetters, KombuEventSink
from worker.store import RedisStore
from worker.traffic import (
    MAX_WAIT_S,
    BreakerPolicy,
    CircuitBreaker,
    RateLimiter,
    TrafficControl,
)

logger = logging.getLogger(__name__)

# The lock is taken before the wait for a rate-limit slot, so the lease covers both;
# the executor gives each attempt a deadline that ends LEASE_MARGIN_S before it.
_LEASE_S_BEYOND_BUDGET = MAX_WAIT_S + LEASE_MARGIN_S


@dataclass
class Runtime:
    """What one worker process needs to execute commands."""

    executor: Executor
    store: RedisStore
    client: upstream.MasStackClient
    pid: int
    deliveries: DeliveryCounter

    def close(self) -> None:
        """Close the upstream and store connections."""
        self.client.close()
        self.store.close()


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime(app: Celery) -> Runtime:
    """This process's runtime, built on first use."""
    global _runtime  # noqa: PLW0603 - one runtime per process, by design
    current = _runtime
    if current is not None and current.pid == os.getpid():
        return current
    with _lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = build_runtime(app)
        return _runtime


def close_runtime() -> None:
    """Close this process's runtime, if it has one."""
    global _runtime  # noqa: PLW0603
    with _lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            _runtime.close()
        _runtime = None


def build_runtime(app: Celery) -> Runtime:
    """Wire the executor to real Redis, upstream and broker from the app's settings."""
    settings: Settings = app.conf.subswitch_settings
    store = RedisStore.from_url(
        app.conf.subswitch_store_url,
        retention_s=settings.retention_seconds,
        max_clock_skew_s=settings.max_clock_skew_seconds,
    )
    client = upstream.from_settings(settings)
    policy = RetryPolicy.within_window(
        max_attempts=settings.max_attempts, redelivery_window_s=settings.visibility_timeout
    )
    traffic = TrafficControl(
        limiter=(
            RateLimiter(scripts=store.scripts, rate_per_s=settings.rate_limit)
            if settings.rate_limit
            else None
        ),
        breaker=(
            CircuitBreaker(scripts=store.scripts, policy=breaker_policy(settings))
            if settings.breaker
            else None
        ),
    )
    executor = Executor(
        store=store,
        upstream=client,
        events=KombuEventSink(app=app),
        dead_letters=DeadLetterOnce(
            inner=KombuDeadLetters(app=app, queue_type=settings.rabbitmq_queue_type),
            scripts=store.scripts,
            retention_s=settings.retention_seconds,
        ),
        policy=policy,
        lease_ms=int((request_budget_s(settings) + _LEASE_S_BEYOND_BUDGET) * 1000),
        settle_s=settings.settle_seconds,
        max_clock_skew_s=settings.max_clock_skew_seconds,
        retention_s=settings.retention_seconds,
        traffic=traffic,
    )
    logger.info("worker runtime ready: upstream %s, %r", settings.upstream_url, store)
    deliveries = DeliveryCounter(scripts=store.scripts, limit=settings.delivery_limit)
    return Runtime(
        executor=executor, store=store, client=client, pid=os.getpid(), deliveries=deliveries
    )


def breaker_policy(settings: Settings) -> BreakerPolicy:
    """The circuit breaker's thresholds from settings."""
    return BreakerPolicy(
        failure_ratio=settings.breaker_failure_ratio,
        min_requests=settings.breaker_min_requests,
        window_s=settings.breaker_window_s,
        cooldown_s=settings.breaker_cooldown_s,
    )
