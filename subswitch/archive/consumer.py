"""The archive process: ``subswitch.events`` into the database, at least once.

It consumes its own durable queue (``subswitch.archive``, bound to ``command.#``), so
events published while it is down wait for it. Events are written in batches (at most
``Settings.archive_batch_size``, at most ``Settings.archive_flush_seconds`` after the
first of a batch arrived) and acknowledged only after their transaction committed; a
redelivered event is skipped by its id. Between batches it deletes expired events, a
batch at a time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from kombu import Connection, Consumer, Message
from pydantic import ValidationError

from subswitch.archive import metrics
from subswitch.broker import (
    BROKER_FAILURES,
    EVENTS,
    archive_queue,
    broker_connection,
    check_broker_url,
    is_amqp,
)
from subswitch.contract import ResultEvent, describe_validation_error
from subswitch.errors import ArchiveError, BrokerError
from subswitch.redact import redact_url, scrub

log = logging.getLogger(__name__)

#: What the archive logs once it is bound and consuming (the demo waits for it).
READY_MARK: Final = "archive ready"
#: How often expired events are looked for, and how many one DELETE removes.
RETENTION_INTERVAL_S: Final = 3600.0
RETENTION_BATCH: Final = 5000
#: How long one wait for messages lasts when nothing is pending (stop is seen by then).
_IDLE_WAIT_S: Final = 0.25
_RETRY_FIRST_S: Final = 0.5
_RETRY_MAX_S: Final = 30.0
_CONNECT_TIMEOUT_S: Final = 4.0


class ArchiveSink(Protocol):
    """What the consumer writes to (:class:`~subswitch.archive.store.SqlArchive`)."""

    def store(self, batch: list[ResultEvent]) -> int:
        """Insert ``batch`` (deduplicated); how many were new."""
        ...

    def delete_completed_before(self, cutoff: datetime, *, limit: int) -> int:
        """Delete at most ``limit`` events completed before ``cutoff``."""
        ...

    def newest_completed_at(self) -> datetime | None:
        """``completed_at`` of the newest archived event."""
        ...


@dataclass
class _Batch:
    messages: list[Message] = field(default_factory=list)
    events: list[ResultEvent] = field(default_factory=list)
    started: float = 0.0


class ArchiveConsumer:
    """Consumes ``subswitch.archive`` into an :class:`ArchiveSink` until stopped."""

    def __init__(
        self,
        *,
        broker_url: str,
        sink: ArchiveSink,
        queue_type: str,
        batch_size: int,
        flush_seconds: float,
        retention_days: int,
        visibility_timeout: int,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._broker_url = check_broker_url(broker_url)
        self._sink = sink
        self._queue = archive_queue(broker_url=broker_url, queue_type=queue_type)
        self._amqp = is_amqp(broker_url)
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._retention = timedelta(days=retention_days)
        self._transport_options = {"visibility_timeout": visibility_timeout}
        self._monotonic = monotonic
        self._now = now
        self._batch = _Batch()
        self._newest: datetime | None = None
        self._next_sweep = 0.0
        self._on_ready: Callable[[], None] = lambda: None
        self.stored = 0
        #: Bound to its queue and consuming now (part of the archive's readiness).
        self.consuming = False
        metrics.LAG.set_function(self._lag)

    def run(self, stop: threading.Event, *, on_ready: Callable[[], None] = lambda: None) -> None:
        """Consume until ``stop`` is set; what is pending then is written and acked.
        ``on_ready`` is called once the queue is bound and consumed (again after a
        reconnection).

        A broker that cannot be reached at first raises :class:`BrokerError`; a
        connection lost later is re-established with a growing delay.

        Raises:
            BrokerError: the broker did not answer at start.
            ArchiveError: the database did not answer at start.
        """
        self._newest = self._sink.newest_completed_at()
        connection = self._connect()
        self._on_ready = on_ready
        delay = _RETRY_FIRST_S
        while not stop.is_set():
            try:
                self._consume(connection, stop)
            except BROKER_FAILURES as exc:
                self.consuming = False
                log.warning("lost the broker: %s; reconnecting", self._describe(exc))
                self._abandon()
                connection.release()
                stop.wait(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                connection = self._reconnect(stop)
            else:
                break
        self.consuming = False
        connection.release()

    def _connect(self) -> Connection:
        connection = broker_connection(
            self._broker_url,
            connect_timeout=_CONNECT_TIMEOUT_S,
            transport_options=self._transport_options,
        )
        try:
            connection.ensure_connection(max_retries=2, interval_start=0, interval_step=1)
        except BROKER_FAILURES as exc:
            connection.release()
            raise BrokerError(self._describe(exc)) from exc
        return connection

    def _reconnect(self, stop: threading.Event) -> Connection:
        delay = _RETRY_FIRST_S
        while True:
            try:
                return self._connect()
            except BrokerError as exc:
                if stop.is_set():
                    raise
                log.warning("%s; trying again in %.1f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    def _consume(self, connection: Connection, stop: threading.Event) -> None:
        channel = connection.channel()
        EVENTS(channel).declare()
        queue = self._queue(channel)
        queue.declare()
        consumer = Consumer(channel, queues=[queue], on_message=self._receive, auto_declare=False)
        # Room for a full batch while the one before it is written, no more: an
        # unacknowledged message is the broker's to hand out again.
        consumer.qos(prefetch_count=2 * self._batch_size)
        consumer.consume()
        log.info("%s: %s into the database", READY_MARK, queue.name)
        self.consuming = True
        self._on_ready()  # bound and consuming: nothing published from now on is missed
        while not stop.is_set():
            self._wait(connection)
            if self._batch_due():
                self._flush(stop)
            self._sweep_step()
        self._flush(stop)
        consumer.cancel()

    def _wait(self, connection: Connection) -> None:
        timeout = _IDLE_WAIT_S
        if self._monotonic() >= self._next_sweep:
            timeout = 0.0  # expired events left to delete: only take what is there
        elif self._batch.messages:
            left = self._batch.started + self._flush_seconds - self._monotonic()
            timeout = max(0.0, min(timeout, left))
        try:
            connection.drain_events(timeout=timeout)
        except TimeoutError:
            return

    def _receive(self, message: Message) -> None:
        body: Any = message.body
        if not self._batch.messages:
            self._batch.started = self._monotonic()
        self._batch.messages.append(message)
        try:
            self._batch.events.append(ResultEvent.model_validate_json(body))
        except ValidationError as exc:  # not JSON, or not an event: nothing to archive
            metrics.EVENTS.labels(result="skipped").inc()
            log.warning(
                "skipped a message on %s that is not a result event: %s",
                EVENTS.name,
                describe_validation_error(exc),
            )

    def _batch_due(self) -> bool:
        batch = self._batch
        if not batch.messages:
            return False
        full = len(batch.messages) >= self._batch_size
        return full or self._monotonic() - batch.started >= self._flush_seconds

    def _flush(self, stop: threading.Event) -> None:
        batch, self._batch = self._batch, _Batch()
        if not batch.messages:
            return
        if not self._write(batch.events, stop):
            return  # stopping with the database away: unacked, so redelivered later
        if self._amqp:
            # Everything this channel delivered so far is in this batch, in order: one
            # frame acknowledges it all.
            batch.messages[-1].ack(multiple=True)
            return
        for message in batch.messages:  # Redis acknowledges one message at a time
            message.ack()

    def _write(self, events: list[ResultEvent], stop: threading.Event) -> bool:
        delay = _RETRY_FIRST_S
        while True:
            try:
                with metrics.BATCH_SECONDS.time():
                    new = self._sink.store(events)
            except ArchiveError as exc:
                log.warning("%s; trying again in %.1f s", exc, delay)
                if stop.wait(delay):
                    return False
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            self._count(events, new)
            return True

    def _count(self, events: list[ResultEvent], new: int) -> None:
        self.stored += new
        metrics.EVENTS.labels(result="stored").inc(new)
        metrics.EVENTS.labels(result="duplicate").inc(len(events) - new)
        newest = max((event.data.completed_at for event in events), default=None)
        if newest is not None and (self._newest is None or newest > self._newest):
            self._newest = newest

    def _abandon(self) -> None:
        # The broker hands these out again; writing them now would ack nothing.
        self._batch = _Batch()

    def _sweep_step(self) -> None:
        if self._monotonic() < self._next_sweep:
            return
        cutoff = self._now() - self._retention
        try:
            deleted = self._sink.delete_completed_before(cutoff, limit=RETENTION_BATCH)
        except ArchiveError as exc:
            log.warning("retention: %s", exc)
            deleted = 0
        metrics.DELETED.inc(deleted)
        if deleted:
            log.info("retention: deleted %d events completed before %s", deleted, cutoff)
        if deleted < RETENTION_BATCH:  # done for now; else the next batch, next round
            self._next_sweep = self._monotonic() + RETENTION_INTERVAL_S

    def _lag(self) -> float:
        if self._newest is None:
            return math.nan
        return (self._now() - self._newest).total_seconds()

    def _describe(self, exc: BaseException) -> str:
        reason = scrub(str(exc) or type(exc).__name__, self._broker_url)
        return f"broker {redact_url(self._broker_url)}: {reason}"
