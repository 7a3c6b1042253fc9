"""The Celery tasks: thin shells that hand each delivery to the executor.

``subswitch.apply`` carries one command; ``subswitch.apply_batch`` carries many (the
bulk lane's chunks), each still with its own idempotency, ordering, retries and event.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from celery import Celery, Task
from celery.exceptions import Reject

from subswitch.contract import APPLY_BATCH_TASK, APPLY_TASK, Lane, Outcome, readable_command_id
from subswitch.errors import TransientError
from subswitch.signing import CHUNK_SIGNATURE_HEADER
from worker.deliveries import Delivery, DeliveryCounter
from worker.executor import Executor, RetryLater

logger = logging.getLogger(__name__)

# Backoff for trouble that is not the upstream's: a store or broker out of reach (a
# TransientError, mapped at the store and sink boundaries) or a bug. The command is
# never dropped, only retried more slowly.
_TROUBLE_BASE_S = 0.5
_TROUBLE_MAX_S = 30.0
#: Share of the broker's redelivery window one delivery of a chunk may spend starting
#: commands (see chunk_budget_s).
_CHUNK_WINDOW_SHARE = 0.25
# In-thread pause before a message goes back unchanged (it holds its slot meanwhile).
_REQUEUE_PAUSE_MAX_S = 5.0


def register(
    app: Celery,
    *,
    executor: Callable[[], Executor],
    deliveries: Callable[[], DeliveryCounter],
) -> None:
    """Register ``subswitch.apply`` and ``subswitch.apply_batch`` on ``app``.

    ``executor`` and ``deliveries`` give this process's executor and delivery counter,
    or raise while the runtime is not built: like any other unexpected exception, that
    sends the message back, never acks it.

    The tasks are not ``shared``: Celery would otherwise add them to every app created
    later in this process, ahead of that app's own, and its messages would reach this
    app's executor.
    """

    @app.task(
        name=APPLY_TASK,
        shared=False,
        bind=True,
        max_retries=None,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
    )
    def apply(self: Task[Any, Any], *args: Any, **kwargs: Any) -> str:
        return run_apply(self, args, kwargs, executor=executor, deliveries=deliveries)

    @app.task(
        name=APPLY_BATCH_TASK,
        shared=False,
        bind=True,
        max_retries=None,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
    )
    def apply_batch(self: Task[Any, Any], *args: Any, **kwargs: Any) -> int:
        return run_apply_batch(self, args, kwargs, executor=executor, deliveries=deliveries)


def run_apply(
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    executor: Callable[[], Executor],
    deliveries: Callable[[], DeliveryCounter],
) -> str:
    """Execute one delivery of ``subswitch.apply``; retries go back through the broker.

    Everything that can raise runs inside a ``try``: an exception escaping a task
    would make Celery ack the message (acks on failure), and the command would be lost.
    """
    delivery = _delivery(task)
    died = _count_delivery(task, deliveries, delivery)
    counter = deliveries()  # the runtime is there: counting went through it
    if counter.exceeded(died):
        outcome = _give_up(task, executor(), counter.reason(died), args, kwargs)
        _end(counter, delivery, done=True)
        return outcome
    token = uuid.uuid4().hex
    try:
        if len(args) != 1 or kwargs:
            reason = "subswitch.apply takes exactly one positional argument, the command"
            decision = executor().reject_message(
                repr((args, kwargs)).encode(),
                reason=reason,
                command_id=readable_command_id(task.request.id),
                token=token,
            )
        else:
            decision = executor().handle(
                args[0],
                token=token,
                message_id=task.request.id,
                # Its end, done, goes with the published mark: no round trip of its own.
                ended=counter.end_keys(delivery, done=True),
            )
    except TransientError as exc:
        _end(counter, delivery, done=False)
        delay = _trouble_delay(task.request.retries)
        logger.warning("delivery failed (%s), retrying in %.1fs", exc, delay)
        retry_later(task, delay)
    except Exception:  # a bug: never acknowledge a command that was not finished
        _end(counter, delivery, done=False)
        delay = _trouble_delay(task.request.retries)
        logger.exception("delivery failed unexpectedly, retrying in %.1fs", delay)
        retry_later(task, delay)
    if isinstance(decision, RetryLater):
        _end(counter, delivery, done=False)
        retry_later(task, decision.delay_s)
    if not decision.ended:
        _end(counter, delivery, done=True)
    return decision.outcome.value


def run_apply_batch(
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    executor: Callable[[], Executor],
    deliveries: Callable[[], DeliveryCounter],
) -> int:
    """Execute a chunk of commands one by one; returns how many were finished here.

    See :func:`apply_chunk`: the chunk keeps to a time budget well inside the broker's
    redelivery window, and a command that must wait or that raises leaves the chunk as
    a message of its own. If re-enqueueing fails the whole chunk is retried: commands
    already finished are recognised as duplicates and cost one store round trip.
    A chunk whose deliveries keep dying is split into single messages, so that only
    the command that kills its worker ends dead-lettered.
    """
    if len(args) != 1 or kwargs or not isinstance(args[0], list):
        reason = "subswitch.apply_batch takes exactly one positional argument, a list of commands"
        _reject_malformed(task, executor, repr((args, kwargs)).encode(), reason)
        return 0
    delivery = _delivery(task)
    died = _count_delivery(task, deliveries, delivery)
    counter = deliveries()
    if counter.exceeded(died):
        _split(task, args[0], counter.reason(died))
        _end(counter, delivery, done=True)
        return 0
    try:
        # The redelivery window the app was configured with (SUBSWITCH_VISIBILITY_TIMEOUT).
        window_s = task.app.conf.broker_transport_options["visibility_timeout"]
        bulk = CeleryBulkLane(task)
        header = vars(task.request).get(CHUNK_SIGNATURE_HEADER)
        signer = executor().chunk_signer(args[0], header)
        budget_s = chunk_budget_s(window_s)
        finished = apply_chunk(executor(), args[0], budget_s=budget_s, bulk=bulk, vouched_by=signer)
    except TransientError as exc:
        _end(counter, delivery, done=False)
        delay = _trouble_delay(task.request.retries)
        logger.warning("batch delivery failed (%s), retrying it in %.1fs", exc, delay)
        retry_later(task, delay)
    except Exception:  # a bug: never acknowledge commands that were not finished
        _end(counter, delivery, done=False)
        delay = _trouble_delay(task.request.retries)
        logger.exception("batch delivery failed unexpectedly, retrying it in %.1fs", delay)
        retry_later(task, delay)
    _end(counter, delivery, done=True)
    return finished


def chunk_budget_s(redelivery_window_s: float) -> float:
    """How long one delivery of a chunk may start new commands.

    The last command started may still take a whole attempt (the target lease), and
    the message may have waited in a prefetch before it started: a quarter of the
    window leaves room for both, so a chunk is never redelivered while it runs.
    """
    return redelivery_window_s * _CHUNK_WINDOW_SHARE


class BulkLane(Protocol):
    """Where commands that leave a chunk go: new messages on the bulk lane."""

    def send_alone(self, command: Any, delay_s: float) -> None:
        """Enqueue one command as a ``subswitch.apply`` message after ``delay_s``."""

    def send_rest(self, commands: list[Any]) -> None:
        """Enqueue ``commands`` as one ``subswitch.apply_batch`` message, at once."""


def apply_chunk(
    executor: Executor,
    commands: list[Any],
    *,
    budget_s: float,
    bulk: BulkLane,
    clock: Callable[[], float] = time.monotonic,
    vouched_by: str | None = None,
) -> int:
    """Run ``commands`` together (:meth:`Executor.handle_chunk`) within ``budget_s``;
    returns how many were finished.

    A command that must wait (retry, busy target) or that raised leaves as a single
    message (a raising one after a backoff, then retried like any ``subswitch.apply``);
    the others go on. Once the budget is spent, what was not started leaves as one
    chunk. An :class:`UnavailableError` (store or broker away) is raised: no command's
    own fault. ``vouched_by``: who signed the chunk (its signature verified), under a
    policy.
    """
    deadline = clock() + budget_s
    results = executor.handle_chunk(
        commands, vouched_by=vouched_by, out_of_time=lambda: clock() >= deadline
    )
    finished = 0
    for command, result in zip(commands, results, strict=True):
        if isinstance(result, RetryLater):
            bulk.send_alone(command, result.delay_s)
        elif isinstance(result, Exception):
            delay = _trouble_delay(0)
            logger.warning(
                "a command of a chunk failed (%s); it goes on alone in %.1fs",
                type(result).__name__,
                delay,
            )
            bulk.send_alone(command, delay)
        elif result is not None:
            finished += 1
    left = [command for command, result in zip(commands, results, strict=True) if result is None]
    if left:
        logger.info("chunk out of time: %d commands go on in a new chunk", len(left))
        bulk.send_rest(left)
    return finished


class CeleryBulkLane:
    """:class:`BulkLane` through the running task's app."""

    def __init__(self, task: Task[Any, Any]) -> None:
        self._task = task

    def send_alone(self, command: Any, delay_s: float) -> None:
        """Enqueue one command as a ``subswitch.apply`` message after ``delay_s``."""
        command_id = (
            readable_command_id(command.get("command_id")) if isinstance(command, dict) else None
        )
        self._task.app.send_task(
            APPLY_TASK,
            args=[command],
            task_id=command_id,
            queue=Lane.BULK.queue,
            countdown=math.ceil(delay_s),  # whole seconds: see retry_later
            retry=True,
        )

    def send_rest(self, commands: list[Any]) -> None:
        """Enqueue ``commands`` as one ``subswitch.apply_batch`` message, at once."""
        self._task.app.send_task(
            APPLY_BATCH_TASK,
            args=[commands],
            # One suffix however often a chunk is split: "<chunk id>.rest-<commands left>".
            task_id=f"{str(self._task.request.id).split('.rest-')[0]}.rest-{len(commands)}",
            queue=Lane.BULK.queue,
            retry=True,
            argsrepr=f"[<{len(commands)} commands left over>]",
        )


def _reject_malformed(
    task: Task[Any, Any], executor: Callable[[], Executor], raw: bytes, reason: str
) -> None:
    try:
        executor().reject_message(raw, reason=reason, command_id=None, token=uuid.uuid4().hex)
    except Exception:  # never ack what could not be dead-lettered: it comes back
        delay = _trouble_delay(task.request.retries)
        logger.exception("could not dead-letter a malformed chunk, retrying in %.1fs", delay)
        retry_later(task, delay)


def _end(counter: DeliveryCounter, delivery: Delivery, *, done: bool) -> None:
    """The delivery ended (``done``: finished here); a store failure only costs a count."""
    try:
        counter.end(delivery, done=done)
    except TransientError as exc:
        logger.warning("could not record the end of a delivery: %s", exc)


def _delivery(task: Task[Any, Any]) -> Delivery:
    # The request holds the message's headers (x-delivery-count) and properties.
    return Delivery.of(vars(task.request))


def _count_delivery(
    task: Task[Any, Any], deliveries: Callable[[], DeliveryCounter], delivery: Delivery
) -> int:
    try:
        return deliveries().begin(delivery)
    except TransientError as exc:
        delay = _trouble_delay(task.request.retries)
        logger.warning("could not count the delivery (%s), retrying in %.1fs", exc, delay)
        retry_later(task, delay)
    except Exception:  # a bug: the message comes back, never acked unfinished
        delay = _trouble_delay(task.request.retries)
        logger.exception("could not count the delivery, retrying in %.1fs", delay)
        retry_later(task, delay)


def _give_up(
    task: Task[Any, Any],
    executor: Executor,
    reason: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> str:
    """Dead-letter a message over the delivery limit, unrun, with a ``rejected`` event.

    Should that fail, the message goes back as it is after a pause (never as a
    retry, which would run it again), still counted as over the limit.
    """
    command = args[0] if len(args) == 1 else None
    candidate = command.get("command_id") if isinstance(command, dict) else task.request.id
    raw = json.dumps([list(args), kwargs], sort_keys=True, default=str).encode()
    try:
        executor.reject_message(
            raw, reason=reason, command_id=readable_command_id(candidate), token=uuid.uuid4().hex
        )
    except Exception:
        logger.exception("could not dead-letter a message over the delivery limit; requeueing it")
        _requeue_later(task)
    # A RetryLater here means another delivery is publishing the same event: done too.
    return Outcome.REJECTED.value


def _split(task: Task[Any, Any], commands: list[Any], reason: str) -> None:
    logger.warning("chunk %s: %s; its commands go on one by one", task.request.id, reason)
    try:
        for command in commands:
            CeleryBulkLane(task).send_alone(command, 0)
    except Exception:
        logger.exception("could not split the chunk; requeueing it")
        _requeue_later(task)


def _requeue_later(task: Task[Any, Any]) -> NoReturn:
    # A pause, so that a store or broker outage is no tight loop of redeliveries.
    time.sleep(min(_REQUEUE_PAUSE_MAX_S, _trouble_delay(task.request.retries)))
    raise Reject("requeued", requeue=True)


def retry_later(task: Task[Any, Any], delay_s: float) -> NoReturn:
    """Deliver this message again after ``delay_s`` seconds, through the broker.

    RabbitMQ's native delayed delivery (quorum queues) counts whole seconds and
    refuses less than one, so shorter waits happen here, in this thread, and the
    message goes back at once. If the new message cannot be published, Celery would
    drop the original (``Reject(requeue=False)``); it is requeued instead.
    """
    countdown = math.ceil(delay_s) if delay_s >= 1 else 0
    if countdown == 0 and delay_s > 0:
        time.sleep(delay_s)
    try:
        raise task.retry(countdown=countdown)
    except Reject as exc:
        raise Reject(exc.reason, requeue=True) from None  # type: ignore[attr-defined]


def _trouble_delay(retries: int) -> float:
    ceiling = min(_TROUBLE_MAX_S, _TROUBLE_BASE_S * 2 ** min(retries, 10))
    return random.uniform(ceiling / 2, ceiling)
