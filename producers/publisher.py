"""Publishers hand validated commands to the broker, one Celery task message each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from amqp.exceptions import AMQPError
from celery import Celery
from kombu.exceptions import KombuError
from kombu.pools import ProducerPool
from redis.exceptions import RedisError

from contract import APPLY_TASK, parse_command
from producers.commands import AnyCommand
from producers.errors import PublishError, redact_url, scrub
from subswitch.broker import celery_config
from subswitch.embedded import ensure_embedded_redis
from subswitch.settings import Settings

#: Bounded, so a send to an unreachable broker fails in seconds instead of hanging.
RETRY_POLICY: Final = {
    "max_retries": 3,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 1.0,
}
#: What a broker, its client libraries or the network raise when a publish fails.
BROKER_FAILURES: Final = (KombuError, AMQPError, RedisError, OSError)


class Publisher(Protocol):
    """Hands one validated command to a broker, or raises ``PublishError``."""

    def publish(self, command: AnyCommand) -> None:
        """Enqueue ``command`` on its lane; return once the broker has accepted it."""

    def close(self) -> None:
        """Release connections; the publisher is not used afterwards."""


def resolve_broker_url(settings: Settings) -> str:
    """The configured broker, or the embedded one (started if needed) when unset."""
    if settings.broker_url:
        return settings.broker_url
    return ensure_embedded_redis(settings.data_dir).broker_url


class CeleryPublisher:
    """Sends each command as a ``subswitch.apply`` Celery task on its lane's queue.

    One minimal Celery app per publisher, and a connection and producer pool of its
    own: connections stay open across sends and close with ``close()``. (Celery's
    ``app.pool`` is shared process-wide by broker URL and survives ``app.close()``, along
    with its memory of which queues it declared.) The lane queue is declared, once per
    connection, with the worker's own arguments, so a command sent before any worker
    ever ran is kept. On RabbitMQ ``publish`` returns once the broker confirmed it.
    """

    def __init__(
        self, *, broker_url: str, visibility_timeout: int = 300, queue_type: str = "quorum"
    ) -> None:
        self._broker_url = broker_url
        self._app = Celery("subswitch-producer", set_as_current=False)
        self._app.conf.update(
            celery_config(
                broker_url=broker_url,
                visibility_timeout=visibility_timeout,
                queue_type=queue_type,
            )
        )
        self._connections = self._app.connection_for_write().Pool(
            limit=self._app.conf.broker_pool_limit
        )
        self._producers = ProducerPool(self._connections)

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryPublisher:
        """A publisher for the configured (or embedded) broker."""
        return cls(
            broker_url=resolve_broker_url(settings),
            visibility_timeout=settings.visibility_timeout,
            queue_type=settings.rabbitmq_queue_type,
        )

    @property
    def app(self) -> Celery:
        """The Celery app that builds the task messages."""
        return self._app

    @property
    def producer_pool(self) -> ProducerPool:
        """The pool of producers (and their connections) the messages go through."""
        return self._producers

    def publish(self, command: AnyCommand) -> None:
        """Send ``command``; the Celery task id is its ``command_id``.

        Raises:
            PublishError: the broker did not take the message (one line, no secrets).
        """
        # The name resolves to the app's task_queues entry, which is the worker's own
        # declaration (subswitch.broker.lane_queue); Celery declares it once per connection.
        queue = command.lane.queue
        try:
            with self._producers.acquire(block=True) as producer:
                self._app.send_task(
                    APPLY_TASK,
                    args=[command.model_dump(mode="json")],
                    task_id=command.command_id,
                    queue=queue,
                    producer=producer,
                    retry=True,
                    retry_policy=RETRY_POLICY,
                )
        except BROKER_FAILURES as exc:
            raise PublishError(self._describe_failure(command, queue, exc)) from exc

    def close(self) -> None:
        """Close the pooled broker connections (those lent to pooled producers too)."""
        self._connections.force_close_all()
        self._app.close()

    def __repr__(self) -> str:
        return f"CeleryPublisher(broker_url={redact_url(self._broker_url)!r})"

    def _describe_failure(self, command: AnyCommand, queue: str, exc: BaseException) -> str:
        reason = scrub(str(exc) or type(exc).__name__, self._broker_url)
        return (
            f"could not enqueue command {command.command_id} on {queue} "
            f"at {redact_url(self._broker_url)}: {reason}"
        )


@dataclass
class InMemoryPublisher:
    """Test double: records ``(queue, command as JSON dict)``; set ``fail`` to refuse."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False
    closed: bool = False

    def publish(self, command: AnyCommand) -> None:
        """Record ``command`` on its lane's queue, or raise PublishError if told to fail."""
        if self.fail:
            raise PublishError(f"could not enqueue command {command.command_id}: told to fail")
        self.sent.append((command.lane.queue, command.model_dump(mode="json")))

    def close(self) -> None:
        """Mark the publisher closed."""
        self.closed = True

    @property
    def commands(self) -> list[AnyCommand]:
        """The recorded commands, parsed back as the worker would."""
        return [parse_command(body) for _, body in self.sent]
