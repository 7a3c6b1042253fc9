"""Where the worker publishes: result events and dead letters, on the Celery broker.

Both publish through the Celery app's producer pool (one connection pool per
process, reused) and return only once the broker accepted the message: with
RabbitMQ, ``confirm_publish`` makes ``publish`` wait for the broker's confirm.
A publish that fails raises :class:`~subswitch.errors.PublishError` (transient): the
broker's and its client libraries' errors are mapped here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from celery import Celery

from subswitch.broker import BROKER_FAILURES, DEAD_LETTER, EVENTS, dead_letter_queue
from subswitch.clock import utcnow
from subswitch.contract import DEAD_LETTER_QUEUE, EVENT_CONTENT_TYPE
from subswitch.deadletters import DEAD_AT_HEADER, REASON_HEADER
from subswitch.errors import PublishError
from subswitch.text import safe_line
from worker.executor import OutgoingEvent

_RETRY_POLICY = {"max_retries": 5, "interval_start": 0.1, "interval_step": 0.5, "interval_max": 2}


class KombuEventSink:
    """Publishes CloudEvents bodies to the ``subswitch.events`` topic exchange."""

    def __init__(self, *, app: Celery) -> None:
        self._app = app

    def publish(self, event: bytes, *, routing_key: str, event_id: str) -> None:
        """Publish one structured-mode CloudEvent (persistent, confirmed).

        Raises:
            PublishError: the broker did not take it.
        """
        self._publish_all([OutgoingEvent(event, routing_key, event_id)], f"event {event_id}")

    def publish_many(self, events: Sequence[OutgoingEvent]) -> None:
        """Publish each event as :meth:`publish` does, in order, through one producer
        (on Redis in one round trip, the exchange's bindings read once).

        Raises:
            PublishError: the broker did not take one of them (those before it were).
        """
        self._publish_all(events, f"{len(events)} events")

    def _publish_all(self, events: Sequence[OutgoingEvent], what: str) -> None:
        with (
            _mapped(what),
            self._app.producer_pool.acquire(block=True) as producer,
            _batch(producer),
        ):
            for index, event in enumerate(events):
                producer.publish(
                    event.body,
                    exchange=EVENTS,
                    routing_key=event.routing_key,
                    declare=[] if index else [EVENTS],  # once is enough for them all
                    content_type=EVENT_CONTENT_TYPE,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    message_id=event.event_id,
                    retry=True,
                    retry_policy=_RETRY_POLICY,
                )


class KombuDeadLetters:
    """Keeps rejected messages in the durable ``subswitch.dead`` queue."""

    def __init__(
        self, *, app: Celery, queue_type: str, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._app = app
        self._queue = dead_letter_queue(broker_url=app.conf.broker_url, queue_type=queue_type)
        self._clock = clock

    def dead_letter(self, body: bytes, *, reason: str, headers: Mapping[str, Any]) -> None:
        """Publish ``body`` unchanged, with the reason in the ``x-subswitch-reason`` header
        (one line of at most 1 KiB: a header must fit in one AMQP frame) and the time in
        ``x-subswitch-dead-at`` (``subswitch dead list`` shows both).

        Raises:
            PublishError: the broker did not take it.
        """
        kept = {key: value for key, value in headers.items() if value is not None}
        with _mapped("a dead letter"), self._app.producer_pool.acquire(block=True) as producer:
            producer.publish(
                body,
                exchange=DEAD_LETTER,
                routing_key=DEAD_LETTER_QUEUE,
                declare=[self._queue],
                content_type="application/octet-stream",
                content_encoding="binary",
                delivery_mode=2,
                headers={
                    **kept,
                    REASON_HEADER: safe_line(reason),
                    DEAD_AT_HEADER: self._clock().isoformat(timespec="seconds"),
                },
                retry=True,
                retry_policy=_RETRY_POLICY,
            )


def _batch(producer: Any) -> AbstractContextManager[Any]:
    """kombu's publish batch (5.7; not in its type stubs): on Redis the messages go in
    one pipeline, on AMQP one by one, each confirmed."""
    return cast(AbstractContextManager[Any], producer.batch())


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except BROKER_FAILURES as exc:
        # The type only: a broker error's text can quote the URL, and with it a password.
        raise PublishError(f"could not publish {what}: {type(exc).__name__}") from exc


@dataclass
class InMemoryEventSink:
    """Test double: keeps published events in order."""

    published: list[tuple[str, bytes]] = field(default_factory=list)

    def publish(self, event: bytes, *, routing_key: str, event_id: str) -> None:
        """Record ``(routing_key, event)``."""
        self.published.append((routing_key, event))

    def publish_many(self, events: Sequence[OutgoingEvent]) -> None:
        """Record each event's ``(routing_key, body)``."""
        self.published.extend((event.routing_key, event.body) for event in events)


@dataclass
class InMemoryDeadLetters:
    """Test double: keeps dead letters in order."""

    letters: list[tuple[bytes, str]] = field(default_factory=list)

    def dead_letter(self, body: bytes, *, reason: str, headers: Mapping[str, Any]) -> None:
        """Record ``(body, reason)``."""
        self.letters.append((body, reason))
