"""What happens to one delivered command: the worker's policy in one place.

The Celery task is a thin shell around :meth:`Executor.handle`; everything it
decides (idempotency, ordering, retries, which event goes out) happens here against
small interfaces, so it runs the same under Celery and in unit tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Protocol

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
from subswitch.logs import add_log_context, log_context
from subswitch.policy import Refusal
from subswitch.signing import detach_signature
from subswitch.text import safe_line
from worker.metrics import NULL_RECORDER, Recorder
from worker.policy import RetryPolicy
from worker.store import (
    AlreadyApplied,
    Busy,
    Claim,
    Conflict,
    Finished,
    Go,
    Lost,
    OutOfBounds,
    OutOfTime,
    OutOfTimeReason,
    Settling,
    Store,
    Superseded,
    Unresolved,
)
from worker.traffic import TrafficControl
from worker.upstream.errors import (
    TransientError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
)

logger = logging.getLogger(__name__)


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
        store: Store,
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
        fields, signature = detach_signature(payload)
        ended = tuple(ended)
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
        decision = self._handle_command(command, token, ended)
        if isinstance(decision, RetryLater):
            self._metrics.retry(decision.cause.value)
        return decision

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
        # Every line logged while this command is handled carries its fields.
        with log_context(
            command_id=command.command_id,
            correlation_id=command.correlation_id,
            lane=command.lane.value,
            target=command.target.subject,
        ):
            decision = self._decide(command, token, ended)
            _log_decision(decision)
        return decision

    def _decide(self, command: AnyCommand, token: str, ended: tuple[str, ...]) -> Decision:
        fingerprint = command.fingerprint()
        now = self._clock()
        expired = command.not_after is not None and now > command.not_after
        step = self._store.begin(
            command,
            fingerprint=fingerprint,
            token=token,
            lease_ms=self._lease_ms,
            max_attempts=self._policy.max_attempts,
            expired=expired,
            settle_ms=self._settle_ms,
            out_of_bounds=self._bounds_error(command, now) is not None,
        )
        job = _Job(command, fingerprint, token, ended)
        if isinstance(step, Go):
            return self._attempt(job, step.attempt)
        if isinstance(step, Busy | Settling | Unresolved):
            return self._wait(command, step)
        if isinstance(step, Finished):
            return self._publish(step, keys.command(command.command_id), ended=ended)
        if isinstance(step, Conflict):
            return self._reject_conflict(job)
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
            delay = min(wait, self._policy.max_delay_s)
            self._store.give_back(
                command.command_id, command.target, token=job.token, retry_ms=int(delay * 1000)
            )
            return RetryLater(delay, "waiting for upstream budget", RetryCause.TRAFFIC)
        try:
            status = self._timed_send(command, deadline)
        except UpstreamError as exc:
            return self._after_error(job, attempt, exc)
        except BaseException:
            self._traffic.abandon()  # no answer to count; never keep a probe leased
            raise
        self._traffic.after_request(failed=False)
        return self._finish(job, Outcome.APPLIED, attempt, None, status, applied=True)

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
        event = result_event(
            job.command,
            outcome=outcome,
            attempts=attempts,
            completed_at=self._clock(),
            upstream_status=upstream_status,
            error=error,
        )
        body = event.to_json()
        finished = self._store.finish(
            job.command,
            fingerprint=job.fingerprint,
            token=job.token,
            event=body,
            applied=applied,
            upstream_status=upstream_status,
            settle_ms=settle_ms,
        )
        if isinstance(finished, Lost):
            # The lease ran out under this delivery: a new one decides, under a new lock.
            logger.warning("%s: lease lost before finishing", job.command.command_id)
            return RetryLater(self._policy.busy_delay(), "lease lost", RetryCause.LEASE_LOST)
        return self._publish(
            finished, keys.command(job.command.command_id), (event, body), job.ended
        )

    def _publish(
        self,
        finished: Finished,
        key: str,
        built: tuple[ResultEvent, bytes] | None = None,
        ended: tuple[str, ...] = (),
    ) -> Decision:
        # The event just built (and its body) is usually the one stored: spare parsing it.
        if built is not None and finished.event == built[1]:
            event = built[0]
        else:
            event = ResultEvent.model_validate_json(finished.event)
        if finished.claim is Claim.BUSY:
            return RetryLater(
                self._policy.busy_delay(), "event being published elsewhere", RetryCause.PUBLISHING
            )
        if built is not None and finished.event == built[1]:
            self._metrics.command_finished(event)  # decided by this delivery: counted once
        if finished.claim is Claim.PUBLISH:
            self._events.publish(
                finished.event, routing_key=event.outcome.routing_key, event_id=event.id
            )
            self._store.mark_published(key, ended=ended)
            return Ack(event.outcome, ended=bool(ended))
        return Ack(event.outcome)

    def _timed_send(self, command: AnyCommand, deadline: float) -> int:
        """:meth:`_send`, reported to the metrics (status, duration, in flight)."""
        operation = (
            "change_block_status"
            if isinstance(command, ChangeBlockStatus)
            else "change_service_status"
        )
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
