"""Follow the result events the workers publish to the ``subswitch.events`` exchange."""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Self

from kombu import Connection, Consumer, Message, Queue, binding
from pydantic import ValidationError

from producers.errors import BrokerError, redact_url, scrub
from subswitch.broker import BROKER_FAILURES, EVENTS, broker_connection, check_broker_url
from subswitch.contract import Outcome, ResultEvent, describe_validation_error
from subswitch.settings import Settings
from subswitch.urls import resolve_broker_url

log = logging.getLogger(__name__)

#: Every result event: ``command.<outcome>``.
ALL_EVENTS: Final = "command.#"


class EventStream:
    """A private queue bound to ``subswitch.events``, consumed as ``ResultEvent`` objects.

    The queue is bound in ``__enter__`` (or ``open()``): bind first, then send, and
    no event of the commands sent is missed. It is exclusive and auto-deleted on
    RabbitMQ, and deleted explicitly on close on Redis (where nothing else would).

        with EventStream(broker_url=url, outcomes={"failed"}) as stream:
            for event in stream.iter(timeout=10):
                ...
    """

    def __init__(
        self,
        *,
        broker_url: str,
        outcomes: Iterable[Outcome | str] | None = None,
        routing_key: str = ALL_EVENTS,
        connect_timeout: float = 4.0,
    ) -> None:
        self._broker_url = check_broker_url(broker_url)
        self._connect_timeout = connect_timeout
        keys = sorted({Outcome(o).routing_key for o in outcomes}) if outcomes else [routing_key]
        self.routing_keys: tuple[str, ...] = tuple(keys)
        self._queue = Queue(
            f"subswitch.events.{uuid.uuid4().hex}",
            bindings=[binding(EVENTS, routing_key=key) for key in keys],
            durable=False,
            exclusive=True,
            auto_delete=True,
        )
        self._connection: Connection | None = None
        self._consumer: Consumer | None = None
        self._pending: deque[ResultEvent] = deque()

    @classmethod
    def from_env(cls, *, outcomes: Iterable[Outcome | str] | None = None) -> EventStream:
        """A stream on the broker configured by ``SUBSWITCH_*`` (or the embedded one)."""
        return cls.from_settings(Settings(), outcomes=outcomes)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, outcomes: Iterable[Outcome | str] | None = None
    ) -> EventStream:
        """A stream on the broker of already-read settings."""
        return cls(broker_url=resolve_broker_url(settings), outcomes=outcomes)

    @property
    def queue_name(self) -> str:
        """Name of this stream's private queue."""
        return str(self._queue.name)

    def open(self) -> None:
        """Connect, declare the exchange and bind the private queue to it.

        Raises:
            BrokerError: the broker could not be reached (one line, no secrets).
        """
        if self._connection is not None:
            return
        connection = broker_connection(self._broker_url, connect_timeout=self._connect_timeout)
        try:
            connection.ensure_connection(max_retries=2, interval_start=0, interval_step=1)
            channel = connection.default_channel
            EVENTS(channel).declare()
            self._queue(channel).declare()
            consumer = Consumer(
                channel, queues=[self._queue], on_message=self._receive, auto_declare=False
            )
            consumer.consume()
        except BROKER_FAILURES as exc:
            connection.release()
            raise BrokerError(self._describe("could not follow events", exc)) from exc
        self._connection, self._consumer = connection, consumer

    def close(self) -> None:
        """Delete the private queue and disconnect; unread events are dropped."""
        connection, self._connection = self._connection, None
        consumer, self._consumer = self._consumer, None
        if connection is None:
            return
        try:
            if consumer is not None:
                consumer.cancel()  # before the delete, or RabbitMQ cancels it from its side
            self._queue(connection.default_channel).delete()
        except BROKER_FAILURES as exc:
            # RabbitMQ drops the exclusive queue with the connection anyway.
            log.debug("could not delete %s: %s", self.queue_name, type(exc).__name__)
        finally:
            connection.release()

    def iter(self, *, timeout: float | None = None) -> Iterator[ResultEvent]:
        """Yield events as they arrive, until ``timeout`` seconds have passed (or forever).

        On Redis the end may come up to a second late: the transport polls each second.

        Raises:
            BrokerError: the connection to the broker was lost.
        """
        connection = self._require_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._pending:
                yield self._pending.popleft()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            self._drain(connection, remaining)

    def wait_for(self, command_ids: Iterable[str], timeout: float) -> dict[str, ResultEvent]:
        """The first event of each of ``command_ids`` that arrives within ``timeout`` s.

        Returns early once all are in; a missing key means no event came in time.
        Events of other commands are consumed and dropped.
        """
        wanted = set(command_ids)
        found: dict[str, ResultEvent] = {}
        if not wanted:
            return found
        for event in self.iter(timeout=timeout):
            command_id = event.data.command_id
            if command_id in wanted and command_id not in found:
                found[command_id] = event
                if len(found) == len(wanted):
                    break
        return found

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"EventStream(broker_url={redact_url(self._broker_url)!r}, "
            f"routing_keys={list(self.routing_keys)!r})"
        )

    def _require_open(self) -> Connection:
        if self._connection is None:
            raise RuntimeError("EventStream is not open: use it as a context manager")
        return self._connection

    def _drain(self, connection: Connection, timeout: float | None) -> None:
        try:
            connection.drain_events(timeout=timeout)
        except TimeoutError:
            return
        except BROKER_FAILURES as exc:
            raise BrokerError(self._describe("lost the event stream", exc)) from exc

    def _receive(self, message: Message) -> None:
        # The raw body: kombu has no decoder for application/cloudevents+json, and
        # needs none, the event is parsed by its own model.
        body: Any = message.body
        try:
            self._pending.append(ResultEvent.model_validate_json(body))
        except ValidationError as exc:
            log.warning(
                "skipped a message on %s that is not a result event: %s",
                EVENTS.name,
                describe_validation_error(exc),
            )
        finally:
            message.ack()

    def _describe(self, what: str, exc: BaseException) -> str:
        reason = scrub(str(exc) or type(exc).__name__, self._broker_url)
        return f"{what} at {redact_url(self._broker_url)}: {reason}"
