"""The worker's Prometheus metrics, behind one small recording interface.

The executor, traffic control and the store report what happens through a
:class:`Recorder`; :class:`PrometheusRecorder` turns it into the ``subswitch_*``
metrics (and keeps the running totals ``subswitch top`` reads from the store),
:class:`NullRecorder` drops it and :class:`InMemoryRecorder` keeps it for tests.
The broker-side figures (queue depth, dead letters, the shared breaker state) are
sampled every few seconds by the process that serves ``/metrics``
(:class:`BrokerMetrics`), never by every worker thread.

Label values are bounded: command types, lanes, outcomes, operation names, HTTP
status codes and a fixed set of retry reasons; never a command or subscription id.

Under ``subswitch worker`` with two Celery workers, both children write their
metrics into a private ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode) and the supervisor serves them on one port
(:func:`multiprocess_registry`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from subswitch.contract import Lane, Outcome, ResultEvent
from subswitch.livestats import ProcessStats

#: Command types as labels (the event's ``command_type``); anything else is ``unknown``.
COMMAND_TYPES: Final = {"ChangeBlockStatus": "block", "ChangeServiceStatus": "service"}
UNKNOWN: Final = "unknown"
LANE_LABELS: Final = (*(lane.value for lane in Lane), UNKNOWN)
#: Breaker states as the gauge's values.
BREAKER_VALUES: Final = {"closed": 0, "half_open": 1, "open": 2}

_LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
_REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2)
_ATTEMPT_BUCKETS: Final = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20)


class Recorder(Protocol):
    """What the worker's parts report; every method is cheap and never raises."""

    def command_finished(self, event: ResultEvent) -> None:
        """This delivery decided the command's outcome (once per command)."""

    def retry(self, reason: str) -> None:
        """A delivery goes back through the broker (``reason`` from a fixed set)."""

    def upstream_request(self, *, operation: str, status: str, seconds: float) -> None:
        """One upstream write ended: its HTTP status, or ``timeout`` / ``connection``."""

    def inflight(self, delta: int) -> None:
        """An upstream write started (+1) or ended (-1)."""

    def settling(self, seconds: float) -> None:
        """This process left a target settling for ``seconds`` (an answer was lost)."""

    def rate_limit_wait(self, seconds: float) -> None:
        """A request waited this long for its rate-limit slot."""

    def breaker_transition(self, to: str) -> None:
        """This process moved the shared circuit to ``to`` (open, half_open, closed)."""

    def store_error(self) -> None:
        """A store operation failed (the store did not answer)."""


class NullRecorder:
    """Records nothing: the default wherever no recorder is given."""

    def command_finished(self, event: ResultEvent) -> None:
        """Ignored."""

    def retry(self, reason: str) -> None:
        """Ignored."""

    def upstream_request(self, *, operation: str, status: str, seconds: float) -> None:
        """Ignored."""

    def inflight(self, delta: int) -> None:
        """Ignored."""

    def settling(self, seconds: float) -> None:
        """Ignored."""

    def rate_limit_wait(self, seconds: float) -> None:
        """Ignored."""

    def breaker_transition(self, to: str) -> None:
        """Ignored."""

    def store_error(self) -> None:
        """Ignored."""


NULL_RECORDER: Final = NullRecorder()


@dataclass
class InMemoryRecorder:
    """Keeps every report, for tests."""

    finished: list[ResultEvent] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    inflight_now: int = 0
    inflight_peak: int = 0
    settles: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    transitions: list[str] = field(default_factory=list)
    store_errors: int = 0

    def command_finished(self, event: ResultEvent) -> None:
        """Keep the event."""
        self.finished.append(event)

    def retry(self, reason: str) -> None:
        """Keep the reason."""
        self.retries.append(reason)

    def upstream_request(self, *, operation: str, status: str, seconds: float) -> None:
        """Keep the operation and status."""
        self.requests.append((operation, status))

    def inflight(self, delta: int) -> None:
        """Track the level and its peak."""
        self.inflight_now += delta
        self.inflight_peak = max(self.inflight_peak, self.inflight_now)

    def settling(self, seconds: float) -> None:
        """Keep the settle time."""
        self.settles.append(seconds)

    def rate_limit_wait(self, seconds: float) -> None:
        """Keep the wait."""
        self.waits.append(seconds)

    def breaker_transition(self, to: str) -> None:
        """Keep the new state."""
        self.transitions.append(to)

    def store_error(self) -> None:
        """Count it."""
        self.store_errors += 1


def command_type_label(command_type: str | None) -> str:
    """``block``, ``service`` or ``unknown``."""
    return COMMAND_TYPES.get(command_type or "", UNKNOWN)


def lane_label(lane: Lane | str | None) -> str:
    """A lane's name, or ``unknown``."""
    value = str(lane) if lane is not None else UNKNOWN
    return value if value in LANE_LABELS else UNKNOWN


def latency_s(event: ResultEvent) -> float | None:
    """From the command's ``issued_at`` to its completion; ``None`` when unknown."""
    issued = event.data.issued_at
    if issued is None:
        return None
    return max(0.0, (event.data.completed_at - issued).total_seconds())


class PrometheusRecorder:
    """:class:`Recorder` into the ``subswitch_*`` metrics of ``registry``.

    Also keeps this process's running totals (:meth:`snapshot`) for ``subswitch top``.
    ``monotonic`` is the clock of the settling deadlines.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        retry_reasons: Iterable[str] = (),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._outcomes: Tally[tuple[str, str]] = Tally()
        self._writes = 0
        self._inflight = 0
        self._settle_until: list[float] = []
        self._children: dict[tuple[int | str, ...], Any] = {}
        self._define(registry)
        self._zeroes(retry_reasons)

    def _define(self, registry: CollectorRegistry) -> None:
        r = registry
        self.commands = Counter(
            "subswitch_commands", "Commands finished, by outcome.", ["type", "outcome", "lane"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "subswitch_command_latency_seconds", "From issued_at to the outcome.", ["lane"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.attempts = Histogram(
            "subswitch_attempts", "Upstream attempts of a finished command.",
            buckets=_ATTEMPT_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "subswitch_upstream_requests", "Upstream writes, by HTTP status.",
            ["operation", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "subswitch_upstream_request_seconds", "Duration of one upstream write.",
            ["operation"], buckets=_REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "subswitch_retries", "Deliveries sent back through the broker.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.settling_targets = Gauge(
            "subswitch_settling_targets", "Targets this process holds after a lost answer.",
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.inflight_gauge = Gauge(
            "subswitch_inflight", "Upstream writes in flight.", multiprocess_mode="livesum",
            registry=r,
        )  # fmt: skip
        self.rate_wait = Histogram(
            "subswitch_rate_limit_wait_seconds", "Wait for a rate-limit slot.",
            buckets=_WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.rate_limit = Gauge(
            "subswitch_rate_limit_per_second", "Configured global cap on writes (0: none).",
            multiprocess_mode="max", registry=r,
        )  # fmt: skip
        self.transitions = Counter(
            "subswitch_breaker_transitions", "Circuit changes made by this process.", ["to"],
            registry=r,
        )  # fmt: skip
        self.store_errors = Counter(
            "subswitch_store_errors", "Store operations that failed.", registry=r
        )
        self.durability = Gauge(
            "subswitch_store_durability_warning",
            "Durability risks of the store Redis found at start (appendonly, eviction).",
            multiprocess_mode="max", registry=r,
        )  # fmt: skip

    def _zeroes(self, retry_reasons: Iterable[str]) -> None:
        # Every known series from the start, at zero: rate() and alerts see the first
        # increase, and a scrape shows every metric before anything happened.
        for kind in (*COMMAND_TYPES.values(), UNKNOWN):
            for outcome in Outcome:
                for lane in LANE_LABELS:
                    self.commands.labels(kind, outcome.value, lane)
        for lane in LANE_LABELS:
            self.latency.labels(lane)
        for reason in retry_reasons:
            self.retries.labels(reason)
        for state in BREAKER_VALUES:
            self.transitions.labels(state)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        # ``labels()`` costs a lock and a lookup each time: children are kept here.
        key: tuple[int | str, ...] = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def command_finished(self, event: ResultEvent) -> None:
        """Count the outcome, its latency and attempts."""
        lane = lane_label(event.data.priority)
        outcome = event.data.outcome.value
        kind = command_type_label(event.data.command_type)
        self._child(self.commands, kind, outcome, lane).inc()
        latency = latency_s(event)
        if latency is not None:
            self._child(self.latency, lane).observe(latency)
        self.attempts.observe(event.data.attempts)
        with self._lock:
            self._outcomes[(lane, outcome)] += 1

    def retry(self, reason: str) -> None:
        """Count a retry."""
        self.retries.labels(reason).inc()

    def upstream_request(self, *, operation: str, status: str, seconds: float) -> None:
        """Count a write and its duration."""
        self._child(self.requests, operation, status).inc()
        self._child(self.request_seconds, operation).observe(seconds)
        with self._lock:
            self._writes += 1

    def inflight(self, delta: int) -> None:
        """Move the in-flight gauge."""
        self.inflight_gauge.inc(delta)
        with self._lock:
            self._inflight += delta

    def settling(self, seconds: float) -> None:
        """Hold one more target for ``seconds``."""
        with self._lock:
            self._settle_until.append(self._monotonic() + seconds)
        self.refresh()

    def rate_limit_wait(self, seconds: float) -> None:
        """Observe a wait."""
        self.rate_wait.observe(seconds)

    def breaker_transition(self, to: str) -> None:
        """Count a transition."""
        self.transitions.labels(to).inc()

    def store_error(self) -> None:
        """Count a store error."""
        self.store_errors.inc()

    def configured(self, *, rate_limit: float | None, durability_warnings: int) -> None:
        """The settings and start-up findings the gauges show."""
        self.rate_limit.set(rate_limit or 0)
        self.durability.set(durability_warnings)

    def refresh(self) -> int:
        """Forget settle holds that ran out; the number still held."""
        now = self._monotonic()
        with self._lock:
            self._settle_until = [until for until in self._settle_until if until > now]
            held = len(self._settle_until)
        self.settling_targets.set(held)
        return held

    def snapshot(self, *, node: str, pid: int) -> ProcessStats:
        """This process's running totals, for ``subswitch top``."""
        held = self.refresh()
        with self._lock:
            outcomes = {f"{lane}:{outcome}": n for (lane, outcome), n in self._outcomes.items()}
            return ProcessStats(
                node=node,
                pid=pid,
                outcomes=outcomes,
                writes=self._writes,
                inflight=self._inflight,
                settling=held,
            )


class BrokerMetrics:
    """Figures sampled from the broker and the store by the serving process."""

    def __init__(self, *, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "subswitch_queue_depth", "Messages waiting in a lane's queue.", ["lane"],
            registry=registry,
        )  # fmt: skip
        self.dead_letters = Gauge(
            "subswitch_dead_letters", "Messages kept in subswitch.dead.", registry=registry
        )
        self.breaker_state = Gauge(
            "subswitch_breaker_state", "Shared circuit: 0 closed, 1 half-open, 2 open.",
            registry=registry,
        )  # fmt: skip

    def sampled(self, *, depths: Mapping[Lane, int], dead: int, breaker: str) -> None:
        """Set the gauges from one sample."""
        for lane, depth in depths.items():
            self.queue_depth.labels(lane.value).set(depth)
        self.dead_letters.set(dead)
        self.breaker_state.set(BREAKER_VALUES.get(breaker, 0))


def multiprocess_registry(path: Path) -> CollectorRegistry:
    """A registry with what every process writing into ``path`` recorded."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry
