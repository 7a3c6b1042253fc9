"""Broker-side helpers for producer tests: read what a producer sent, stand in for a worker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import amqp.exceptions
from kombu import Connection, Consumer, Message, Producer, Queue
from kombu.exceptions import ChannelError

from producers.commands import AnyCommand
from producers.publisher import CeleryPublisher
from subswitch.broker import EVENTS, lane_queue
from subswitch.contract import (
    EVENT_CONTENT_TYPE,
    Lane,
    Outcome,
    ResultEvent,
    parse_command,
    result_event,
)
from subswitch.settings import Settings

#: The lane queues' type, as the worker declares it by default.
QUEUE_TYPE: Final = Settings.model_fields["rabbitmq_queue_type"].default
DELIVERY_LIMIT: Final = Settings.model_fields["delivery_limit"].default


def publisher_for(broker_url: str) -> CeleryPublisher:
    """A publisher for ``broker_url``, every other setting at its default."""
    return CeleryPublisher.from_settings(Settings(broker_url=broker_url))


@dataclass(frozen=True)
class TaskMessage:
    """One Celery protocol-2 message as read off a lane queue."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    content_type: str
    body: list[Any]

    @property
    def command(self) -> AnyCommand:
        """``args[0]``, parsed as the worker would."""
        return parse_command(self.body[0][0])


def receive(url: str, lane: Lane, *, count: int = 1, timeout: float = 10.0) -> list[TaskMessage]:
    """Consume (and ack) ``count`` messages from ``lane``'s queue, or fail at ``timeout``."""
    received: list[TaskMessage] = []

    def keep(message: Message) -> None:
        received.append(_task_message(message))
        message.ack()

    # Declared as the worker does: must not clash.
    queue = lane_queue(lane, broker_url=url, queue_type=QUEUE_TYPE, delivery_limit=DELIVERY_LIMIT)
    deadline = time.monotonic() + timeout
    with Connection(url) as connection, Consumer(connection, [queue], on_message=keep):
        while len(received) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(received)} of {count} messages on {lane.queue}"
            try:
                connection.drain_events(timeout=remaining)
            except TimeoutError:
                continue
    return received


def _task_message(message: Message) -> TaskMessage:
    return TaskMessage(
        headers=dict(message.headers),
        properties=dict(message.properties),
        content_type=message.content_type,
        body=json.loads(message.body),
    )


def queue_depth(url: str, name: str) -> int | None:
    """Messages ready in queue ``name``; None if it does not exist (an empty Redis list
    does not exist either)."""
    with Connection(url) as connection:
        try:
            return int(Queue(name, channel=connection.channel()).queue_declare(passive=True)[1])
        except (ChannelError, amqp.exceptions.ChannelError):
            return None


def publish_event(url: str, event: ResultEvent | bytes, routing_key: str) -> None:
    """Publish a result event body to ``subswitch.events`` the way the worker does."""
    body = event if isinstance(event, bytes) else event.to_json()
    with Connection(url) as connection:
        Producer(connection).publish(
            body,
            exchange=EVENTS,
            routing_key=routing_key,
            declare=[EVENTS],
            content_type=EVENT_CONTENT_TYPE,
            content_encoding="utf-8",
        )


def event_for(command: AnyCommand, outcome: Outcome, **fields: Any) -> ResultEvent:
    """The result event a worker would publish for ``command``."""
    return result_event(
        command, outcome=outcome, attempts=1, completed_at=datetime.now(UTC), **fields
    )


@contextmanager
def fake_worker(
    url: str, lane: Lane, outcome: Outcome, **fields: Any
) -> Iterator[list[AnyCommand]]:
    """A thread that takes one command off ``lane`` and publishes its result event.

    Yields the list the command is appended to once handled.
    """
    handled: list[AnyCommand] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            command = receive(url, lane, timeout=15)[0].command
            publish_event(url, event_for(command, outcome, **fields), outcome.routing_key)
            handled.append(command)
        except BaseException as exc:  # reported by the main thread below
            failures.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield handled
    finally:
        thread.join(timeout=20)
    assert not failures, f"fake worker failed: {failures[0]!r}"


@contextmanager
def repeating_events(url: str, events: list[ResultEvent]) -> Iterator[None]:
    """Publish ``events`` round and round until the block ends.

    For a subscriber started in the same thread (the CLI under CliRunner), whose
    binding the test cannot wait for: whatever it binds to, it soon gets events.
    """
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            for event in events:
                publish_event(url, event, event.outcome.routing_key)
            stop.wait(0.05)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
