"""Build validated commands from keyword arguments, before anything touches a broker."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, TypedDict, TypeVar, Unpack

from pydantic import ValidationError

from producers.errors import InvalidCommandError
from subswitch.contract import (
    AnyCommand,
    ChangeBlockStatus,
    ChangeServiceStatus,
    InvalidCommand,
    Lane,
    TimeBounds,
    parse_command,
)
from subswitch.contract import describe_validation_error as _describe
from subswitch.settings import Settings

_C = TypeVar("_C", ChangeServiceStatus, ChangeBlockStatus)

#: Source a producer stamps on its commands unless told otherwise (``SUBSWITCH_SOURCE``).
DEFAULT_SOURCE: Final[str] = Settings.model_fields["source"].default


class Envelope(TypedDict, total=False):
    """Optional envelope fields of a command; ``None`` means "use the default"."""

    command_id: str | None
    issued_at: datetime | str | None
    not_after: datetime | str | None
    priority: Lane | str | None
    source: str | None
    correlation_id: str | None


ENVELOPE_FIELDS: Final = frozenset(Envelope.__annotations__)


def block_status_command(
    *,
    org_id: str,
    subscription_id: int,
    block_id: int,
    active: bool,
    reason: str | None = None,
    default_source: str = DEFAULT_SOURCE,
    **envelope: Unpack[Envelope],
) -> ChangeBlockStatus:
    """A validated ``ChangeBlockStatus``.

    Raises:
        InvalidCommandError: naming the offending field(s).
        TypeError: for an envelope argument the contract does not know.
    """
    fields = {
        "org_id": org_id,
        "subscription_id": subscription_id,
        "block_id": block_id,
        "active": active,
        "reason": reason,
    }
    return _build(ChangeBlockStatus, fields, envelope, default_source)


def service_status_command(
    *,
    org_id: str,
    subscription_id: int,
    service_id: int,
    active: bool,
    default_source: str = DEFAULT_SOURCE,
    **envelope: Unpack[Envelope],
) -> ChangeServiceStatus:
    """A validated ``ChangeServiceStatus``.

    Raises:
        InvalidCommandError: naming the offending field(s).
        TypeError: for an envelope argument the contract does not know.
    """
    fields = {
        "org_id": org_id,
        "subscription_id": subscription_id,
        "service_id": service_id,
        "active": active,
    }
    return _build(ChangeServiceStatus, fields, envelope, default_source)


def time_bounds(settings: Settings | None = None) -> TimeBounds:
    """The §2.6 bounds of ``settings`` (or of the defaults, without reading the
    environment)."""
    chosen = settings or Settings.model_construct()
    return TimeBounds(
        max_skew_s=chosen.max_clock_skew_seconds, retention_s=chosen.retention_seconds
    )


def check_time_bounds(command: AnyCommand, bounds: TimeBounds, *, now: datetime) -> None:
    """Refuse a command whose ``issued_at`` lies outside ``bounds`` at ``now``.

    Raises:
        InvalidCommandError: one line naming the bound and its setting.
    """
    violation = bounds.violation(command.issued_at, now=now)
    if violation is not None:
        raise InvalidCommandError(violation, command_id=command.command_id)


def revalidate(command: AnyCommand) -> AnyCommand:
    """``command`` as the worker will read it off the queue, or InvalidCommandError.

    A model built with ``model_construct`` skips validation; this round trip through
    JSON guarantees that only what the worker accepts is ever enqueued.
    """
    if not isinstance(command, ChangeServiceStatus | ChangeBlockStatus):
        raise TypeError(f"expected a command model, got {type(command).__name__}")
    try:
        return parse_command(command.model_dump(mode="json"))
    except InvalidCommand as exc:
        raise InvalidCommandError(str(exc), command_id=exc.command_id) from None


def _build(
    model: type[_C], fields: dict[str, Any], envelope: Mapping[str, Any], default_source: str
) -> _C:
    unknown = sorted(set(envelope) - ENVELOPE_FIELDS)
    if unknown:
        raise TypeError(
            f"unexpected envelope argument(s): {', '.join(unknown)}; "
            f"expected any of: {', '.join(sorted(ENVELOPE_FIELDS))}"
        )
    data = {name: value for name, value in envelope.items() if value is not None}
    data.setdefault("source", default_source)
    data.update(fields)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        command_id = data.get("command_id")
        raise InvalidCommandError(
            _describe(exc), command_id=command_id if isinstance(command_id, str) else None
        ) from None
