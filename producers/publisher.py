"""Publishers hand validated commands to the broker: one Celery task message per
command, or, on the bulk lane, one message per chunk of commands."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from celery import Celery
from kombu.pools import ProducerPool
from kombu.utils.json import dumps

from producers.errors import MessageTooLargeError, PublishError, redact_url, scrub
from subswitch.broker import BROKER_FAILURES, celery_config
from subswitch.contract import APPLY_BATCH_TASK, APPLY_TASK, AnyCommand, Lane, parse_command
from subswitch.settings import Settings
from subswitch.signing import (
    CHUNK_SIGNATURE_HEADER,
    SIGNATURE_FIELD,
    Signature,
    Signer,
    detach_signature,
    message_body,
    producer_signer,
)
from subswitch.urls import resolve_broker_url

#: The publisher's defaults are the settings' own (one source for each).
_DEFAULTS: Final = {name: field.default for name, field in Settings.model_fields.items()}

#: Bounded, so a send to an unreachable broker fails in seconds instead of hanging.
RETRY_POLICY: Final = {
    "max_retries": 3,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 1.0,
}
# What Celery adds around the arguments in a task message's body (protocol 2).
_BODY_EMBED: Final = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# Slack for the difference between this estimate and Celery's own serialisation.
_SIZE_MARGIN_BYTES: Final = 256
# The largest command's JSON (every field at its maximum, the reason in characters
# JSON escapes to 12 bytes) is 3,755 bytes: below this many commands per message, the
# size needs no measuring.
_MAX_COMMAND_JSON_BYTES: Final = 4096
# Fixed namespace: the same chunk gets the same task id in every process and re-run.
_CHUNK_ID_NAMESPACE: Final = uuid.UUID("2b0d9c64-5a1e-4f0b-8c53-0f6f4e1d7a39")


class Publisher(Protocol):
    """Hands one validated command to a broker, or raises ``PublishError``."""

    def publish(self, command: AnyCommand, *, signature: Signature | None = None) -> None:
        """Enqueue ``command`` on its lane; return once the broker has accepted it.

        ``signature`` travels with it; without one, a publisher that has a signer signs.
        """

    def close(self) -> None:
        """Release connections; the publisher is not used afterwards."""


class BatchPublisher(Protocol):
    """Hands chunks of bulk commands to a broker, one message each, or raises
    ``PublishError``."""

    def publish_batch(self, commands: Sequence[AnyCommand]) -> None:
        """Enqueue ``commands`` as one message on the bulk lane; return once accepted."""

    def close(self) -> None:
        """Release connections; the publisher is not used afterwards."""


def chunk_task_id(commands: Sequence[AnyCommand]) -> str:
    """The task id of a chunk: a UUID derived from its command ids, so a re-sent
    chunk keeps its id."""
    return str(uuid.uuid5(_CHUNK_ID_NAMESPACE, "\n".join(c.command_id for c in commands)))


def _bulk_chunk(commands: Sequence[AnyCommand], signer: Signer | None) -> list[dict[str, Any]]:
    """The task argument of a chunk: the commands as JSON dicts (each signed when there
    is a ``signer``), in order.

    Raises:
        ValueError: the chunk is empty, or holds a command of another lane (it would
            travel behind the bulk backlog, against its priority).
    """
    if not commands:
        raise ValueError("a chunk holds at least one command")
    strays = [c.command_id for c in commands if c.lane is not Lane.BULK]
    if strays:
        raise ValueError(f"only bulk commands travel in chunks, not {', '.join(strays[:3])}")
    return [message_body(command, signer) for command in commands]


def _single_body(
    command: AnyCommand, signature: Signature | None, signer: Signer | None
) -> dict[str, Any]:
    if signature is None:
        return message_body(command, signer)
    return {**command.model_dump(mode="json"), SIGNATURE_FIELD: signature.model_dump()}


def check_message_size(argument: Any, *, commands: int, limit: int, what: str) -> None:
    """Refuse a task message of ``commands`` commands whose body would exceed ``limit``
    bytes (workers would dead-letter it unread).

    Raises:
        MessageTooLargeError: one line naming the size, the limit and the setting.
    """
    if commands * _MAX_COMMAND_JSON_BYTES + _SIZE_MARGIN_BYTES <= limit:
        return  # cannot be too large: spare serialising it twice
    size = len(dumps(([argument], {}, _BODY_EMBED)).encode()) + _SIZE_MARGIN_BYTES
    if size > limit:
        raise MessageTooLargeError(
            f"{what} would be a message of about {size:,} bytes, over the "
            f"{limit:,} of SUBSWITCH_MAX_MESSAGE_BYTES; nothing enqueued"
        )


class CeleryPublisher:
    """Sends each command as a ``subswitch.apply`` Celery task on its lane's queue.

    One minimal Celery app per publisher, and a connection and producer pool of its
    own: connections stay open across sends and close with ``close()``. (Celery's
    ``app.pool`` is shared process-wide by broker URL and survives ``app.close()``, along
    with its memory of which queues it declared.) The lane queue is declared, once per
    connection, with the worker's own arguments, so a command sent before any worker
    ever ran is kept. On RabbitMQ ``publish`` returns once the broker confirmed it.

    With a ``signer`` every command goes out signed (``subswitch.signing``), in a chunk
    too; without one, unsigned (a worker with a policy rejects it).
    """

    def __init__(
        self,
        *,
        broker_url: str,
        visibility_timeout: int,
        queue_type: str,
        delivery_limit: int = _DEFAULTS["delivery_limit"],
        max_message_bytes: int = _DEFAULTS["max_message_bytes"],
        signer: Signer | None = None,
        task_events: bool = _DEFAULTS["task_events"],
    ) -> None:
        self._broker_url = broker_url
        self._signer = signer
        self._max_message_bytes = max_message_bytes
        self._app = Celery("subswitch-producer", set_as_current=False)
        self._app.conf.update(
            celery_config(
                broker_url=broker_url,
                visibility_timeout=visibility_timeout,
                queue_type=queue_type,
                delivery_limit=delivery_limit,
            )
        )
        # A "task-sent" event per send, for Flower (it needs write on celeryev).
        self._app.conf.task_send_sent_event = task_events
        self._connections = self._app.connection_for_write().Pool(
            limit=self._app.conf.broker_pool_limit
        )
        self._producers = ProducerPool(self._connections)

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryPublisher:
        """A publisher for the configured (or embedded) broker, signing with
        ``SUBSWITCH_PRODUCER_KEY_FILE`` when it is set."""
        return cls(
            broker_url=resolve_broker_url(settings),
            visibility_timeout=settings.visibility_timeout,
            queue_type=settings.rabbitmq_queue_type,
            delivery_limit=settings.delivery_limit,
            max_message_bytes=settings.max_message_bytes,
            signer=producer_signer(settings),
            task_events=settings.task_events,
        )

    @property
    def signer(self) -> Signer | None:
        """The key commands are signed with, if any."""
        return self._signer

    @property
    def app(self) -> Celery:
        """The Celery app that builds the task messages."""
        return self._app

    @property
    def producer_pool(self) -> ProducerPool:
        """The pool of producers (and their connections) the messages go through."""
        return self._producers

    def publish(self, command: AnyCommand, *, signature: Signature | None = None) -> None:
        """Send ``command``; the Celery task id is its ``command_id``.

        ``signature`` travels with it; without one the publisher's signer (if any) signs.

        Raises:
            MessageTooLargeError: over ``max_message_bytes`` (nothing sent).
            PublishError: the broker did not take the message (one line, no secrets).
        """
        queue = command.lane.queue
        body = _single_body(command, signature, self._signer)
        what = f"command {command.command_id}"
        check_message_size(body, commands=1, limit=self._max_message_bytes, what=what)
        try:
            self._send(APPLY_TASK, body, command.command_id, queue)
        except BROKER_FAILURES as exc:
            raise PublishError(self._describe_failure(what, queue, exc)) from exc

    def publish_batch(self, commands: Sequence[AnyCommand]) -> None:
        """Send bulk ``commands`` as one ``subswitch.apply_batch`` task on the bulk lane.

        The task's one argument is the list of commands; the worker applies each with
        its own idempotency key, ordering, retries and result event. The task id is
        ``chunk_task_id(commands)``.

        Raises:
            ValueError: empty, or a command is not of the bulk lane (nothing sent).
            MessageTooLargeError: over ``max_message_bytes`` (nothing sent).
            PublishError: the broker did not take the message (one line, no secrets).
        """
        body = _bulk_chunk(commands, self._signer)
        what = f"a chunk of {len(commands)} commands ({commands[0].command_id}...)"
        limit = self._max_message_bytes
        check_message_size(body, commands=len(commands), limit=limit, what=what)
        queue = Lane.BULK.queue
        # A summary instead of Celery's repr of the arguments (what Flower and `celery
        # inspect` show): as useful, and the repr of a big chunk costs more than the rest
        # of the message.
        first, last = commands[0].command_id, commands[-1].command_id
        summary = f"[<{len(body)} commands: {first} .. {last}>]"
        # One signature over the chunk spares the worker verifying each command's own.
        headers = (
            {CHUNK_SIGNATURE_HEADER: self._signer.sign_chunk(commands)} if self._signer else None
        )
        task_id = chunk_task_id(commands)
        try:
            self._send(APPLY_BATCH_TASK, body, task_id, queue, argsrepr=summary, headers=headers)
        except BROKER_FAILURES as exc:
            raise PublishError(self._describe_failure(what, queue, exc)) from exc

    def close(self) -> None:
        """Close the pooled broker connections (those lent to pooled producers too)."""
        self._connections.force_close_all()
        self._app.close()

    def __repr__(self) -> str:
        return f"CeleryPublisher(broker_url={redact_url(self._broker_url)!r})"

    def _send(
        self,
        task: str,
        argument: Any,
        task_id: str,
        queue: str,
        *,
        argsrepr: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        # The queue name resolves to the app's task_queues entry, which is the worker's
        # own declaration (subswitch.broker.lane_queue); Celery declares it once per
        # connection.
        with self._producers.acquire(block=True) as producer:
            self._app.send_task(
                task,
                args=[argument],
                task_id=task_id,
                queue=queue,
                producer=producer,
                retry=True,
                retry_policy=RETRY_POLICY,
                argsrepr=argsrepr,
                headers=headers,
            )

    def _describe_failure(self, what: str, queue: str, exc: BaseException) -> str:
        reason = scrub(str(exc) or type(exc).__name__, self._broker_url)
        return f"could not enqueue {what} on {queue} at {redact_url(self._broker_url)}: {reason}"


@dataclass(frozen=True)
class SentChunk:
    """A chunk ``InMemoryPublisher`` recorded: queue, task id, commands as JSON dicts,
    and the chunk's signature header (with a signer)."""

    queue: str
    task_id: str
    commands: list[dict[str, Any]]
    signature: str | None = None


@dataclass
class InMemoryPublisher:
    """Test double: records ``(queue, command as JSON dict)`` per command and a
    ``SentChunk`` per chunk; set ``fail`` to refuse, or ``fail_after`` to refuse every
    chunk after that many."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    chunks: list[SentChunk] = field(default_factory=list)
    fail: bool = False
    fail_after: int | None = None
    closed: bool = False
    max_message_bytes: int = _DEFAULTS["max_message_bytes"]
    signer: Signer | None = None

    def publish(self, command: AnyCommand, *, signature: Signature | None = None) -> None:
        """Record ``command`` on its lane's queue, or raise PublishError if told to fail."""
        body = _single_body(command, signature, self.signer)
        what = f"command {command.command_id}"
        check_message_size(body, commands=1, limit=self.max_message_bytes, what=what)
        if self.fail:
            raise PublishError(f"could not enqueue command {command.command_id}: told to fail")
        self.sent.append((command.lane.queue, body))

    def publish_batch(self, commands: Sequence[AnyCommand]) -> None:
        """Record a chunk as ``CeleryPublisher`` would send it, or raise PublishError."""
        body = _bulk_chunk(commands, self.signer)
        what = f"a chunk of {len(commands)} commands"
        check_message_size(body, commands=len(commands), limit=self.max_message_bytes, what=what)
        if self.fail or (self.fail_after is not None and len(self.chunks) >= self.fail_after):
            raise PublishError(f"could not enqueue {len(commands)} commands: told to fail")
        header = self.signer.sign_chunk(commands) if self.signer else None
        self.chunks.append(SentChunk(Lane.BULK.queue, chunk_task_id(commands), body, header))

    def close(self) -> None:
        """Mark the publisher closed."""
        self.closed = True

    @property
    def commands(self) -> list[AnyCommand]:
        """The recorded single commands, parsed back as the worker would."""
        return [parse_command(detach_signature(body)[0]) for _, body in self.sent]

    @property
    def chunked_commands(self) -> list[AnyCommand]:
        """The commands of every recorded chunk, in order, parsed back as the worker would."""
        return [
            parse_command(detach_signature(body)[0])
            for chunk in self.chunks
            for body in chunk.commands
        ]
