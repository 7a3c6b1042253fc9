"""What the operating commands read from the audit archive, as one small interface.

``subswitch status`` answers from the archive once a command's record has left the
store; ``subswitch retry`` and ``subswitch reconcile`` find a command's or a target's
newest event there. The archive (``subswitch.archive``) implements it on SQL; tests
pass an in-memory one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Protocol

from subswitch.contract import Outcome, ResultEvent, Target


class EventArchive(Protocol):
    """Read side of the audit archive."""

    def latest_event(self, command_id: str) -> ResultEvent | None:
        """The newest archived event of ``command_id`` (by completion time), if any."""
        ...

    def newest_applied(self, target: Target) -> ResultEvent | None:
        """The ``applied`` event of the newest command (by ``issued_at``, then
        ``command_id``) on ``target``, if any."""
        ...


class InMemoryEventArchive:
    """An :class:`EventArchive` in memory, for tests of what reads the archive.

    ``add`` keeps one event per event id (the archive's deduplication).
    """

    def __init__(self, events: Iterable[ResultEvent] = ()) -> None:
        self._events: dict[str, ResultEvent] = {}
        for event in events:
            self.add(event)

    def add(self, event: ResultEvent) -> None:
        """Archive ``event`` (a second copy of the same event id is ignored)."""
        self._events.setdefault(event.id, event)

    def latest_event(self, command_id: str) -> ResultEvent | None:
        """The newest archived event of ``command_id`` (by completion time), if any."""
        found = [e for e in self._events.values() if e.data.command_id == command_id]
        return max(found, key=lambda event: event.data.completed_at, default=None)

    def newest_applied(self, target: Target) -> ResultEvent | None:
        """The ``applied`` event of the newest command applied on ``target``, if any."""
        found = [e for e in self._events.values() if _applied_on(e, target)]
        return max(found, key=_issue_order, default=None)


def _applied_on(event: ResultEvent, target: Target) -> bool:
    data = event.data
    ident = data.block_id if target.kind == "block" else data.service_id
    return (
        data.outcome is Outcome.APPLIED
        and data.org_id == target.org_id
        and data.subscription_id == target.subscription_id
        and ident == target.ident
    )


def _issue_order(event: ResultEvent) -> tuple[datetime, str]:
    issued = event.data.issued_at or datetime.min.replace(tzinfo=UTC)
    return issued, event.data.command_id or ""
