"""Deliveries that go wrong: messages that kill their worker, dead letters that repeat.

A message whose delivery kills the worker process (a crash, an OOM kill) comes back
and kills the next one. RabbitMQ quorum queues count such returns in the
``x-delivery-count`` header; on Redis nobody does, so :class:`DeliveryCounter` counts
in the store: +1 when a delivery starts, deleted when it finishes, so only the
deliveries that died are left counted. A message over the limit is dead-lettered
with its reason and a ``rejected`` event, one delivery before RabbitMQ's own
``x-delivery-limit`` would dead-letter it without either.

:class:`DeadLetterOnce` keeps a dead letter from being published twice when the
delivery that published it could not finish (the store went away before the
``rejected`` event was recorded, so the message comes back).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from subswitch.text import safe_line
from worker import keys
from worker.executor import DeadLetterSink
from worker.store import StoreError

logger = logging.getLogger(__name__)

#: The header RabbitMQ quorum queues set: how often the message was returned before.
DELIVERY_COUNT_HEADER = "x-delivery-count"


@dataclass(frozen=True)
class Delivery:
    """One delivery of a task message, as far as counting it goes.

    ``returned`` is the broker's count of earlier returns (RabbitMQ quorum queues),
    ``tag`` the id a Redis-broker message keeps across redeliveries; either or
    neither is known.
    """

    returned: int | None = None
    tag: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, Any], properties: Mapping[str, Any]) -> Delivery:
        """The delivery of a message with these headers and properties."""
        returned = headers.get(DELIVERY_COUNT_HEADER)
        if isinstance(returned, int):
            return cls(returned=returned)
        tag = properties.get("delivery_tag")
        # kombu's virtual transports (Redis) use a UUID kept across restores; AMQP's
        # integer tags are per channel and say nothing about earlier deliveries.
        return cls(tag=tag if isinstance(tag, str) else None)


class DeliveryCounter:
    """Counts the deliveries of a message that started but never finished."""

    def __init__(
        self, *, client: redis.Redis, limit: int, ttl_s: int = keys.DELIVERY_COUNT_TTL_S
    ) -> None:
        self._redis = client
        self.limit = limit
        self._ttl_s = ttl_s

    def begin(self, delivery: Delivery) -> int:
        """Count this delivery as started; how many earlier ones never finished.

        Raises:
            StoreError: the store did not answer (nothing was counted).
        """
        if delivery.returned is not None:
            return delivery.returned
        if delivery.tag is None:
            return 0
        key = keys.deliveries(delivery.tag)
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, self._ttl_s)
            started, _ = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"store unavailable: {exc}") from exc
        return int(started) - 1

    def end(self, delivery: Delivery) -> None:
        """This delivery finished (acked, retried or requeued): it did not die."""
        if delivery.tag is None:
            return
        try:
            self._redis.delete(keys.deliveries(delivery.tag))
        except redis.RedisError as exc:
            # Harmless: an acked message's count is never read again, and a requeued
            # one counts this delivery as died, one step nearer a dead letter.
            logger.warning("could not clear a delivery count: %s", safe_line(str(exc)))

    def exceeded(self, died: int) -> bool:
        """Whether a message whose earlier deliveries died ``died`` times must stop."""
        return died >= self.limit

    def reason(self, died: int) -> str:
        """The dead-letter reason of a message over the limit."""
        return (
            f"delivered {died + 1} times: the {died} earlier deliveries never finished "
            f"(the worker died or lost the message each time; SUBSWITCH_DELIVERY_LIMIT="
            f"{self.limit}); not run again"
        )


class DeadLetterOnce:
    """A dead-letter sink that publishes each message (command id and body) once.

    The store is asked first, so with the store down nothing is published and the
    caller backs off; the mark is set only after the broker took the dead letter, so
    a failed publish is tried again.
    """

    def __init__(self, *, inner: DeadLetterSink, client: redis.Redis, retention_s: int) -> None:
        self._inner = inner
        self._redis = client
        self._retention_s = retention_s

    def dead_letter(self, body: bytes, *, reason: str, headers: Mapping[str, Any]) -> None:
        """Publish ``body`` to the inner sink unless it is there already.

        Raises:
            StoreError: the store did not answer (nothing was published).
        """
        key = keys.dead_lettered(_digest(body, headers.get("command_id")))
        try:
            if self._redis.exists(key):
                logger.info("message already dead-lettered; not keeping a second copy")
                return
            self._inner.dead_letter(body, reason=reason, headers=headers)
            self._redis.set(key, 1, ex=self._retention_s)
        except redis.RedisError as exc:
            raise StoreError(f"store unavailable: {exc}") from exc


def _digest(body: bytes, command_id: Any) -> str:
    return hashlib.sha256(f"{command_id or ''}\n".encode() + body).hexdigest()
