"""A Celery consumer that dead-letters what it cannot run instead of dropping it.

Celery's own consumer logs and acks (or rejects) a message it cannot decode, a
message for an unknown task and a malformed task message: on most brokers that
loses it silently. Here each goes to ``subswitch.dead`` with its reason, and is
reported as ``rejected`` (with the command id when the message carries one).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from celery.worker.consumer import Consumer
from kombu.message import Message

from subswitch.contract import readable_command_id
from worker.executor import Executor

logger = logging.getLogger(__name__)


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, with its four give-up paths turned into dead letters.

    Celery instantiates the consumer itself; :func:`bound_consumer` makes the subclass
    that knows where this process's executor comes from.
    """

    #: This process's executor (raises while the runtime is not built).
    executor: ClassVar[Callable[[], Executor]]

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

    def _dead_letter(self, message: Message, reason: str) -> None:
        command_id = readable_command_id((message.headers or {}).get("id"))
        try:
            type(self).executor().reject_message(
                _raw_body(message), reason=reason, command_id=command_id, token=uuid.uuid4().hex
            )
        except Exception:
            # Keep the message rather than lose it; it comes back once the store
            # and broker answer again.
            logger.exception("could not dead-letter a message; requeueing it")
            message.reject(requeue=True)
            return
        message.ack()


def bound_consumer(executor: Callable[[], Executor]) -> type[DeadLetteringConsumer]:
    """A :class:`DeadLetteringConsumer` that takes its executor from ``executor``."""
    return type(
        "DeadLetteringConsumer", (DeadLetteringConsumer,), {"executor": staticmethod(executor)}
    )


def _raw_body(message: Message) -> bytes:
    body = message.body
    return body if isinstance(body, bytes) else str(body).encode()
