"""Send a failed, expired or rejected command again, as a new command (contract §7).

The retry of ``x`` is ``x.r1``, of ``x.r1`` ``x.r2``: the next number no command has
used. It asks the same of the same target (rebuilt from the original's result event,
found in the store or the archive), keeps the ``correlation_id`` and the lane, names
who retried in ``source``, and keeps the original ``issued_at`` unless told to issue it
now, so a retry never overrides a newer intent on its target by accident. It carries no
``not_after`` unless given one: an expired command's deadline has passed, and a failed
one's is not in its event.

Refused, with the reason: an id nobody has seen, a command still in progress (it may
still be applied), an applied or superseded one (sending it again would repeat or undo
an intent), one already retried by a retry that is in progress or done, a rejected
message that was no readable command, and a retry id over 128 characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from pydantic import ValidationError

from producers.errors import InvalidCommandError
from producers.producer import CommandProducer
from subswitch.clock import utcnow
from subswitch.contract import (
    COMMAND_ADAPTER,
    AnyCommand,
    EventData,
    describe_validation_error,
    readable_command_id,
)
from subswitch.errors import InvalidInput, PermanentError
from subswitch.status import CommandState, CommandStatus

#: The contract's longest command id.
MAX_COMMAND_ID: Final = 128
RETRYABLE: Final = frozenset({CommandState.FAILED, CommandState.EXPIRED, CommandState.REJECTED})
_RETRY_SUFFIX: Final = re.compile(r"^(?P<base>.+)\.r(?P<n>[1-9][0-9]{0,8})$")


class RetryRefused(PermanentError):
    """This command is not sent again; ``str()`` says why, naming it. ``state``: where
    the command is, when that was read."""

    def __init__(self, command_id: str, reason: str, state: CommandState | None = None) -> None:
        super().__init__(f"{command_id}: {reason}")
        self.command_id = command_id
        self.reason = reason
        self.state = state


def retry_chain(command_id: str) -> tuple[str, int]:
    """``(base, n)``: ``x.r2`` is the second retry of ``x``; ``x`` is ``(x, 0)``."""
    match = _RETRY_SUFFIX.match(command_id)
    if match is None:
        return command_id, 0
    return match["base"], int(match["n"])


@dataclass(frozen=True)
class Retried:
    """A retry sent: the original's id and state, and the new command."""

    original: CommandStatus
    command: AnyCommand


class Retrier:
    """Retries commands through ``producer``, which must have the store.

    ``source``: who retries (the new commands' ``source``). ``fresh``: stamp
    ``issued_at`` now instead of keeping the original's. ``not_after``: a deadline for
    the retries (RFC 3339), none by default.
    """

    def __init__(
        self,
        *,
        producer: CommandProducer,
        source: str,
        fresh: bool = False,
        not_after: datetime | str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._producer = producer
        self._source = source
        self._fresh = fresh
        self._not_after = not_after
        self._clock = clock

    def retry(self, command_id: str) -> Retried:
        """Send ``command_id`` again as its next retry.

        Raises:
            RetryRefused: it may not be retried (the reason says why).
            InvalidInput: ``command_id`` is not a command id.
            StoreError, PublishError: the store or the broker could not be reached.
        """
        original, command = self.plan(command_id)
        try:
            self._producer.send(command)
        except InvalidCommandError as exc:
            if self._fresh or "issued_at" not in str(exc):
                raise
            reason = f"{exc}; retry it with --now to issue it anew"
            raise RetryRefused(command_id, reason, original.state) from None
        return Retried(original=original, command=command)

    def plan(self, command_id: str) -> tuple[CommandStatus, AnyCommand]:
        """The original's status and the retry that would be sent; nothing is sent."""
        if readable_command_id(command_id) is None:
            raise InvalidInput(f"not a command id: {command_id!r}")
        original = self._producer.status(command_id)
        data = _retryable_data(original)
        retry_id = self._next_free_id(original)
        return original, self._rebuild(command_id, data, retry_id)

    def _next_free_id(self, original: CommandStatus) -> str:
        command_id = original.command_id
        base, n = retry_chain(command_id)
        while True:
            n += 1
            candidate = f"{base}.r{n}"
            if len(candidate) > MAX_COMMAND_ID:
                raise RetryRefused(
                    command_id,
                    f"its retry id {candidate!r} would be longer than {MAX_COMMAND_ID} "
                    "characters; send the command anew with an id of your own",
                    original.state,
                )
            state = self._producer.status(candidate).state
            if state is CommandState.UNKNOWN:
                return candidate
            if state not in RETRYABLE:
                raise RetryRefused(
                    command_id,
                    f"it was retried already as {candidate}, which is {state.value}",
                    original.state,
                )

    def _rebuild(self, original: str, data: EventData, retry_id: str) -> AnyCommand:
        fields = {
            "type": data.command_type,
            "org_id": data.org_id,
            "subscription_id": data.subscription_id,
            "block_id": data.block_id,
            "service_id": data.service_id,
            "active": data.active,
            "reason": data.reason,
            "command_id": retry_id,
            "issued_at": self._clock() if self._fresh else data.issued_at,
            "not_after": self._not_after,
            "priority": data.priority,
            "source": self._source,
            "correlation_id": data.correlation_id,
        }
        try:
            return COMMAND_ADAPTER.validate_python(
                {name: value for name, value in fields.items() if value is not None}
            )
        except ValidationError as exc:
            # --source or --not-after, or an event no command could have produced
            raise InvalidCommandError(
                f"the retry of {original}: {describe_validation_error(exc)}", command_id=retry_id
            ) from None


_REFUSALS: Final = {
    CommandState.UNKNOWN: "nobody has seen this command (no record in the store or the archive)",
    CommandState.APPLIED: "it was applied: nothing to retry",
    CommandState.SUPERSEDED: (
        "it was superseded by a newer command on its target: sending it again would undo that"
    ),
}


def _retryable_data(original: CommandStatus) -> EventData:
    """The original's event data, or RetryRefused saying why it is not retried."""
    command_id, state = original.command_id, original.state
    if state in _REFUSALS:
        raise RetryRefused(command_id, _REFUSALS[state], state)
    if state.in_progress:
        raise RetryRefused(
            command_id,
            f"it is still {state.value} and may yet be applied; retry it once it failed, "
            "expired or was rejected (subswitch status shows where it is)",
            state,
        )
    if original.event is None:
        raise RetryRefused(command_id, "no event to rebuild it from", state)
    data = original.event.data
    if data.command_type is None or data.org_id is None or data.subscription_id is None:
        raise RetryRefused(
            command_id, "it was rejected as no readable command: nothing to rebuild it from", state
        )
    return data
