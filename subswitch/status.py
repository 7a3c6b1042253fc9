"""Where a command is: read from the store while it is live, from the archive after.

:class:`StatusReader` answers ``subswitch status``, ``CommandProducer.status`` and the
gateway's ``GET /v1/commands/{id}`` (contract §7). It reads, in this order:

1. the worker's command record (``subswitch.keys.command``): ``in_flight`` (an attempt
   is out, since when), ``waiting`` (attempts made, the next one due, the last error),
   ``settling`` (an answer was lost; the target is held until when), or the terminal
   outcome with its event;
2. the rejections of messages that carried the id (``subswitch.keys.rejections``),
   when no command record exists (a message that was no valid command);
3. the acceptance record a producer wrote when the broker took the command
   (``subswitch.keys.acceptance``): ``queued``, not yet seen by a worker;
4. the audit archive, once the records expired;

and answers ``unknown`` for an id nobody has seen, never an error.

:func:`record_acceptance` writes the acceptance record, and tells a new command from a
repeat of one (``same``) and from a reuse of its id with another payload (``conflict``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

import redis
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from subswitch import keys
from subswitch.archive.store import SqlArchive
from subswitch.archive.url import archive_url
from subswitch.audit import EventArchive
from subswitch.contract import AnyCommand, EventError, Outcome, ResultEvent
from subswitch.errors import ArchiveError, StoreError
from subswitch.redis_client import redis_client
from subswitch.settings import Settings


class CommandState(StrEnum):
    """Where a command is (``CommandStatus.state``)."""

    UNKNOWN = "unknown"
    QUEUED = "queued"
    WAITING = "waiting"
    SETTLING = "settling"
    IN_FLIGHT = "in_flight"
    APPLIED = "applied"
    FAILED = "failed"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    EXPIRED = "expired"

    @property
    def in_progress(self) -> bool:
        """Accepted and not finished: it may still be applied."""
        return self in IN_PROGRESS

    @property
    def terminal(self) -> bool:
        """The command has its outcome (and its event)."""
        return self in TERMINAL


IN_PROGRESS: Final = frozenset(
    {CommandState.QUEUED, CommandState.WAITING, CommandState.SETTLING, CommandState.IN_FLIGHT}
)
TERMINAL: Final = frozenset(CommandState(outcome.value) for outcome in Outcome)


class CommandStatus(BaseModel):
    """Where one command is, with what is known about it there.

    ``attempts``: upstream attempts made so far. ``since``: when it entered this state
    (accepted, attempt sent, attempt failed, outcome reached). ``next_attempt_at``:
    when a ``waiting`` or ``settling`` command is tried again (a worker may take it a
    little later). ``settle_until``: how long its target stays held after a lost
    answer. ``last_error``: the last attempt's error, or the outcome's. ``event``: the
    result event of a terminal command. ``found_in``: ``store`` or ``archive``.
    ``rejected_reuses``: messages that reused this id with another payload, or could
    not be read, and were rejected (their events are not this command's).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str
    state: CommandState
    attempts: int | None = None
    since: datetime | None = None
    next_attempt_at: datetime | None = None
    settle_until: datetime | None = None
    last_error: str | None = None
    event: ResultEvent | None = None
    found_in: Literal["store", "archive"] | None = None
    rejected_reuses: int = 0


class Acceptance(StrEnum):
    """What :func:`record_acceptance` found."""

    #: Nobody knew this command id: the acceptance is recorded now.
    NEW = "new"
    #: This command (same id, same payload) was accepted or seen before.
    SAME = "same"
    #: The id is known with another payload: a worker will reject this one.
    CONFLICT = "conflict"


# KEYS: acceptance, command. ARGV: fingerprint, accepted at (ms), retention (s).
_ACCEPT_LUA: Final = """
local seen = redis.call('HGET', KEYS[2], 'fp')
if seen and seen ~= ARGV[1] then return 'conflict' end
local accepted = redis.call('HGET', KEYS[1], 'fp')
if accepted then
  if accepted ~= ARGV[1] then return 'conflict' end
  return 'same'
end
if seen then return 'same' end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 'new'
"""

_RECORD_FIELDS: Final = (
    "fp",
    "state",
    "attempts",
    "last_error",
    "settle_until",
    "since",
    "next_at",
    "event",
)
_STORE_TIMEOUT_S: Final = 5.0


def open_store(url: str) -> redis.Redis:
    """A client of the store at ``url`` (``redis://``, ``rediss://``, ``unix://``),
    with bounded timeouts and retries so an unreachable store fails in seconds."""
    return redis_client(
        url, timeout_s=_STORE_TIMEOUT_S, retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), 2)
    )


def configured_archive(settings: Settings) -> EventArchive | None:
    """The audit archive the settings name (``SUBSWITCH_ARCHIVE_URL``, else the default
    SQLite file), to answer once a command's records left the store; ``None`` when the
    default file does not exist, as no archive ever ran here (such a command is then
    ``unknown``).

    Raises:
        ConfigurationError: ``SUBSWITCH_ARCHIVE_URL`` cannot be used.
        ArchiveError: the SQLite file it names does not exist.
    """
    try:
        return SqlArchive.open(archive_url(settings))
    except ArchiveError:
        if settings.archive_url:
            raise
        return None


def record_acceptance(
    client: redis.Redis, command: AnyCommand, *, now: datetime, retention_s: int
) -> Acceptance:
    """Record that the broker accepted ``command`` (``queued`` until a worker sees it).

    Atomic: of two producers accepting one id with different payloads, one gets
    ``conflict``. Nothing is written for ``same`` or ``conflict``.

    Raises:
        StoreError: the store could not be reached.
    """
    accepted_ms = int(now.timestamp() * 1000)
    keys_ = [keys.acceptance(command.command_id), keys.command(command.command_id)]
    args: list[str | int] = [command.fingerprint(), accepted_ms, retention_s]
    try:
        reply = client.eval(_ACCEPT_LUA, len(keys_), *keys_, *args)
    except redis.RedisError as exc:
        raise StoreError(f"store unavailable: {exc}") from exc
    return Acceptance(_text(reply))


def record_acceptances(
    client: redis.Redis, commands: Sequence[AnyCommand], *, now: datetime, retention_s: int
) -> list[Acceptance]:
    """:func:`record_acceptance` for many commands (distinct ids) in one round trip: a
    pipeline, not a transaction; each command's record is atomic on its own.

    Raises:
        StoreError: the store could not be reached (some records may be written).
    """
    accepted_ms = int(now.timestamp() * 1000)
    script = client.register_script(_ACCEPT_LUA)
    try:
        with client.pipeline(transaction=False) as pipe:
            for command in commands:
                keys_ = [keys.acceptance(command.command_id), keys.command(command.command_id)]
                script(
                    keys=keys_, args=[command.fingerprint(), accepted_ms, retention_s], client=pipe
                )
            replies = pipe.execute()
    except redis.RedisError as exc:
        raise StoreError(f"store unavailable: {exc}") from exc
    return [Acceptance(_text(reply)) for reply in replies]


class StatusReader:
    """Answers where a command is (module doc); ``archive`` may be ``None`` (then a
    command whose records expired is ``unknown``)."""

    def __init__(self, *, client: redis.Redis, archive: EventArchive | None) -> None:
        self._redis = client
        self._archive = archive

    def __repr__(self) -> str:
        return f"StatusReader(archive={type(self._archive).__name__})"

    def status(self, command_id: str) -> CommandStatus:
        """The status of ``command_id``; ``unknown`` when nobody has seen it.

        Raises:
            StoreError: the store could not be reached.
        """
        record, rejection_keys, accepted = self._read(command_id)
        reuses = len(rejection_keys)
        if record.get("fp") is not None:
            return _from_record(command_id, record, reuses)
        if rejection_keys:
            return self._rejected(command_id, rejection_keys)
        if accepted.get("at") is not None:
            return CommandStatus(
                command_id=command_id,
                state=CommandState.QUEUED,
                since=_from_ms(accepted["at"]),
                attempts=0,
                found_in="store",
            )
        return self._from_archive(command_id)

    def _read(self, command_id: str) -> tuple[dict[str, bytes], list[bytes], dict[str, bytes]]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(keys.command(command_id), _RECORD_FIELDS)
        pipe.smembers(keys.rejections(command_id))
        pipe.hmget(keys.acceptance(command_id), ["fp", "at"])
        try:
            record, rejections, accepted = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"store unavailable: {exc}") from exc
        return (
            _present(_RECORD_FIELDS, record),
            sorted(rejections),
            _present(("fp", "at"), accepted),
        )

    def _rejected(self, command_id: str, record_keys: list[bytes]) -> CommandStatus:
        pipe = self._redis.pipeline(transaction=False)
        for key in record_keys:
            pipe.hget(key, "event")
        try:
            bodies = [body for body in pipe.execute() if body]
        except redis.RedisError as exc:
            raise StoreError(f"store unavailable: {exc}") from exc
        events = [event for event in map(_parse_event, bodies) if event is not None]
        if not events:  # the records expired between the two reads
            return self._from_archive(command_id)
        newest = max(events, key=lambda event: event.data.completed_at)
        return _terminal(command_id, newest, "store", len(record_keys) - 1)

    def _from_archive(self, command_id: str) -> CommandStatus:
        event = self._archive.latest_event(command_id) if self._archive is not None else None
        if event is None:
            return CommandStatus(command_id=command_id, state=CommandState.UNKNOWN)
        return _terminal(command_id, event, "archive", 0)


def _from_record(command_id: str, record: dict[str, bytes], reuses: int) -> CommandStatus:
    state = _text(record.get("state", b""))
    if state == "done":
        event = _parse_event(record.get("event", b""))
        if event is not None:
            return _terminal(command_id, event, "store", reuses)
    attempts = int(record.get("attempts", b"0"))
    since = _from_ms(record["since"]) if "since" in record else None
    if state == "sending":
        return CommandStatus(
            command_id=command_id,
            state=CommandState.IN_FLIGHT,
            attempts=attempts,
            since=since,
            found_in="store",
            rejected_reuses=reuses,
        )
    # waiting or settling; a record without a state was seen by a worker that found
    # a newer command on the target unresolved, and waits for it.
    settling = state == "settling" and "settle_until" in record
    next_at = _from_ms(record["next_at"]) if "next_at" in record else None
    settle_until = _from_ms(record["settle_until"]) if settling else None
    if next_at is not None and settle_until is not None:
        # A hold longer than a retry delay is waited out in more than one trip through
        # the broker: no attempt goes out before it ends.
        next_at = max(next_at, settle_until)
    return CommandStatus(
        command_id=command_id,
        state=CommandState.SETTLING if settling else CommandState.WAITING,
        attempts=attempts,
        since=since,
        next_attempt_at=next_at,
        settle_until=settle_until,
        last_error=_stored_error(record.get("last_error")),
        found_in="store",
        rejected_reuses=reuses,
    )


def _terminal(
    command_id: str, event: ResultEvent, found_in: Literal["store", "archive"], reuses: int
) -> CommandStatus:
    data = event.data
    return CommandStatus(
        command_id=command_id,
        state=CommandState(data.outcome.value),
        attempts=data.attempts,
        since=data.completed_at,
        last_error=describe_error(data.error, data.upstream_status),
        event=event,
        found_in=found_in,
        rejected_reuses=reuses,
    )


def describe_error(error: EventError | None, upstream_status: int | None = None) -> str | None:
    """An error on one line, ``upstream 503: Service Unavailable``; ``None`` if none."""
    if error is None:
        return None
    parts = [error.message]
    if error.detail_msg:
        parts.append(f"({error.detail_msg})")
    text = " ".join(parts)
    if upstream_status is None or str(upstream_status) in text:
        return text
    return f"upstream {upstream_status}: {text}"


def _stored_error(raw: bytes | None) -> str | None:
    """The worker keeps the last error as JSON (``error``, ``upstream_status``)."""
    if not raw:
        return None
    try:
        stored = json.loads(raw)
        error = EventError.model_validate(stored["error"])
    except (ValueError, KeyError, TypeError, ValidationError):
        return _text(raw)
    return describe_error(error, stored.get("upstream_status"))


def _parse_event(body: bytes) -> ResultEvent | None:
    try:
        return ResultEvent.model_validate_json(body)
    except ValidationError:
        return None


def _present(names: tuple[str, ...], values: list[Any]) -> dict[str, bytes]:
    return {name: value for name, value in zip(names, values, strict=True) if value is not None}


def _from_ms(raw: bytes) -> datetime:
    return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
