"""Builds a worker from :class:`Settings`: its Celery app, its tasks, its runtime.

:func:`create_app` creates the app and registers the tasks and the consumer against a
:class:`RuntimeHolder`. The runtime (store, upstream client, sinks, executor) is built
when the worker process starts (Celery's ``celeryd_after_setup``; under a prefork pool
again in each child), so a worker that cannot build it (a missing service-account file, an
unreachable store) refuses to start, with one line and a non-zero exit, instead of
taking messages it cannot finish.

Settings reach the runtime through this module's closures, never through
``app.conf``: any broker client can read ``app.conf`` with ``celery inspect conf``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import redis
from celery import Celery
from celery.signals import (
    celeryd_after_setup,
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)
from celery.signals import worker_shutdown as worker_shutdown_signal
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from subswitch.broker import celery_config, is_amqp
from subswitch.commandline import exit_for, one_line
from subswitch.errors import StoreError, SubswitchError, TransientError, settings_error
from subswitch.logs import LogFormat, configure_logging
from subswitch.policy import PolicyError
from subswitch.policy_watch import PolicyWatch
from subswitch.redact import redact_url, scrub
from subswitch.redis_client import redis_client
from subswitch.settings import Settings
from subswitch.urls import Endpoints, resolve_endpoints
from worker import tasks, upstream
from worker.consumer import bound_consumer
from worker.deliveries import DeadLetterOnce, DeliveryCounter
from worker.durability import check_durability
from worker.executor import LEASE_MARGIN_S, Executor, RetryCause
from worker.metrics import NULL_RECORDER, PrometheusRecorder, Recorder
from worker.observing import Observing, Serving, start_worker_process
from worker.policy import RetryPolicy
from worker.redis_transport import ReliableAMQP
from worker.sinks import KombuDeadLetters, KombuEventSink
from worker.store import RedisStore
from worker.traffic import MAX_WAIT_S, BreakerPolicy, CircuitBreaker, RateLimiter, TrafficControl

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Slots of the threads pool: the work is I/O-bound (an HTTP call and a few Redis
#: round trips), so many threads per process beat processes.
DEFAULT_CONCURRENCY: Final = 64
# The lock is taken before the wait for a rate-limit slot, so the lease covers both;
# the executor gives each attempt a deadline that ends LEASE_MARGIN_S before it.
_LEASE_S_BEYOND_BUDGET: Final = MAX_WAIT_S + LEASE_MARGIN_S
_STORE_CHECK_TIMEOUT_S: Final = 5.0


class RuntimeNotReady(TransientError):
    """A delivery arrived in a process whose runtime was not built (never acked)."""


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


class RuntimeHolder:
    """This process's runtime: built when the worker process starts, closed at its end.

    Shared by every thread of the pool. A prefork child builds its own (it must not
    share the parent's sockets); the pid tells them apart.
    """

    def __init__(
        self, build: Callable[[], Runtime], *, observe: Callable[[str], Observing] | None = None
    ) -> None:
        self._build = build
        self._observe = observe
        self._app: Celery | None = None
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._observing: Observing | None = None
        self._consuming = False

    def start(self) -> Runtime:
        """Build this process's runtime unless it has one."""
        with self._lock:
            if self._runtime is None or self._runtime.pid != os.getpid():
                self._runtime = self._build()
            return self._runtime

    def runtime(self) -> Runtime:
        """This process's runtime.

        Raises:
            RuntimeNotReady: the runtime was not built in this process.
        """
        current = self._runtime
        if current is None or current.pid != os.getpid():
            raise RuntimeNotReady("the worker runtime was not built in this process")
        return current

    def executor(self) -> Executor:
        """This process's executor (raises :class:`RuntimeNotReady` as :meth:`runtime`)."""
        return self.runtime().executor

    def deliveries(self) -> DeliveryCounter:
        """This process's delivery counter (raises as :meth:`runtime`)."""
        return self.runtime().deliveries

    def problem(self) -> str | None:
        """``None`` once the runtime is built and the worker consumes; else what is not."""
        current = self._runtime
        if current is None or current.pid != os.getpid():
            return "not built"
        return None if self._consuming else "not consuming"

    def close(self) -> None:
        """Close this process's runtime, if it has one."""
        self._consuming = False
        if self._observing is not None:
            self._observing.stop()
            self._observing = None
        with self._lock:
            if self._runtime is not None and self._runtime.pid == os.getpid():
                self._runtime.close()
            self._runtime = None

    def on_worker_setup(self, instance: Any = None, **_: Any) -> None:
        """``celeryd_after_setup``: build the runtime, or end the worker with one line.

        Sent once logging is set up and before any consumer or pool starts, so no
        message is taken by a worker without a runtime.
        """
        if getattr(instance, "app", None) is not self._app:
            return
        start_or_refuse(self.start)
        if self._observe is not None and self._observing is None:
            self._observing = self._observe(str(getattr(instance, "hostname", "") or os.getpid()))

    def on_ready(self, sender: Any = None, **_: Any) -> None:
        """``worker_ready``: the consumer takes messages (``/readyz`` may say so)."""
        if getattr(sender, "app", None) is self._app:
            self._consuming = True
            if self._observing is not None:
                self._observing.refresh()

    def on_shutting_down(self, **_: Any) -> None:
        """``worker_shutting_down``: no longer ready, so no new traffic is routed here."""
        self._consuming = False
        if self._observing is not None:
            self._observing.refresh()

    def on_process_init(self, **_: Any) -> None:
        """``worker_process_init`` (prefork child): a runtime of the child's own."""
        start_or_refuse(self.start)

    def on_shutdown(self, **_: Any) -> None:
        """``worker_shutdown`` / ``worker_process_shutdown``: close the connections."""
        self.close()

    def attach(self, app: Celery) -> None:
        """Build at ``app``'s worker start, close at its end (weakly: dies with the app)."""
        self._app = app
        celeryd_after_setup.connect(self.on_worker_setup)
        worker_process_init.connect(self.on_process_init)
        worker_process_shutdown.connect(self.on_shutdown)
        worker_shutdown_signal.connect(self.on_shutdown)
        worker_ready.connect(self.on_ready)
        worker_shutting_down.connect(self.on_shutting_down)


def request_budget_s(settings: Settings) -> float:
    """Longest one upstream attempt can take: two tries (a 401 refresh) of every timeout."""
    one_try = (
        settings.connect_timeout
        + settings.write_timeout
        + settings.read_timeout
        + settings.pool_timeout
    )
    return 2 * one_try


def worker_config(settings: Settings, broker_url: str) -> dict[str, Any]:
    """Celery settings of the worker side, on top of :func:`subswitch.broker.celery_config`."""
    budget = request_budget_s(settings)
    config = celery_config(
        broker_url=broker_url,
        visibility_timeout=settings.visibility_timeout,
        queue_type=settings.rabbitmq_queue_type,
        delivery_limit=settings.delivery_limit,
    )
    config.update(
        # Ack after the task ran, not on receipt: a worker killed mid-command leaves
        # the message to be redelivered. The store makes the second run harmless.
        task_acks_late=True,
        # ...and that includes the OS killing the worker process (SIGKILL, OOM).
        task_reject_on_worker_lost=True,
        # One message at a time per slot: fair across slots, and a killed worker
        # holds back as few messages as possible.
        worker_prefetch_multiplier=1,
        # On a broker connection loss the unacked messages are redelivered; stop
        # running their copies here so two workers rarely race (the store still wins).
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Hard limit (prefork only; threads ignore it): one attempt plus store work,
        # far inside the redelivery window so a stuck task never gets a twin.
        task_time_limit=int(budget + 30),
        task_soft_time_limit=int(budget + 20),
        worker_pool="threads",
        worker_concurrency=DEFAULT_CONCURRENCY,
        # Enough broker connections for every slot to publish its event at once.
        broker_pool_limit=DEFAULT_CONCURRENCY + 8,
        worker_hijack_root_logger=False,
        # Remote control lets any broker client inspect, revoke or shut down workers.
        worker_enable_remote_control=settings.remote_control,
        # Task events (Flower's view of tasks); a retry the worker sends is a task sent.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
    )
    if is_amqp(broker_url):
        config.update(task_default_queue_type=settings.rabbitmq_queue_type)
    return config


def create_app(settings: Settings, *, metrics_dir: Path | None = None) -> Celery:
    """The worker's Celery app: tasks and consumer registered, runtime built at start.

    At start the worker also reports its live figures and, with
    ``SUBSWITCH_METRICS_PORT``, serves metrics and health (:mod:`worker.observing`);
    ``metrics_dir`` (a supervised child) writes them for the supervisor instead.

    Raises:
        ConfigurationError: half configured (one URL without the other).
        UnavailableError: the embedded Redis would not start.
    """
    endpoints = start_or_raise(lambda: resolve_endpoints(settings))
    log_through_subswitch(settings.log_format)
    app = Celery("subswitch", set_as_current=False, amqp=ReliableAMQP.PATH)
    registry = CollectorRegistry()
    recorder = PrometheusRecorder(
        registry=registry, retry_reasons=[cause.value for cause in RetryCause]
    )
    serving = (
        Serving(settings.metrics_host, settings.metrics_port)
        if settings.metrics_port is not None
        else None
    )

    def observe(node: str) -> Observing:
        return start_worker_process(
            recorder=recorder,
            registry=registry,
            endpoints=endpoints,
            runtime_problem=holder.problem,
            node=node,
            serving=serving,
            metrics_dir=metrics_dir,
        )

    holder = RuntimeHolder(
        lambda: build_runtime(settings, endpoints, app, recorder=recorder), observe=observe
    )
    app.conf.update(worker_config(settings, endpoints.broker_url))
    app.conf.worker_consumer = bound_consumer(
        holder.executor,
        max_message_bytes=settings.max_message_bytes,
        visibility_timeout_s=settings.visibility_timeout,
    )
    tasks.register(app, executor=holder.executor, deliveries=holder.deliveries)
    holder.attach(app)
    return app


_LOGGING_RECEIVER: Final = "subswitch-logging"


def log_through_subswitch(fmt: LogFormat) -> None:
    """Let Celery's worker log through :func:`~subswitch.logs.configure_logging`.

    A receiver of Celery's ``setup_logging`` signal replaces Celery's own set-up (its
    root handlers, its task logger, its redirected stdout): every line, Celery's own
    included, comes out in ``fmt`` at the level the worker was started with.
    """

    def setup(loglevel: int | str | None = None, logfile: str | None = None, **_: Any) -> None:
        configure_logging(fmt, level=loglevel or logging.INFO, logfile=logfile)

    setup_logging.disconnect(dispatch_uid=_LOGGING_RECEIVER)
    setup_logging.connect(setup, weak=False, dispatch_uid=_LOGGING_RECEIVER)


def check_runtime(settings: Settings) -> None:
    """Build a runtime and close it again: raises what a worker start would.

    Raises:
        SubswitchError: as :func:`create_app` and :func:`build_runtime`.
    """
    app = create_app(settings)
    try:
        build_runtime(settings, resolve_endpoints(settings), app, report=False).close()
    finally:
        app.close()


def build_runtime(
    settings: Settings,
    endpoints: Endpoints,
    app: Celery,
    *,
    report: bool = True,
    recorder: Recorder = NULL_RECORDER,
) -> Runtime:
    """Wire the executor to the store, the upstream and the broker; check the store first.

    ``report`` logs the store's durability risks (off for a mere check); ``recorder``
    gets the metrics of every part.

    Raises:
        ConfigurationError: bad upstream settings or credentials.
        StoreError: the store does not answer.
    """
    # Configuration first: a worker that cannot start says so in one line, no warnings.
    authority = policy_watch(settings, report=report)
    client = start_or_raise(lambda: upstream.from_settings(settings))
    try:
        risks = check_store(endpoints.store_url, report=report)
    except StoreError:
        client.close()
        raise
    if isinstance(recorder, PrometheusRecorder):
        recorder.configured(rate_limit=settings.rate_limit, durability_warnings=len(risks))
    store = RedisStore.from_url(
        endpoints.store_url,
        retention_s=settings.retention_seconds,
        max_clock_skew_s=settings.max_clock_skew_seconds,
        metrics=recorder,
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
        policy=RetryPolicy.within_window(
            max_attempts=settings.max_attempts, redelivery_window_s=settings.visibility_timeout
        ),
        lease_ms=int((request_budget_s(settings) + _LEASE_S_BEYOND_BUDGET) * 1000),
        settle_s=settings.settle_seconds,
        max_clock_skew_s=settings.max_clock_skew_seconds,
        retention_s=settings.retention_seconds,
        traffic=traffic_control(settings, store, recorder=recorder),
        metrics=recorder,
        authority=authority,
    )
    if report:
        logger.info(
            "worker runtime ready: upstream %s, store %s",
            redact_url(settings.upstream_url),
            redact_url(endpoints.store_url),
        )
    deliveries = DeliveryCounter(scripts=store.scripts, limit=settings.delivery_limit)
    return Runtime(
        executor=executor, store=store, client=client, pid=os.getpid(), deliveries=deliveries
    )


def policy_watch(settings: Settings, *, report: bool = True) -> PolicyWatch | None:
    """The policy of ``SUBSWITCH_POLICY_FILE`` (reloaded on change and on SIGHUP), or
    ``None`` without one; either way the log says so, in one line.

    Raises:
        PolicyError: the file cannot be used (a worker never runs without the policy
            it was told to enforce).
    """
    if settings.policy_file is None:
        if report:
            logger.warning(
                "no policy (SUBSWITCH_POLICY_FILE is unset): every well-formed command is "
                "accepted, signed or not, from anyone who can publish to the broker"
            )
        return None
    try:
        watch = PolicyWatch.load(settings.policy_file, poll_s=settings.policy_poll_seconds)
    except PolicyError as exc:
        raise PolicyError(exc.origin, exc.problems, variable="SUBSWITCH_POLICY_FILE") from None
    if report:
        logger.info("policy in force: %s", watch.policy.summary())
        worker_ready.connect(_take_sighup(watch), weak=False)
    return watch


def _take_sighup(watch: PolicyWatch) -> Callable[..., None]:
    """``worker_ready``: Celery has installed its own signal handlers; take SIGHUP (in
    place of Celery's, which restarts the worker)."""

    def on_worker_ready(**_: Any) -> None:
        try:
            watch.install_sighup()
        except ValueError:  # not the main thread: the file's modification time still counts
            logger.warning("SIGHUP cannot reload the policy here; changes to the file do")

    return on_worker_ready


def check_store(store_url: str, *, report: bool = True) -> list[str]:
    """Refuse an unreachable store; warn about one that may forget or evict records.

    Returns the warnings (none when not ``report``-ing).
    """
    client = redis_client(store_url, timeout_s=_STORE_CHECK_TIMEOUT_S)
    try:
        client.ping()
        return check_durability(client) if report else []
    except (redis.RedisError, OSError) as exc:
        reason = scrub(str(exc) or type(exc).__name__, store_url)
        message = f"store unreachable at {redact_url(store_url)}: {reason}"
        raise StoreError(message) from None
    finally:
        client.close()


def traffic_control(
    settings: Settings, store: RedisStore, *, recorder: Recorder = NULL_RECORDER
) -> TrafficControl:
    """The global rate limit and circuit breaker the settings ask for."""
    limiter = (
        RateLimiter(scripts=store.scripts, rate_per_s=settings.rate_limit, metrics=recorder)
        if settings.rate_limit
        else None
    )
    breaker = (
        CircuitBreaker(scripts=store.scripts, policy=breaker_policy(settings), metrics=recorder)
        if settings.breaker
        else None
    )
    return TrafficControl(limiter=limiter, breaker=breaker)


def breaker_policy(settings: Settings) -> BreakerPolicy:
    """The circuit breaker's thresholds from settings."""
    return BreakerPolicy(
        failure_ratio=settings.breaker_failure_ratio,
        min_requests=settings.breaker_min_requests,
        window_s=settings.breaker_window_s,
        cooldown_s=settings.breaker_cooldown_s,
    )


def start_or_raise(step: Callable[[], _T]) -> _T:
    """``step()``, with invalid settings turned into the tree's :class:`ConfigurationError`."""
    try:
        return step()
    except ValidationError as exc:
        raise settings_error(exc) from None


def start_or_refuse(step: Callable[[], _T]) -> _T:
    """``step()``, or end the process with one line on stderr and a non-zero status."""
    try:
        return start_or_raise(step)
    except SubswitchError as exc:
        refuse(exc)


def refuse(exc: SubswitchError) -> NoReturn:
    """Print ``error: worker cannot start: <why>`` and exit with the error's status
    (2 for configuration, 3 for a service that does not answer).

    ``SystemExit`` rather than an exception: Celery's signal dispatch logs and
    swallows exceptions (the worker would start without a runtime), not exits.
    """
    message, status = exit_for(exc)
    sys.stderr.write(f"error: worker cannot start: {one_line(message)}\n")
    sys.stderr.flush()
    raise SystemExit(status)
