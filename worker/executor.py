"""What happens to one delivered command: the worker's policy in one place.

The Celery task is a thin shell around :meth:`Executor.handle`; everything it
decides (idempotency, ordering, retries, which event goes out) happens here against
small interfaces, so it runs the same under Celery and in unit tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from subswitch import keys
from subswitch.clock import utcnow
from subswitch.contract import (
    AnyCommand,
    ChangeBlockStatus,
    EventError,
    InvalidCommand,
    Lane,
    Outcome,
    ResultEvent,
    parse_command,
    readable_command_id,
    rejected_message_event,
    result_event,
)
from subswitch.errors import UnavailableError
from subswitch.logs import add_log_context, log_context
from subswitch.policy import Refusal
from subswitch.signing import detach_signature
from subswitch.text import safe_line
from worker.metrics import NULL_RECORDER, Recorder
from worker.policy import RetryPolicy
from worker.store import (
    AlreadyApplied,
    BatchStore,
    BeginRequest,
    BeginResult,
    Busy,
    Claim,
    Conflict,
    Finished,
    FinishRequest,
    Go,
    Lost,
    OutOfBounds,
    OutOfTime,
    OutOfTimeReason,
    Settling,
    Superseded,
    Unresolved,
)
from worker.traffic import TrafficControl
from worker.upstream.client import AnsweredWrite
from worker.upstream.errors import (
    TransientError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class Upstream(Protocol):
    """The two writes the worker makes (``worker.upstream.MasStackClient`` has them).

    ``deadline`` is a ``time.monotonic()`` instant by which the call is over, token
    fetches included.
    """

    def change_service_status(
        self,
        org_id: str,
        subscription_id: int,
        service_id: int,
        *,
        active: bool,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> int: ...

    def change_block_status(
        self,
        org_id: str,
        subscription_id: int,
        block_id: int,
        *,
        active: bool,
        reason: str | None = None,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> int: ...


class PendingWrite(Protocol):
    """A write on its way to the upstream."""

    def result(self) -> int:
        """Its 2xx status; raises the write's :class:`UpstreamError`."""
        ...


@runtime_checkable
class ConcurrentUpstream(Upstream, Protocol):
    """An :class:`Upstream` whose writes can also be started now and answered later,
    many at once (``MasStackClient`` has them): a bulk chunk's writes go out together."""

    def start_change_service_status(
        self,
        org_id: str,
        subscription_id: int,
        service_id: int,
        *,
        active: bool,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> PendingWrite: ...

    def start_change_block_status(
        self,
        org_id: str,
        subscription_id: int,
        block_id: int,
        *,
        active: bool,
        reason: str | None = None,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> PendingWrite: ...


class Traffic(Protocol):
    """What stands between the executor and the upstream (``worker.traffic.TrafficControl``)."""

    def admit(self, lane: Lane) -> float | None:
        """``None`` to send now; else seconds to come back after."""
        ...

    def after_request(self, *, failed: bool) -> None:
        """Report how an admitted request went."""
        ...

    def abandon(self) -> None:
        """An admitted request ended before the upstream answered (or was never made)."""
        ...


class EventSink(Protocol):
    """Where result events go (the ``subswitch.events`` exchange)."""

    def publish(self, event: bytes, *, routing_key: str, event_id: str) -> None:
        """Publish one event body; return only once the broker has it."""

    def publish_many(self, events: Sequence[OutgoingEvent]) -> None:
        """Publish events in order; return only once the broker has every one."""


@dataclass(frozen=True)
class OutgoingEvent:
    """One event for :meth:`EventSink.publish_many`."""

    body: bytes
    routing_key: str
    event_id: str


class Authority(Protocol):
    """Who may send what (``subswitch.policy_watch.PolicyWatch``: the policy in force)."""

    def check(
        self, command: AnyCommand, signature: object | None, *, vouched_by: str | None = None
    ) -> Refusal | None:
        """``None`` if ``command`` (with its raw ``signature`` member) may run;
        ``vouched_by`` is the signer of the verified chunk it came in."""
        ...

    def chunk_signer(self, commands: Sequence[AnyCommand], header: object) -> str | None:
        """Who signed a bulk chunk of ``commands`` (its signature header), if it verifies."""
        ...


class DeadLetterSink(Protocol):
    """Where messages that are not valid commands are kept, with the reason."""

    def dead_letter(self, body: bytes, *, reason: str, headers: Mapping[str, Any]) -> None:
        """Keep ``body`` for inspection; return only once the broker has it."""


@dataclass(frozen=True)
class Ack:
    """This delivery is done with; acknowledge the message.

    ``ended``: the keys the delivery leaves behind (``handle(ended=...)``) went with
    its published mark; its end needs no store call of its own.
    """

    outcome: Outcome
    ended: bool = False


class RetryCause(StrEnum):
    """Why a delivery goes back through the broker: a bounded set (a metric's label)."""

    UPSTREAM_429 = "upstream_429"
    UPSTREAM_5XX = "upstream_5xx"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_CONNECTION = "upstream_connection"
    #: The circuit is open or the rate limit has no slot soon enough.
    TRAFFIC = "traffic"
    BUSY = "target_busy"
    SETTLING = "target_settling"
    UNRESOLVED = "newer_unresolved"
    LEASE_LOST = "lease_lost"
    PUBLISHING = "publishing_elsewhere"


@dataclass(frozen=True)
class RetryLater:
    """Deliver the command again after ``delay_s`` seconds."""

    delay_s: float
    reason: str
    cause: RetryCause = RetryCause.BUSY


Decision = Ack | RetryLater


#: The part of a target's lease kept free after an attempt's deadline: the store round
#: trips that record its result, and scheduling hiccups.
LEASE_MARGIN_S: Final = 2.0


def _log_decision(decision: Decision) -> None:
    """The one INFO line per delivered command: its outcome, or when it comes back."""
    if isinstance(decision, Ack):
        outcome = decision.outcome.value
        logger.info("command %s", outcome, extra={"outcome": outcome})
    else:
        logger.info("command back in %.2fs: %s", decision.delay_s, decision.reason)


class Executor:
    """Turns one delivery of a command into at most one upstream write and a decision."""

    def __init__(
        self,
        *,
        store: BatchStore,
        upstream: Upstream,
        events: EventSink,
        dead_letters: DeadLetterSink,
        policy: RetryPolicy,
        lease_ms: int,
        settle_s: float,
        max_clock_skew_s: float,
        retention_s: float,
        traffic: Traffic | None = None,
        authority: Authority | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Recorder = NULL_RECORDER,
    ) -> None:
        if lease_ms / 1000 <= 2 * LEASE_MARGIN_S:
            raise ValueError(f"lease_ms {lease_ms} leaves no time for an attempt")
        self._store = store
        self._upstream = upstream
        # Looked up once: a runtime protocol check costs microseconds, per write.
        self._starts = upstream if isinstance(upstream, ConcurrentUpstream) else None
        self._events = events
        self._dead_letters = dead_letters
        self._policy = policy
        self._lease_ms = lease_ms
        self._settle_ms = int(settle_s * 1000)
        self._max_skew = timedelta(seconds=max_clock_skew_s)
        self._retention = timedelta(seconds=retention_s)
        self._traffic: Traffic = traffic or TrafficControl()
        self._authority = authority
        self._clock = clock
        self._monotonic = monotonic
        self._metrics = metrics
        # Every attempt is over this long after its lock was taken, safely inside the
        # lease: the deadline bounds the rate-limit wait, token fetches and the request.
        self._attempt_s = lease_ms / 1000 - LEASE_MARGIN_S

    def handle(
        self,
        payload: Any,
        *,
        token: str,
        message_id: str | None = None,
        vouched_by: str | None = None,
        ended: Sequence[str] = (),
    ) -> Decision:
        """Handle one delivery; ``token`` is unique to this delivery.

        ``message_id`` (the broker message's id, which producers set to the command
        id) names the command in the ``rejected`` event when the payload cannot.

        With a policy in force (``authority``) the command is verified first, before
        anything touches its records: a refused one never occupies its command id.
        ``vouched_by`` is who signed the chunk the command came in (:meth:`chunk_signer`).
        ``ended``: keys to delete once this delivery is done (its delivery count); a
        delivery that publishes its event deletes them with its published mark and
        says so (``Ack.ended``).
        """
        ended = tuple(ended)
        prepared = self._prepare(payload, token, message_id, vouched_by, ended)
        if not isinstance(prepared, AnyCommand):
            return prepared
        decision = self._handle_command(prepared, token, ended)
        if isinstance(decision, RetryLater):
            self._metrics.retry(decision.cause.value)
        return decision

    def handle_chunk(
        self,
        payloads: Sequence[Any],
        *,
        vouched_by: str | None = None,
        out_of_time: Callable[[], bool] = lambda: False,
    ) -> list[ChunkResult]:
        """Handle a bulk chunk's commands together; a result per payload, in order.

        Each command is decided exactly as :meth:`handle` decides it, and commands on
        one target go one after the other, in the chunk's order: the chunk runs in
        waves, the first command of every target in the first, the second in the
        next, and so on. A wave makes one store round trip for all its begins, sends
        its writes at once (through the upstream's ``start_*`` writes when it has
        them), one round trip for its finishes, publishes its events together and
        marks them published in one more. Before each wave after the first,
        ``out_of_time()`` may end the chunk: what was not started is ``None``.

        A command that raised (a bug) has its exception as its result; an
        :class:`UnavailableError` (store or broker away) is raised: no command's own.
        """
        results: list[ChunkResult] = [None] * len(payloads)
        jobs: list[tuple[int, _Job]] = []
        for index, payload in enumerate(payloads):
            token = uuid.uuid4().hex
            prepared = _guarded(self._prepare, payload, token, None, vouched_by, ())
            if isinstance(prepared, AnyCommand):
                jobs.append((index, _Job(prepared, prepared.fingerprint(), token)))
            else:
                results[index] = prepared
        for number, wave in enumerate(_waves(jobs)):
            if number and out_of_time():
                break
            # The chunk's very first command always runs: every delivery makes progress.
            wave_results = self._run_wave([job for _, job in wave], out_of_time, first=not number)
            for (index, _), result in zip(wave, wave_results, strict=True):
                results[index] = result
        for result in results:
            if isinstance(result, RetryLater):
                self._metrics.retry(result.cause.value)
        return results

    def _prepare(
        self,
        payload: Any,
        token: str,
        message_id: str | None,
        vouched_by: str | None,
        ended: tuple[str, ...],
    ) -> AnyCommand | Decision:
        """The command in ``payload`` if it may run; else what became of the message."""
        fields, signature = detach_signature(payload)
        try:
            command = parse_command(fields)
        except InvalidCommand as exc:
            return self.reject_message(
                _as_bytes(payload),
                reason=str(exc),
                command_id=exc.command_id or readable_command_id(message_id),
                token=token,
                ended=ended,
            )
        if self._authority is not None:
            refusal = self._authority.check(command, signature, vouched_by=vouched_by)
            if refusal is not None:
                return self._refuse(command, refusal, _as_bytes(payload), token, ended)
        return command

    def chunk_signer(self, payloads: list[Any], header: object) -> str | None:
        """Who signed this bulk chunk, when a policy is in force and the chunk's signature
        header verifies over every one of its commands; else ``None``, and each command
        is verified on its own."""
        if self._authority is None or header is None:
            return None
        commands = []
        for payload in payloads:
            try:
                commands.append(parse_command(detach_signature(payload)[0]))
            except InvalidCommand:
                return None
        return self._authority.chunk_signer(commands, header)

    def _refuse(
        self,
        command: AnyCommand,
        refusal: Refusal,
        raw: bytes,
        token: str,
        ended: tuple[str, ...],
    ) -> Decision:
        """Dead-letter a command the policy refuses and report it ``rejected``, leaving
        its command id free: the event is kept under a key of the message's own, and its
        id comes from the message's bytes (a forged copy of a command does not share
        the real one's event id either)."""
        reason = safe_line(refusal.message)
        logger.warning("rejected %s: %s", command.command_id, reason)
        headers = {"command_id": command.command_id, "x-subswitch-policy-rule": refusal.rule}
        self._dead_letters.dead_letter(raw, reason=reason, headers=headers)
        event = result_event(
            command,
            outcome=Outcome.REJECTED,
            attempts=0,
            completed_at=self._clock(),
            error=EventError(message=reason),
            fingerprint=hashlib.sha256(b"policy\n" + raw).hexdigest(),
        )
        key, body = keys.rejected(event.id), event.to_json()
        finished = self._store.record(key, token=token, event=body)
        return self._publish(finished, key, (event, body), ended)

    def reject_message(
        self,
        raw: bytes,
        *,
        reason: str,
        command_id: str | None,
        token: str,
        ended: Sequence[str] = (),
    ) -> Decision:
        """Dead-letter a message that is no valid command and report it ``rejected``
        (``ended`` as :meth:`handle`'s)."""
        reason = safe_line(reason)  # it quotes the message: one bounded line
        logger.warning("rejected message (command_id=%s): %s", command_id, reason)
        self._dead_letters.dead_letter(raw, reason=reason, headers={"command_id": command_id})
        event = rejected_message_event(
            raw, reason=reason, command_id=command_id, completed_at=self._clock()
        )
        key, body = keys.rejected(event.id), event.to_json()
        finished = self._store.record(key, token=token, event=body, command_id=command_id)
        return self._publish(finished, key, (event, body), tuple(ended))

    def _handle_command(
        self, command: AnyCommand, token: str, ended: tuple[str, ...] = ()
    ) -> Decision:
        with _context(command):
            decision = self._decide(command, token, ended)
            _log_decision(decision)
        return decision

    def _decide(self, command: AnyCommand, token: str, ended: tuple[str, ...]) -> Decision:
        job = _Job(command, command.fingerprint(), token, ended)
        request = self._begin_request(job, self._clock())
        step = self._store.begin(
            command,
            fingerprint=request.fingerprint,
            token=token,
            lease_ms=request.lease_ms,
            max_attempts=request.max_attempts,
            expired=request.expired,
            settle_ms=request.settle_ms,
            out_of_bounds=request.out_of_bounds,
        )
        if isinstance(step, Go):
            return self._attempt(job, step.attempt)
        return self._after_begin(job, step)

    def _begin_request(self, job: _Job, now: datetime) -> BeginRequest:
        command = job.command
        return BeginRequest(
            command=command,
            fingerprint=job.fingerprint,
            token=job.token,
            lease_ms=self._lease_ms,
            max_attempts=self._policy.max_attempts,
            expired=command.not_after is not None and now > command.not_after,
            settle_ms=self._settle_ms,
            out_of_bounds=self._bounds_error(command, now) is not None,
        )

    def _after_begin(self, job: _Job, step: BeginResult) -> Decision:
        """What a begin that gave no attempt (anything but :class:`Go`) decides."""
        if isinstance(step, Busy | Settling | Unresolved):
            return self._wait(job.command, step)
        if isinstance(step, Finished):
            return self._publish(step, keys.command(job.command.command_id), ended=job.ended)
        if isinstance(step, Conflict):
            return self._reject_conflict(job)
        if isinstance(step, Go):  # never passed here: the caller makes the attempt
            raise TypeError("a Go step is an attempt to make, not an end")
        return self._close(job, step)

    def _wait(self, command: AnyCommand, step: Busy | Settling | Unresolved) -> RetryLater:
        if isinstance(step, Settling):
            logger.info(
                "%s: target settling after a lost answer for %.1fs more",
                command.command_id,
                step.remaining_ms / 1000,
            )
            delay = self._policy.settle_delay(step.remaining_ms / 1000)
            return RetryLater(delay, "target settling after a lost answer", RetryCause.SETTLING)
        if isinstance(step, Unresolved):
            logger.info(
                "%s: waiting for newer command %s on the target, whose result is unknown",
                command.command_id,
                step.newer,
            )
            return RetryLater(
                self._policy.unresolved_delay(),
                "a newer command is unresolved",
                RetryCause.UNRESOLVED,
            )
        return RetryLater(self._policy.busy_delay(), "target busy")

    def _bounds_error(self, command: AnyCommand, now: datetime) -> str | None:
        """Why ``issued_at`` is outside the window in which a command is accepted (§2.6)."""
        if command.issued_at > now + self._max_skew:
            return (
                f"issued_at {command.issued_at.isoformat()} is more than "
                f"{self._max_skew.total_seconds():.0f} s ahead of the worker's clock"
            )
        if command.issued_at < now - self._retention:
            return (
                f"issued_at {command.issued_at.isoformat()} is older than the retention "
                f"window ({self._retention.total_seconds():.0f} s)"
            )
        return None

    def _close(
        self, job: _Job, step: Superseded | AlreadyApplied | OutOfBounds | OutOfTime
    ) -> Decision:
        """Finish a command that gets no (further) attempt; the target is held."""
        if isinstance(step, Superseded):
            reason = "a newer command on the same target was already applied"
            return self._finish(job, Outcome.SUPERSEDED, step.attempts, EventError(message=reason))
        if isinstance(step, AlreadyApplied):
            return self._finish(
                job, Outcome.APPLIED, step.attempts, None, step.upstream_status, applied=True
            )
        if isinstance(step, OutOfBounds):
            reason = self._bounds_error(job.command, self._clock()) or "issued_at out of bounds"
            logger.warning("rejected %s: %s", job.command.command_id, reason)
            return self._finish(job, Outcome.REJECTED, 0, EventError(message=reason))
        return self._out_of_time(job, step)

    def _attempt(self, job: _Job, attempt: int) -> Decision:
        command = job.command
        add_log_context(attempt=attempt)
        deadline = self._monotonic() + self._attempt_s
        wait = self._traffic.admit(command.lane)
        if wait is not None:
            return self._give_back(job, wait)
        try:
            status = self._timed_send(command, deadline)
        except UpstreamError as exc:
            return self._after_error(job, attempt, exc)
        except BaseException:
            self._traffic.abandon()  # no answer to count; never keep a probe leased
            raise
        self._traffic.after_request(failed=False)
        return self._finish(job, Outcome.APPLIED, attempt, None, status, applied=True)

    def _give_back(self, job: _Job, wait_s: float) -> RetryLater:
        """No upstream budget for this attempt now: the target goes back, unsent."""
        command = job.command
        delay = min(wait_s, self._policy.max_delay_s)
        self._store.give_back(
            command.command_id, command.target, token=job.token, retry_ms=int(delay * 1000)
        )
        return RetryLater(delay, "waiting for upstream budget", RetryCause.TRAFFIC)

    def _after_error(self, job: _Job, attempt: int, exc: UpstreamError) -> Decision:
        if isinstance(exc, TransientError):
            self._traffic.after_request(failed=exc.status != 429)
            return self._after_transient(job, attempt, exc)
        self._traffic.after_request(failed=False)  # the upstream answered
        return self._finish(job, Outcome.FAILED, attempt, _event_error(exc), exc.status)

    def _after_transient(self, job: _Job, attempt: int, exc: TransientError) -> Decision:
        command = job.command
        # The write may still land upstream: hold the target while it settles (§2.5).
        # Counted from now, which is never before the attempt was sent.
        settle_ms = self._settle_ms if exc.maybe_applied else 0
        delay = self._policy.next_delay(
            attempt, exc, now=self._clock(), not_after=command.not_after, held_s=settle_ms / 1000
        )
        if settle_ms:
            self._metrics.settling(settle_ms / 1000)
        if delay is None:
            return self._finish(
                job, Outcome.FAILED, attempt, _event_error(exc), exc.status, settle_ms=settle_ms
            )
        last_error = json.dumps(
            {"error": _event_error(exc).model_dump(by_alias=True), "upstream_status": exc.status}
        )
        if not self._store.release(
            command.command_id,
            command.target,
            token=job.token,
            last_error=last_error,
            ambiguous=exc.maybe_applied,
            settle_ms=settle_ms,
            retry_ms=int(delay * 1000),
        ):
            logger.warning("%s: lease lost during attempt %d", command.command_id, attempt)
        logger.info(
            "attempt %d of %s failed (%s); %sretrying in %.2fs",
            attempt,
            command.command_id,
            exc,
            f"answer lost, target settling for {settle_ms / 1000:.1f}s; " if settle_ms else "",
            delay,
        )
        return RetryLater(delay, str(exc), _upstream_cause(exc))

    def _out_of_time(self, job: _Job, step: OutOfTime) -> Decision:
        if step.reason is OutOfTimeReason.EXPIRED and step.attempts == 0:
            error = EventError(message="not_after passed before the command could be applied")
            return self._finish(job, Outcome.EXPIRED, 0, error)
        error, status = _stored_error(step.last_error, step.reason)
        return self._finish(job, Outcome.FAILED, step.attempts, error, status)

    def _reject_conflict(self, job: _Job) -> Decision:
        command_id = job.command.command_id
        message = f"command_id {command_id!r} was already used with a different payload"
        event = result_event(
            job.command,
            outcome=Outcome.REJECTED,
            attempts=0,
            completed_at=self._clock(),
            error=EventError(message=message),
            fingerprint=job.fingerprint,
        )
        key, body = keys.conflict(command_id, job.fingerprint), event.to_json()
        finished = self._store.record(key, token=job.token, event=body, command_id=command_id)
        return self._publish(finished, key, (event, body), job.ended)

    def _finish(
        self,
        job: _Job,
        outcome: Outcome,
        attempts: int,
        error: EventError | None,
        upstream_status: int | None = None,
        *,
        applied: bool = False,
        settle_ms: int = 0,
    ) -> Decision:
        ending = self._ending(
            job, outcome, attempts, error, upstream_status, applied=applied, settle_ms=settle_ms
        )
        request = ending.request
        finished = self._store.finish(
            request.command,
            fingerprint=request.fingerprint,
            token=request.token,
            event=request.event,
            applied=request.applied,
            upstream_status=request.upstream_status,
            settle_ms=request.settle_ms,
        )
        decision, outgoing = self._claimed(ending, finished)
        return self._send_event(decision, outgoing, ending.key, job.ended)

    def _ending(
        self,
        job: _Job,
        outcome: Outcome,
        attempts: int,
        error: EventError | None,
        upstream_status: int | None = None,
        *,
        applied: bool = False,
        settle_ms: int = 0,
    ) -> _Ending:
        """The terminal event of ``job`` and the store call that keeps it."""
        event = result_event(
            job.command,
            outcome=outcome,
            attempts=attempts,
            completed_at=self._clock(),
            upstream_status=upstream_status,
            error=error,
        )
        body = event.to_json()
        request = FinishRequest(
            command=job.command,
            fingerprint=job.fingerprint,
            token=job.token,
            event=body,
            applied=applied,
            upstream_status=upstream_status,
            settle_ms=settle_ms,
        )
        return _Ending(keys.command(job.command.command_id), event, request)

    def _claimed(
        self, ending: _Ending, finished: Finished | Lost
    ) -> tuple[Decision, OutgoingEvent | None]:
        """The decision after the store kept (or refused) ``ending``, and the event
        this delivery must publish, if any."""
        if isinstance(finished, Lost):
            # The lease ran out under this delivery: a new one decides, under a new lock.
            logger.warning("%s: lease lost before finishing", ending.request.command.command_id)
            lost = RetryLater(self._policy.busy_delay(), "lease lost", RetryCause.LEASE_LOST)
            return lost, None
        return self._claim(finished, (ending.event, ending.request.event))

    def _publish(
        self,
        finished: Finished,
        key: str,
        built: tuple[ResultEvent, bytes] | None = None,
        ended: tuple[str, ...] = (),
    ) -> Decision:
        decision, outgoing = self._claim(finished, built)
        return self._send_event(decision, outgoing, key, ended)

    def _send_event(
        self, decision: Decision, outgoing: OutgoingEvent | None, key: str, ended: tuple[str, ...]
    ) -> Decision:
        """Publish the event this delivery claimed, if any, and mark it published (with
        ``ended``, the delivery's leftovers, deleted in the same call)."""
        if outgoing is None:
            return decision
        self._events.publish(
            outgoing.body, routing_key=outgoing.routing_key, event_id=outgoing.event_id
        )
        self._store.mark_published(key, ended=ended)
        if ended and isinstance(decision, Ack):
            return Ack(decision.outcome, ended=True)
        return decision

    def _claim(
        self, finished: Finished, built: tuple[ResultEvent, bytes] | None
    ) -> tuple[Decision, OutgoingEvent | None]:
        """What a finished record means for this delivery, and the event it publishes."""
        if finished.claim is Claim.BUSY:
            busy = RetryLater(
                self._policy.busy_delay(), "event being published elsewhere", RetryCause.PUBLISHING
            )
            return busy, None
        # The event just built (and its body) is usually the one stored: spare parsing it.
        ours = built[0] if built is not None and finished.event == built[1] else None
        event = ours if ours is not None else ResultEvent.model_validate_json(finished.event)
        if ours is not None:
            self._metrics.command_finished(event)  # decided by this delivery: counted once
        outgoing = None
        if finished.claim is Claim.PUBLISH:
            outgoing = OutgoingEvent(finished.event, event.outcome.routing_key, event.id)
        return Ack(event.outcome), outgoing

    # --- a bulk chunk's wave ------------------------------------------------------

    def _run_wave(
        self, jobs: list[_Job], out_of_time: Callable[[], bool], *, first: bool
    ) -> list[ChunkResult]:
        """Decide a wave of a chunk (commands on distinct targets) together. Writes not
        started when ``out_of_time()`` hand their targets back and end as ``None``."""
        now = self._clock()
        steps = self._store.begin_many([self._begin_request(job, now) for job in jobs])
        # Every lock was taken by then: each attempt is over inside its lease.
        deadline = self._monotonic() + self._attempt_s
        started: list[ChunkResult | _InFlight] = []
        for job, step in zip(jobs, steps, strict=True):
            with _context(job.command):
                if not isinstance(step, Go):
                    started.append(_guarded(self._after_begin, job, step))
                elif (started or not first) and out_of_time():
                    started.append(_guarded(self._unstarted, job))
                else:
                    started.append(_guarded(self._start, job, step.attempt, deadline))
        landed: list[ChunkResult | _Ending] = []
        for result in started:
            if isinstance(result, _InFlight):
                with _context(result.job.command):
                    landed.append(_guarded(self._land, result))
            else:
                landed.append(result)
        results = self._finish_wave(landed)
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, Ack | RetryLater):
                with _context(job.command):
                    _log_decision(result)
        return results

    def _unstarted(self, job: _Job) -> None:
        """The chunk ran out of time before this attempt: the target goes back, the
        attempt uncounted, and the command goes on in the chunk's rest."""
        command = job.command
        self._store.give_back(command.command_id, command.target, token=job.token)

    def _start(self, job: _Job, attempt: int, deadline: float) -> _InFlight | Decision:
        """Send the attempt's write, answered later; or give the target back."""
        add_log_context(attempt=attempt)
        if self._monotonic() >= deadline - LEASE_MARGIN_S:
            # The wave waited for its turns so long that this attempt would have no
            # time left: it goes back unsent (a slow rate limit or a slow upstream).
            return self._give_back(job, 0.0)
        wait = self._traffic.admit(job.command.lane)
        if wait is not None:
            return self._give_back(job, wait)
        self._metrics.inflight(1)
        started = self._monotonic()
        try:
            pending: PendingWrite = self._start_send(job.command, deadline)
        except UpstreamError as exc:
            pending = _Refused(exc)
        except BaseException:
            self._metrics.inflight(-1)
            self._traffic.abandon()  # no answer to count; never keep a probe leased
            raise
        return _InFlight(job, attempt, pending, started)

    def _land(self, flight: _InFlight) -> _Ending | Decision:
        """The answer to a started write: the command's end, or its retry."""
        job, attempt = flight.job, flight.attempt
        status = "error"
        try:
            answered = flight.pending.result()
            status = str(answered)
        except UpstreamError as exc:
            status = _status_label(exc)
            if isinstance(exc, TransientError):
                self._traffic.after_request(failed=exc.status != 429)
                return self._after_transient(job, attempt, exc)
            self._traffic.after_request(failed=False)  # the upstream answered
            return self._ending(job, Outcome.FAILED, attempt, _event_error(exc), exc.status)
        except BaseException:
            self._traffic.abandon()
            raise
        finally:
            self._metrics.inflight(-1)
            elapsed = self._monotonic() - flight.started
            operation = _operation(job.command)
            self._metrics.upstream_request(operation=operation, status=status, seconds=elapsed)
        self._traffic.after_request(failed=False)
        return self._ending(job, Outcome.APPLIED, attempt, None, answered, applied=True)

    def _finish_wave(self, landed: list[ChunkResult | _Ending]) -> list[ChunkResult]:
        """Keep the wave's endings in one round trip, publish their events together,
        mark them published in one more."""
        endings = [result for result in landed if isinstance(result, _Ending)]
        finished = iter(self._store.finish_many([ending.request for ending in endings]))
        results: list[ChunkResult] = []
        outgoing: list[tuple[_Ending, OutgoingEvent]] = []
        for result in landed:
            if not isinstance(result, _Ending):
                results.append(result)
                continue
            decision, event = self._claimed(result, next(finished))
            results.append(decision)
            if event is not None:
                outgoing.append((result, event))
        if outgoing:
            self._events.publish_many([event for _, event in outgoing])
            self._store.mark_published_many([ending.key for ending, _ in outgoing])
        return results

    def _start_send(self, command: AnyCommand, deadline: float) -> PendingWrite:
        upstream = self._starts
        if upstream is None:
            return AnsweredWrite(self._send(command, deadline))
        if isinstance(command, ChangeBlockStatus):
            return upstream.start_change_block_status(
                command.org_id,
                command.subscription_id,
                command.block_id,
                active=command.active,
                reason=command.reason,
                idempotency_key=command.command_id,
                deadline=deadline,
            )
        return upstream.start_change_service_status(
            command.org_id,
            command.subscription_id,
            command.service_id,
            active=command.active,
            idempotency_key=command.command_id,
            deadline=deadline,
        )

    def _timed_send(self, command: AnyCommand, deadline: float) -> int:
        """:meth:`_send`, reported to the metrics (status, duration, in flight)."""
        operation = _operation(command)
        started = self._monotonic()
        status = "error"
        self._metrics.inflight(1)
        try:
            answered = self._send(command, deadline)
            status = str(answered)
            return answered
        except UpstreamError as exc:
            status = _status_label(exc)
            raise
        finally:
            self._metrics.inflight(-1)
            elapsed = self._monotonic() - started
            self._metrics.upstream_request(operation=operation, status=status, seconds=elapsed)

    def _send(self, command: AnyCommand, deadline: float) -> int:
        if isinstance(command, ChangeBlockStatus):
            return self._upstream.change_block_status(
                command.org_id,
                command.subscription_id,
                command.block_id,
                active=command.active,
                reason=command.reason,
                idempotency_key=command.command_id,
                deadline=deadline,
            )
        return self._upstream.change_service_status(
            command.org_id,
            command.subscription_id,
            command.service_id,
            active=command.active,
            idempotency_key=command.command_id,
            deadline=deadline,
        )


@dataclass(frozen=True)
class _Job:
    command: AnyCommand
    fingerprint: str
    token: str
    #: What the delivery leaves behind, deleted with its published mark.
    ended: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Ending:
    """A command's terminal event, built, and the store call that keeps it."""

    key: str
    event: ResultEvent
    request: FinishRequest


@dataclass(frozen=True)
class _InFlight:
    """An attempt whose write was started; ``started`` is when (monotonic)."""

    job: _Job
    attempt: int
    pending: PendingWrite
    started: float


class _Refused:
    """A write that could not even be started (its inputs were refused)."""

    def __init__(self, error: UpstreamError) -> None:
        self._error = error

    def result(self) -> int:
        raise self._error


#: What became of one command of a chunk: its decision, the exception it raised (a
#: bug), or ``None`` when the chunk ran out of time before it was started.
ChunkResult = Decision | Exception | None


def _waves(jobs: list[tuple[int, _Job]]) -> list[list[tuple[int, _Job]]]:
    """The chunk's commands in waves: the n-th command of each target in wave n."""
    waves: list[list[tuple[int, _Job]]] = []
    seen: dict[str, int] = {}
    for item in jobs:
        subject = item[1].command.target.subject
        number = seen.get(subject, 0)
        seen[subject] = number + 1
        if number == len(waves):
            waves.append([])
        waves[number].append(item)
    return waves


def _guarded(action: Callable[..., _T], *args: Any) -> _T | Exception:
    """``action(*args)``, or the exception it raised: one command's trouble stays its
    own. The store or broker away (:class:`UnavailableError`) is everyone's: raised."""
    try:
        return action(*args)
    except UnavailableError:
        raise
    except Exception as exc:
        logger.exception("a command of a chunk failed")
        return exc


def _context(command: AnyCommand) -> contextlib.AbstractContextManager[None]:
    """Every line logged inside carries the command's fields."""
    return log_context(
        command_id=command.command_id,
        correlation_id=command.correlation_id,
        lane=command.lane.value,
        target=command.target.subject,
    )


def _operation(command: AnyCommand) -> str:
    """The metrics' name of the write ``command`` makes."""
    if isinstance(command, ChangeBlockStatus):
        return "change_block_status"
    return "change_service_status"


def _status_label(exc: UpstreamError) -> str:
    """The HTTP status, or how the request failed without one (a bounded set)."""
    if exc.status is not None:
        return str(exc.status)
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamConnectionError):
        return "connection"
    return "error"


def _upstream_cause(exc: TransientError) -> RetryCause:
    if exc.status == 429:
        return RetryCause.UPSTREAM_429
    if exc.status is not None:
        return RetryCause.UPSTREAM_5XX
    if isinstance(exc, UpstreamTimeout):
        return RetryCause.UPSTREAM_TIMEOUT
    return RetryCause.UPSTREAM_CONNECTION


def _event_error(exc: UpstreamError) -> EventError:
    upstream = getattr(exc, "error", None)
    if upstream is None:
        return EventError(message=str(exc))
    return EventError(
        code=upstream.code,
        status=upstream.status,
        message=upstream.message or str(exc),
        detail_msg=upstream.detail_msg,
    )


def _stored_error(last_error: str | None, reason: OutOfTimeReason) -> tuple[EventError, int | None]:
    fallback = "not_after passed" if reason is OutOfTimeReason.EXPIRED else "no attempts left"
    if not last_error:
        return EventError(message=fallback), None
    stored = json.loads(last_error)
    error = EventError.model_validate(stored["error"])
    return error.model_copy(update={"message": f"{fallback}; last error: {error.message}"}), stored[
        "upstream_status"
    ]


def _as_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, sort_keys=True, default=str).encode()
