"""Deliveries that go wrong: messages that kill their worker, dead letters that repeat.

A message whose delivery kills the worker process (a crash, an OOM kill) comes back
and kills the next one. RabbitMQ flags such a message redelivered (and quorum queues
count its returns, up to ``x-delivery-limit``); on Redis nobody does, so
:class:`DeliveryCounter` counts in the store: +1 when a delivery starts, deleted when
it finishes, so only the deliveries that died are left counted. The count begins in a
round trip of its own, before the message is parsed or its signature verified (a
message that kills its worker there is counted too); a delivery that publishes its
event ends it with its published mark, in the same call (``Store.mark_published``). A task whose
deliveries died ``SUBSWITCH_DELIVERY_LIMIT`` times in a row is dead-lettered with its
reason and a ``rejected`` event, no later than one delivery before RabbitMQ's own
``x-delivery-limit`` would dead-letter the message without either.

:class:`DeadLetterOnce` keeps a dead letter from being published twice when the
delivery that published it could not finish (the store went away before the
``rejected`` event was recorded, so the message comes back).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from subswitch import keys
from subswitch.errors import StoreError
from subswitch.text import safe_line
from worker.executor import DeadLetterSink
from worker.store import LuaScripts

logger = logging.getLogger(__name__)

# KEYS: the deaths of the task, then (Redis broker) the message's own count.
# ARGV: ttl_s, redelivered (0/1; the broker's flag, RabbitMQ). Returns the task's
# deaths in a row if this delivery's predecessor died, else 0.
_BEGIN_LUA: Final = """
local died = ARGV[2] == '1'
if KEYS[2] then
  local started = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
  died = started > 1
end
if not died then return 0 end
local deaths = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return deaths
"""
# KEYS: whatever the finished delivery leaves behind.
_END_LUA: Final = "return redis.call('DEL', unpack(KEYS))"
# KEYS: the dead-letter mark. ARGV: retention_s (0: only read it).
_MARK_LUA: Final = """
if ARGV[1] == '0' then return redis.call('EXISTS', KEYS[1]) end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """One delivery of a task message, as far as counting it goes.

    ``task_id`` names the task across its retries (a retry is a new message with the
    same id). On RabbitMQ, ``redelivered`` is the broker's flag: this message was
    delivered before and never acknowledged. On Redis, ``tag`` is the id its message
    keeps across redeliveries (kombu's virtual transports set no flag).
    """

    task_id: str | None
    redelivered: bool | None = None
    tag: str | None = None

    @classmethod
    def of(cls, request: Mapping[str, Any]) -> Delivery:
        """The delivery a Celery task request (its ``vars()``) describes."""
        task_id = request.get("id")
        task_id = task_id if isinstance(task_id, str) else None
        tag = (request.get("properties") or {}).get("delivery_tag")
        if isinstance(tag, str):  # a UUID: Redis (AMQP's tags are per-channel integers)
            return cls(task_id, tag=tag)
        # Not the x-delivery-count header: Celery copies a message's headers into its
        # retries, so a retry would look returned; the protocol flag is the broker's own.
        redelivered = (request.get("delivery_info") or {}).get("redelivered")
        return cls(task_id, redelivered=bool(redelivered))


class DeliveryCounter:
    """Counts, per task, the deliveries in a row that died before they finished.

    A delivery that follows a death is recognised by the broker's redelivered flag, or
    on Redis by its message's own count (+1 at start, deleted at the end: still there
    at the next start only if the delivery before died). Each such delivery adds one
    death to its task: retries are new messages, so only the task id links a poison
    command's deliveries together (a delivery that finds its target locked by the
    one that died is retried, and dies again later). A live duplicate running
    alongside is never counted: it is no redelivery.
    """

    def __init__(
        self, *, scripts: LuaScripts, limit: int, ttl_s: int = keys.DELIVERY_COUNT_TTL_S
    ) -> None:
        self._begin = scripts.register(_BEGIN_LUA)
        self._end = scripts.register(_END_LUA)
        self.limit = limit
        self._ttl_s = ttl_s

    def begin(self, delivery: Delivery) -> int:
        """Count this delivery as started; its task's deaths in a row so far.

        One round trip on Redis; none on RabbitMQ for a first delivery.

        Raises:
            StoreError: the store did not answer.
        """
        if delivery.task_id is None or (delivery.tag is None and not delivery.redelivered):
            return 0
        names = [keys.task_deaths(delivery.task_id)]
        if delivery.tag is not None:
            names.append(keys.deliveries(delivery.tag))
        return int(self._begin(names, [self._ttl_s, int(bool(delivery.redelivered))]))

    @staticmethod
    def end_keys(delivery: Delivery, *, done: bool) -> list[str]:
        """What :meth:`end` deletes: the keys a delivery that did not die leaves behind.

        A delivery that publishes its event deletes them with its published mark
        instead (``Store.mark_published(..., ended=...)``), in the same round trip.
        """
        names = [keys.deliveries(delivery.tag)] if delivery.tag else []
        if done and delivery.task_id is not None:
            names.append(keys.task_deaths(delivery.task_id))
        return names

    def end(self, delivery: Delivery, *, done: bool) -> None:
        """This delivery finished (acked, retried or requeued): it did not die.

        ``done`` means its task reached its end (not merely retried), which ends the
        run of deaths.
        """
        names = self.end_keys(delivery, done=done)
        if not names:
            return
        try:
            self._end(names, [])
        except StoreError as exc:
            # Harmless: an acked message's count is never read again, and a requeued
            # one counts this delivery as died, one step nearer a dead letter.
            logger.warning("could not clear a delivery count: %s", safe_line(str(exc)))

    def exceeded(self, died: int) -> bool:
        """Whether a task whose deliveries died ``died`` times in a row must stop."""
        return died >= self.limit

    def reason(self, died: int) -> str:
        """The dead-letter reason of a message over the limit."""
        return (
            f"its worker died (or lost it) during {died} deliveries in a row "
            f"(SUBSWITCH_DELIVERY_LIMIT={self.limit}); not run again"
        )


class DeadLetterOnce:
    """A dead-letter sink that publishes each message (command id and body) once.

    The store is asked first, so with the store down nothing is published and the
    caller backs off; the mark is set only after the broker took the dead letter, so
    a failed publish is tried again.
    """

    def __init__(self, *, inner: DeadLetterSink, scripts: LuaScripts, retention_s: int) -> None:
        self._inner = inner
        self._mark = scripts.register(_MARK_LUA)
        self._retention_s = retention_s

    def dead_letter(self, body: bytes, *, reason: str, headers: Mapping[str, Any]) -> None:
        """Publish ``body`` to the inner sink unless it is there already.

        Raises:
            StoreError: the store did not answer (nothing was published).
        """
        key = [keys.dead_letter_mark(body, headers.get("command_id"))]
        if self._mark(key, [0]):
            logger.info("message already dead-lettered; not keeping a second copy")
            return
        self._inner.dead_letter(body, reason=reason, headers=headers)
        self._mark(key, [self._retention_s])
