"""Broker topology and Celery settings shared by producers and workers.

Both sides must declare queues with identical arguments (RabbitMQ refuses a
re-declaration that differs), so the topology lives here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from amqp.exceptions import AMQPError
from kombu import Connection, Exchange, Queue
from kombu.exceptions import KombuError
from kombu.transport.base import StdChannel
from redis.exceptions import RedisError

from subswitch.contract import ARCHIVE_QUEUE, DEAD_LETTER_QUEUE, EVENTS_EXCHANGE, Lane
from subswitch.errors import ConfigurationError
from subswitch.urls import BROKER_VARIABLE, is_sentinel_url, parse_sentinel_url

#: One topic exchange for every lane. Topic, not direct, because Celery's native
#: delayed delivery on RabbitMQ quorum queues (used by retries) needs topic exchanges.
COMMANDS_EXCHANGE = Exchange("subswitch.commands", type="topic", durable=True)
EVENTS = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
DEAD_LETTER = Exchange(DEAD_LETTER_QUEUE, type="direct", durable=True)

#: The routing key of every result event (``command.<outcome>``).
ALL_EVENTS_KEY: Final = "command.#"

#: What a broker, its client libraries or the network raise when an operation fails;
#: the publisher, the event stream and the worker's sinks map these to ``BrokerError``.
BROKER_FAILURES: Final = (KombuError, AMQPError, RedisError, OSError)


@dataclass(frozen=True)
class KombuBroker:
    """What kombu is given for a ``SUBSWITCH_BROKER_URL``: its own URL and transport
    options (for ``redis+sentinel://``: kombu's ``sentinel://`` URLs, one per Sentinel,
    and the master's name)."""

    url: str
    transport_options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"KombuBroker(transport_options={self.transport_options!r})"


def kombu_broker(broker_url: str) -> KombuBroker:
    """The URL and transport options kombu connects to ``broker_url`` with.

    Raises:
        ConfigurationError: a malformed ``redis+sentinel://`` URL.
    """
    if not is_sentinel_url(broker_url):
        return KombuBroker(broker_url)
    parsed = parse_sentinel_url(broker_url, variable=BROKER_VARIABLE)
    auth = ""
    if parsed.username or parsed.password:
        auth = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password or '', safe='')}@"
    hosts = [f"[{host}]" if ":" in host else host for host, _ in parsed.sentinels]
    urls = [
        f"sentinel://{auth}{host}:{port}/{parsed.db}"
        for host, (_, port) in zip(hosts, parsed.sentinels, strict=True)
    ]
    return KombuBroker(";".join(urls), {"master_name": parsed.master})


def broker_connection(
    broker_url: str, *, transport_options: Mapping[str, Any] | None = None, **options: Any
) -> Connection:
    """A kombu connection (not yet connected) to the broker at ``broker_url``, whatever
    its form (``redis+sentinel://`` included), with the caller's ``transport_options``
    beside those the URL needs."""
    broker = kombu_broker(broker_url)
    merged = {**(transport_options or {}), **broker.transport_options}
    return Connection(broker.url, transport_options=merged, **options)


def check_broker_url(broker_url: str) -> str:
    """``broker_url`` if kombu has a transport for it, else a one-line
    :class:`ConfigurationError` naming ``SUBSWITCH_BROKER_URL`` (never the URL itself:
    it may hold a password)."""
    try:
        broker_connection(broker_url)  # resolves the transport class; connects to nothing
    except ConfigurationError:
        raise
    except (KeyError, ValueError):
        scheme = broker_url.partition("://")[0]
        raise ConfigurationError(
            f"unknown broker scheme {scheme!r}; use redis://, rediss://, redis+sentinel://, "
            "amqp:// or amqps://",
            variable="SUBSWITCH_BROKER_URL",
        ) from None
    return broker_url


def is_amqp(broker_url: str) -> bool:
    """Whether the URL names a RabbitMQ (AMQP 0.9.1) broker."""
    return broker_url.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}


def _queue_arguments(broker_url: str, queue_type: str) -> dict[str, Any] | None:
    return {"x-queue-type": queue_type} if is_amqp(broker_url) else None


def _lane_arguments(broker_url: str, queue_type: str, delivery_limit: int) -> dict[str, Any] | None:
    arguments = _queue_arguments(broker_url, queue_type)
    if arguments is None:
        return None
    # What RabbitMQ dead-letters (over the delivery limit, or rejected without requeue)
    # goes to subswitch.dead, never into the void.
    arguments["x-dead-letter-exchange"] = DEAD_LETTER.name
    arguments["x-dead-letter-routing-key"] = DEAD_LETTER_QUEUE
    if queue_type == "quorum":
        # The broker's safety net, one delivery behind the worker's own check
        # (worker/deliveries.py), which dead-letters with a reason and an event.
        arguments["x-delivery-limit"] = delivery_limit
    return arguments


class LaneQueue(Queue):
    """A lane's queue. Declaring it declares ``subswitch.dead`` first: RabbitMQ drops
    what it dead-letters into an exchange or a queue that does not exist, and a
    producer may declare a lane long before any worker declares the dead letters."""

    def declare(self, nowait: bool = False, channel: StdChannel | None = None) -> str | None:
        """Declare ``subswitch.dead`` (if this queue dead-letters), then this queue."""
        arguments = self.queue_arguments or {}
        if "x-dead-letter-exchange" in arguments:
            dead = Queue(
                DEAD_LETTER_QUEUE,
                DEAD_LETTER,
                routing_key=DEAD_LETTER_QUEUE,
                durable=True,
                queue_arguments={"x-queue-type": arguments["x-queue-type"]},
            )
            dead(channel or self.channel).declare(nowait=nowait)
        return super().declare(nowait=nowait, channel=channel)


def lane_queue(
    lane: Lane,
    *,
    broker_url: str,
    queue_type: str,
    delivery_limit: int,
) -> Queue:
    """The durable queue of one lane, routed by its own name.

    On RabbitMQ it dead-letters into ``subswitch.dead`` and, as a quorum queue, after
    ``delivery_limit`` returns of a message. Producers and workers must declare it
    with the same arguments (RabbitMQ refuses another declaration).
    """
    return LaneQueue(
        lane.queue,
        COMMANDS_EXCHANGE,
        routing_key=lane.queue,
        durable=True,
        queue_arguments=_lane_arguments(broker_url, queue_type, delivery_limit),
    )


def lane_queues(*, broker_url: str, queue_type: str, delivery_limit: int) -> list[Queue]:
    """Every lane's queue, urgent first."""
    return [
        lane_queue(
            lane, broker_url=broker_url, queue_type=queue_type, delivery_limit=delivery_limit
        )
        for lane in Lane
    ]


def dead_letter_queue(*, broker_url: str, queue_type: str) -> Queue:
    """Where undecodable, invalid or unauthorised messages are kept with their reason."""
    return Queue(
        DEAD_LETTER_QUEUE,
        DEAD_LETTER,
        routing_key=DEAD_LETTER_QUEUE,
        durable=True,
        queue_arguments=_queue_arguments(broker_url, queue_type),
    )


def archive_queue(*, broker_url: str, queue_type: str) -> Queue:
    """The audit archive's durable queue, bound to every result event: what is
    published while the archive is down waits there for it."""
    return Queue(
        ARCHIVE_QUEUE,
        EVENTS,
        routing_key=ALL_EVENTS_KEY,
        durable=True,
        queue_arguments=_queue_arguments(broker_url, queue_type),
    )


def celery_config(
    *,
    broker_url: str,
    visibility_timeout: int,
    queue_type: str,
    delivery_limit: int,
) -> dict[str, Any]:
    """Celery settings both sides agree on: JSON only, topology, delivery safety.

    Raises:
        ConfigurationError: kombu knows no transport for ``broker_url``.
    """
    check_broker_url(broker_url)
    broker = kombu_broker(broker_url)
    return {
        "broker_url": broker.url,
        # JSON only: pickle on a shared broker lets any producer run code in workers.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "task_queues": lane_queues(
            broker_url=broker_url, queue_type=queue_type, delivery_limit=delivery_limit
        ),
        "task_default_queue": Lane.NORMAL.queue,
        "task_default_exchange": COMMANDS_EXCHANGE.name,
        "task_default_exchange_type": COMMANDS_EXCHANGE.type,
        "task_default_routing_key": Lane.NORMAL.queue,
        # An unknown queue name is a bug; never create a queue nobody consumes.
        "task_create_missing_queues": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Redis: an unacked message is handed to another worker after this many
            # seconds. Every retry delay and task time limit stays well below it.
            "visibility_timeout": visibility_timeout,
            # ...and kombu looks for such messages only every interval x throttle
            # seconds (100 s by default): look often enough that a killed worker's
            # commands come back soon after the window closes.
            "unacked_restore_interval": max(1, min(10, visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
            # RabbitMQ: wait for the broker's confirm, so a publish that returns was
            # accepted (a memory or disk alarm otherwise loses it silently, #5410).
            "confirm_publish": True,
            # Sentinel: the name of the master to ask the Sentinels for.
            **broker.transport_options,
        },
    }
