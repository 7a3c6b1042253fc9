"""The message contract between producers and workers (schema version 1).

This module is the only thing ``producers`` and ``worker`` share about messages:
the two command models, the result event, the outcomes, and the names of the
queues, the task and the events exchange. Everything here is a frozen pydantic v2
model or a constant; nothing here talks to a broker, a store or the network.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, NamedTuple, TypeAlias

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import ErrorDetails

from subswitch.clock import utcnow
from subswitch.errors import InvalidInput
from subswitch.text import UNSAFE_CHARACTERS, first_unsafe, safe_line

SCHEMA_VERSION: Final = 1

#: Celery task name every command travels under (one command per message).
APPLY_TASK: Final = "subswitch.apply"
#: Celery task name for bulk messages that carry many commands each.
APPLY_BATCH_TASK: Final = "subswitch.apply_batch"
#: Topic exchange the worker publishes one result event per command to.
EVENTS_EXCHANGE: Final = "subswitch.events"
#: Queue that keeps messages the worker could not decode, validate or authorise.
DEAD_LETTER_QUEUE: Final = "subswitch.dead"
#: The audit archive's own durable queue, bound to every result event.
ARCHIVE_QUEUE: Final = "subswitch.archive"
EVENT_CONTENT_TYPE: Final = "application/cloudevents+json"
EVENT_SOURCE: Final = "subswitch/worker"

MAX_INT64: Final = 2**63 - 1
# Fixed namespace so event ids are stable across processes, machines and releases.
_EVENT_ID_NAMESPACE: Final = uuid.UUID("6f1c2a52-7e0c-4bb4-9d8e-5b1f3c0a9e11")


class Lane(StrEnum):
    """Priority lane; each lane is one queue."""

    URGENT = "urgent"
    NORMAL = "normal"
    BULK = "bulk"

    @property
    def queue(self) -> str:
        """The broker queue of this lane, e.g. ``subswitch.urgent``."""
        return f"subswitch.{self.value}"


class Outcome(StrEnum):
    """Terminal outcome of one command."""

    APPLIED = "applied"
    FAILED = "failed"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    EXPIRED = "expired"

    @property
    def routing_key(self) -> str:
        """Routing key of the result event on the events exchange."""
        return f"command.{self.value}"


_COMMAND_ID_CHARS: Final = "A-Za-z0-9._:-"
_COMMAND_ID_MAX: Final = 128
#: The id rule as one regular expression (without anchors), for those who check ids
#: outside pydantic (the upstream client's Idempotency-Key): safe in a header.
COMMAND_ID_PATTERN: Final = rf"[{_COMMAND_ID_CHARS}]{{1,{_COMMAND_ID_MAX}}}"
#: Never '/', '.', '%' or spaces: the org id becomes a URL path segment upstream.
ORG_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
CommandId = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=_COMMAND_ID_MAX, pattern=rf"^[{_COMMAND_ID_CHARS}]+$"
    ),
]
OrgId = Annotated[str, StringConstraints(pattern=rf"^{ORG_ID_PATTERN}$")]
Int64Id = Annotated[StrictInt, Field(ge=1, le=MAX_INT64)]
BlockId = Annotated[StrictInt, Field(ge=1, le=2)]
# No control, bidi or invisible format character: these fields reach logs, terminals
# and upstream audit trails, where such characters hide or reorder text.
_NoControl = f"^[^{UNSAFE_CHARACTERS}]*$"
Reason = Annotated[str, StringConstraints(max_length=255, pattern=_NoControl)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NoControl)]
CorrelationId = Annotated[str, StringConstraints(max_length=128, pattern=_NoControl)]


def _new_command_id() -> str:
    return str(uuid.uuid4())


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _CommandBase(_Frozen):
    schema_version: Literal[1] = SCHEMA_VERSION
    command_id: CommandId = Field(default_factory=_new_command_id)
    org_id: OrgId
    subscription_id: Int64Id
    active: StrictBool
    issued_at: AwareDatetime = Field(default_factory=utcnow)
    not_after: AwareDatetime | None = None
    priority: Lane = Lane.NORMAL
    source: Source
    correlation_id: CorrelationId | None = None

    @property
    def lane(self) -> Lane:
        """The lane (and so the queue) this command travels on."""
        return self.priority

    @property
    def order_key(self) -> tuple[int, str]:
        """``(issued_at in µs since the epoch, command_id)``: orders commands per target."""
        return (_epoch_micros(self.issued_at), self.command_id)

    def fingerprint(self) -> str:
        """SHA-256 of what the command asks of its target.

        Two messages with one ``command_id`` are the same command when their
        fingerprints match. Envelope fields (``issued_at``, ``priority``,
        ``source``...) are left out on purpose: a producer that re-sends after a
        lost acknowledgement without pinning ``issued_at`` still sends a duplicate,
        not a conflicting command.
        """
        intent = self.model_dump(mode="json", include=self._intent_fields())
        canonical = json.dumps(intent, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def _intent_fields(cls) -> set[str]:
        return {"type", "org_id", "subscription_id", "active"}


class ChangeServiceStatus(_CommandBase):
    """Activate (``active=True``) or deactivate a service of a subscription."""

    type: Literal["ChangeServiceStatus"] = "ChangeServiceStatus"
    service_id: Int64Id

    @property
    def target(self) -> Target:
        """The ``(org, subscription, kind, id)`` this command changes."""
        return Target(self.org_id, self.subscription_id, "service", self.service_id)

    @classmethod
    def _intent_fields(cls) -> set[str]:
        return super()._intent_fields() | {"service_id"}


class ChangeBlockStatus(_CommandBase):
    """Put a barring on (``active=True``) or lift it; block ids are 1 or 2."""

    type: Literal["ChangeBlockStatus"] = "ChangeBlockStatus"
    block_id: BlockId
    reason: Reason | None = None

    @property
    def target(self) -> Target:
        """The ``(org, subscription, kind, id)`` this command changes."""
        return Target(self.org_id, self.subscription_id, "block", self.block_id)

    @classmethod
    def _intent_fields(cls) -> set[str]:
        return super()._intent_fields() | {"block_id", "reason"}


#: Either command model: the type everything that handles commands takes.
AnyCommand: TypeAlias = ChangeServiceStatus | ChangeBlockStatus
Command = Annotated[AnyCommand, Field(discriminator="type")]
_COMMAND_ID_ADAPTER: Final[TypeAdapter[str]] = TypeAdapter(CommandId)
COMMAND_ADAPTER: Final[TypeAdapter[AnyCommand]] = TypeAdapter(Command)

_COMMAND_TYPES: Final = ("ChangeServiceStatus", "ChangeBlockStatus")
#: Fields a command must carry on the wire even though the SDK fills them in: a worker
#: never invents an id or a timestamp (``parse_command`` refuses a message without them).
WIRE_REQUIRED: Final = ("type", "schema_version", "command_id", "issued_at", "source")


class Target(NamedTuple):
    """What one command changes: a service or a block of one subscription."""

    org_id: str
    subscription_id: int
    kind: Literal["service", "block"]
    ident: int

    @property
    def subject(self) -> str:
        """CloudEvents subject, e.g. ``orgs/telco/subscriptions/7/blocks/1``."""
        return f"orgs/{self.org_id}/subscriptions/{self.subscription_id}/{self.kind}s/{self.ident}"


class InvalidCommand(InvalidInput):
    """A message is not a valid command; ``str()`` is one line naming what is wrong.

    A :class:`~subswitch.errors.PermanentError` and a ``ValueError``.
    """

    def __init__(self, message: str, *, command_id: str | None = None) -> None:
        super().__init__(safe_line(message))
        self.command_id = command_id


def parse_command(data: Any) -> ChangeServiceStatus | ChangeBlockStatus:
    """Validate a command as received from a queue (a dict, JSON text or bytes).

    Raises:
        InvalidCommand: with a one-line reason and the ``command_id`` if readable.
    """
    if isinstance(data, str | bytes | bytearray):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise InvalidCommand(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidCommand(f"a command is a JSON object, got {type(data).__name__}")
    command_id = readable_command_id(data.get("command_id"))
    missing = [name for name in WIRE_REQUIRED if name not in data]
    if missing:
        raise InvalidCommand(f"missing field(s): {', '.join(missing)}", command_id=command_id)
    try:
        return COMMAND_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidCommand(describe_validation_error(exc), command_id=command_id) from None


def readable_command_id(candidate: Any) -> str | None:
    """``candidate`` if it is a valid command id, else ``None`` (to name what was rejected)."""
    try:
        return _COMMAND_ID_ADAPTER.validate_python(candidate)
    except ValidationError:
        return None


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each offending field, e.g. ``block_id: Input should be ...``.

    Bounded (at most ``MAX_REASON_BYTES``, the rest counted) and escaped: a message
    with thousands of unknown fields, or field names with CR/LF, still yields one
    short line fit for a dead-letter header and a log.
    """
    errors = exc.errors(include_url=False)
    parts: list[str] = []
    size = 0
    for error in errors:
        part = safe_line(_describe_error(error), limit=200)
        size += len(part.encode()) + 2
        if size > _DESCRIBE_BUDGET:
            break
        parts.append(part)
    more = len(errors) - len(parts)
    return safe_line("; ".join(parts) + (f"; and {more} more" if more else ""))


# Room for the parts, leaving some for the "and N more" tail.
_DESCRIBE_BUDGET: Final = 900


def _describe_error(error: ErrorDetails) -> str:
    loc = error["loc"]
    if loc and loc[0] in _COMMAND_TYPES:  # the union's tag says nothing to the reader
        loc = loc[1:]
    location = ".".join(str(part) for part in loc) or "command"
    message = error["msg"]
    unsafe = first_unsafe(error["input"]) if isinstance(error["input"], str) else None
    if error["type"] == "string_pattern_mismatch" and unsafe is not None:
        message = f"must not contain control, bidi or invisible format characters ({unsafe})"
    return f"{location}: {message}"


@dataclass(frozen=True)
class TimeBounds:
    """How far from now a command's ``issued_at`` may lie (contract §2.6).

    Ahead by more than ``max_skew_s`` (a wrong clock would pin its target: every
    real command after it would be superseded), or older than ``retention_s``
    (beyond it a duplicate could no longer be recognised): the command is refused.
    """

    max_skew_s: float
    retention_s: float

    def violation(self, issued_at: datetime, *, now: datetime) -> str | None:
        """Why ``issued_at`` is out of bounds at ``now`` (one line), or ``None``."""
        if issued_at > now + timedelta(seconds=self.max_skew_s):
            return (
                f"issued_at: {issued_at.isoformat()} is more than {self.max_skew_s:g} s "
                f"ahead of now ({now.isoformat(timespec='seconds')}; "
                "SUBSWITCH_MAX_CLOCK_SKEW_SECONDS)"
            )
        if issued_at < now - timedelta(seconds=self.retention_s):
            return (
                f"issued_at: {issued_at.isoformat()} is more than {self.retention_s:g} s "
                f"old (SUBSWITCH_RETENTION_SECONDS): a duplicate of it could no longer "
                "be recognised"
            )
        return None


# --- result events -------------------------------------------------------------------


class EventError(_Frozen):
    """Why a command failed or was rejected (upstream ``ErrorMessage`` fields or ours)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    code: int | None = None
    status: str | None = None
    message: str
    detail_msg: str | None = Field(default=None, alias="detailMsg")

    def one_line(self) -> str:
        """The error on one line: ``code=404 status=NOT_FOUND message (detail)``."""
        fields = [
            f"code={self.code}" if self.code is not None else "",
            f"status={self.status}" if self.status else "",
            self.message,
            f"({self.detail_msg})" if self.detail_msg else "",
        ]
        return " ".join(field for field in fields if field)


class EventData(_Frozen):
    """The ``data`` of a result event. Target fields are null only for a message
    so malformed that they could not be read."""

    command_id: str | None
    command_type: str | None
    org_id: str | None
    subscription_id: int | None
    block_id: int | None = None
    service_id: int | None = None
    active: bool | None
    reason: str | None = None
    outcome: Outcome
    attempts: int = Field(ge=0)
    upstream_status: int | None = None
    error: EventError | None = None
    issued_at: datetime | None
    completed_at: datetime
    priority: Lane | None
    source: str | None
    correlation_id: str | None = None


class ResultEvent(_Frozen):
    """One terminal event per command: a CloudEvents 1.0 structured-mode JSON object."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = EVENT_SOURCE
    type: str
    time: datetime
    subject: str
    datacontenttype: Literal["application/json"] = "application/json"
    data: EventData

    @property
    def outcome(self) -> Outcome:
        """The command's outcome."""
        return self.data.outcome

    def to_json(self) -> bytes:
        """The event body as published (``detailMsg`` keeps its upstream spelling)."""
        return self.model_dump_json(by_alias=True).encode()


def event_id(command_id: str | None, fingerprint: str) -> str:
    """Stable event id: a redelivered event keeps it; a conflicting reuse of a
    ``command_id`` (another fingerprint) gets another."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{command_id or ''}\n{fingerprint}"))


def result_event(
    command: ChangeServiceStatus | ChangeBlockStatus,
    *,
    outcome: Outcome,
    attempts: int,
    completed_at: datetime,
    upstream_status: int | None = None,
    error: EventError | None = None,
    fingerprint: str | None = None,
) -> ResultEvent:
    """Build the result event of a valid command.

    ``fingerprint`` overrides the command's own for the event id; leave it unset.
    """
    data = EventData(
        command_id=command.command_id,
        command_type=command.type,
        org_id=command.org_id,
        subscription_id=command.subscription_id,
        block_id=getattr(command, "block_id", None),
        service_id=getattr(command, "service_id", None),
        active=command.active,
        reason=getattr(command, "reason", None),
        outcome=outcome,
        attempts=attempts,
        upstream_status=upstream_status,
        error=error,
        issued_at=command.issued_at,
        completed_at=completed_at,
        priority=command.priority,
        source=command.source,
        correlation_id=command.correlation_id,
    )
    return ResultEvent(
        id=event_id(command.command_id, fingerprint or command.fingerprint()),
        type=f"subswitch.command.{outcome.value}",
        time=completed_at,
        subject=command.target.subject,
        data=data,
    )


def rejected_message_event(
    raw: bytes, *, reason: str, command_id: str | None, completed_at: datetime
) -> ResultEvent:
    """The ``rejected`` event of a message that is not a valid command."""
    data = EventData(
        command_id=command_id,
        command_type=None,
        org_id=None,
        subscription_id=None,
        active=None,
        outcome=Outcome.REJECTED,
        attempts=0,
        error=EventError(message=reason),
        issued_at=None,
        completed_at=completed_at,
        priority=None,
        source=None,
    )
    return ResultEvent(
        id=event_id(command_id, hashlib.sha256(raw).hexdigest()),
        type=f"subswitch.command.{Outcome.REJECTED.value}",
        time=completed_at,
        subject=f"commands/{command_id or 'unknown'}",
        data=data,
    )


def _epoch_micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
