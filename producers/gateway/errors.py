"""Why the gateway refuses a request, as errors of the tree; the app renders each as an
``application/problem+json`` answer (RFC 9457) with its HTTP status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from subswitch.errors import InvalidInput, PermanentError, UnavailableError


@dataclass(frozen=True)
class Item:
    """One problem of one command: its place in the request (``index`` in a batch,
    ``None`` for a single command), the field (a dotted path) and what is wrong."""

    index: int | None
    field: str | None
    message: str
    command_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    """A command the gateway accepted: where its status is."""

    index: int | None
    command_id: str

    @property
    def location(self) -> str:
        """The status resource of the command (``GET`` it)."""
        return f"/v1/commands/{self.command_id}"


class RequestRefused(PermanentError):
    """The request is refused as it is; nothing of it was enqueued."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, items: Sequence[Item] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.items = tuple(items)


class InvalidCommands(RequestRefused, InvalidInput):
    """At least one command is invalid; ``items`` names each field."""

    status = 422
    title = "Invalid command"


class Unauthenticated(RequestRefused):
    """No API key, or one the policy does not know."""

    status = 401
    title = "Unauthenticated"


class Forbidden(RequestRefused):
    """The key's producer may not send (one of) these commands; ``items`` names the rule."""

    status = 403
    title = "Forbidden"


class CommandConflict(RequestRefused):
    """A ``command_id`` is known with another payload (or used twice in one batch)."""

    status = 409
    title = "Command id already used for another command"


class NotAccepted(UnavailableError):
    """The broker or the store failed: the request was not accepted (answered ``503``).

    ``accepted`` lists the commands of a batch that the broker had taken before it
    failed; they keep their acceptance record and will be applied. Every other command
    of the request has none.
    """

    def __init__(self, detail: str, accepted: Sequence[Accepted] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.accepted = tuple(accepted)
