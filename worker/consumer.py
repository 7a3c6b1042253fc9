"""A Celery consumer that dead-letters what it cannot run instead of dropping it.

Celery's own consumer logs and acks (or rejects) a message it cannot decode, a
message for an unknown task and a malformed task message: on most brokers that
loses it silently. Here each goes to ``subswitch.dead`` with its reason, and is
reported as ``rejected`` (with the command id when the message carries one). So does
a message over ``SUBSWITCH_MAX_MESSAGE_BYTES``, before anything parses it.

When dead-lettering fails (the store or the broker is away), it is tried again here
after a growing delay, the message held meanwhile: nothing goes back to the queue at
once (RabbitMQ would count every return towards its delivery limit and drop the
message into subswitch.dead without its event). Only a message held for half the
visibility timeout goes back, for another worker to try. The dead-letter sink
publishes each message once (``worker.deliveries.DeadLetterOnce``): no retry, here or
elsewhere, adds a copy.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from celery.worker.consumer import Consumer
from kombu.message import Message

from subswitch.contract import readable_command_id
from subswitch.errors import TransientError
from subswitch.text import safe_line
from worker.executor import Executor

logger = logging.getLogger(__name__)

#: Delays between tries after failed dead-lettering: from 1 s, doubling, capped below.
REQUEUE_BASE_S = 1.0
REQUEUE_MAX_S = 30.0


class RequeueBackoff:
    """Growing, jittered delays while dead-lettering keeps failing; reset on success.

    One per consumer: a failure here means the store or the broker is away, which
    holds for every message alike.
    """

    def __init__(self, *, base_s: float = REQUEUE_BASE_S, max_s: float = REQUEUE_MAX_S) -> None:
        self._base_s = base_s
        self._max_s = max_s
        self._failures = 0

    def next_delay(self) -> float:
        """The delay before requeueing after one more failure."""
        ceiling = min(self._max_s, self._base_s * 2 ** min(self._failures, 16))
        self._failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def succeeded(self) -> None:
        """Dead-lettering works again: start from the base delay next time."""
        self._failures = 0


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, with its four give-up paths turned into dead letters.

    Celery instantiates the consumer itself; :func:`bound_consumer` makes the subclass
    that knows where this process's executor comes from, and its limits.
    """

    #: This process's executor (raises while the runtime is not built).
    executor: ClassVar[Callable[[], Executor]]
    #: ``SUBSWITCH_MAX_MESSAGE_BYTES``: a larger message is dead-lettered unread.
    max_message_bytes: ClassVar[int]
    #: ``SUBSWITCH_VISIBILITY_TIMEOUT``: how long a message may be held here.
    visibility_timeout_s: ClassVar[float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_message_bytes = self.max_message_bytes
        # A message held longer than the visibility timeout would be handed to another
        # worker on Redis meanwhile: stay well inside it.
        cap = min(REQUEUE_MAX_S, self.visibility_timeout_s / 4)
        self._backoff = RequeueBackoff(base_s=min(REQUEUE_BASE_S, cap), max_s=cap)
        self._max_hold_s = self.visibility_timeout_s / 2

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Message], None]:
        """Celery's task handler, behind a size check that reads no body."""
        handler = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Message) -> None:
            size = len(message.body or b"")
            if size > self._max_message_bytes:
                self._dead_letter(message, self._too_large(size))
                return
            handler(message)

        return on_task_received

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """The body could not be decoded (not JSON, pickle, unknown content type)."""
        self._dead_letter(message, f"undecodable message ({message.content_type}): {exc}")

    def on_unknown_message(self, body: Any, message: Message) -> None:
        """Not a Celery task message."""
        self._dead_letter(message, "not a task message")

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        """A task name this worker does not run."""
        name = (message.headers or {}).get("task", "?")
        self._dead_letter(message, f"unknown task {name!r}")

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        """A task message Celery cannot parse."""
        self._dead_letter(message, f"invalid task message: {exc}")

    def _too_large(self, size: int) -> str:
        return (
            f"message of {size:,} bytes is over SUBSWITCH_MAX_MESSAGE_BYTES "
            f"({self._max_message_bytes:,}); not read"
        )

    def _dead_letter(self, message: Message, reason: str, since: float | None = None) -> None:
        command_id = readable_command_id((message.headers or {}).get("id"))
        try:
            type(self).executor().reject_message(
                _raw_body(message),
                reason=safe_line(reason),
                command_id=command_id,
                token=uuid.uuid4().hex,
            )
        except TransientError as exc:  # the store or the broker is away: one line
            logger.warning("could not dead-letter a message: %s", exc)
            self._later(message, reason, time.monotonic() if since is None else since)
            return
        except Exception:  # a bug: with its traceback, and the message kept all the same
            logger.exception("could not dead-letter a message")
            self._later(message, reason, time.monotonic() if since is None else since)
            return
        self._backoff.succeeded()
        message.ack()

    def _later(self, message: Message, reason: str, since: float) -> None:
        """Try again after the next delay, or hand the message back if held too long."""
        delay = self._backoff.next_delay()
        if time.monotonic() - since + delay > self._max_hold_s:
            logger.warning("dead-lettering failed; requeueing the message in %.1fs", delay)
            self.timer.call_after(delay, _requeue, (message,))
        else:
            logger.warning("dead-lettering failed; trying again in %.1fs", delay)
            self.timer.call_after(delay, self._dead_letter, (message, reason, since))


def _requeue(message: Message) -> None:
    try:
        message.reject(requeue=True)
    except Exception:
        # The connection is gone: the broker returns the unacked message by itself.
        logger.exception("could not requeue a message")


def bound_consumer(
    executor: Callable[[], Executor], *, max_message_bytes: int, visibility_timeout_s: float
) -> type[DeadLetteringConsumer]:
    """A :class:`DeadLetteringConsumer` that takes its executor from ``executor``."""
    return type(
        "DeadLetteringConsumer",
        (DeadLetteringConsumer,),
        {
            "executor": staticmethod(executor),
            "max_message_bytes": max_message_bytes,
            "visibility_timeout_s": visibility_timeout_s,
        },
    )


def _raw_body(message: Message) -> bytes:
    body = message.body
    return body if isinstance(body, bytes) else str(body).encode()
