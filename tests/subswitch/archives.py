"""An in-memory :class:`~subswitch.audit.EventArchive` for tests."""

from __future__ import annotations

from collections.abc import Iterable

from subswitch.contract import Outcome, ResultEvent, Target


class MemoryArchive:
    """Keeps every event given; answers as the SQL archive does."""

    def __init__(self, events: Iterable[ResultEvent] = ()) -> None:
        self.events: list[ResultEvent] = list(events)

    def add(self, event: ResultEvent) -> None:
        """Archive one more event."""
        self.events.append(event)

    def latest_event(self, command_id: str) -> ResultEvent | None:
        """The newest event of ``command_id`` by completion time."""
        mine = [e for e in self.events if e.data.command_id == command_id]
        return max(mine, key=lambda e: e.data.completed_at, default=None)

    def newest_applied(self, target: Target) -> ResultEvent | None:
        """The applied event of the newest command on ``target``."""
        applied = [
            e
            for e in self.events
            if e.data.outcome is Outcome.APPLIED and e.subject == target.subject
        ]
        return max(applied, key=lambda e: (e.data.issued_at, e.data.command_id or ""), default=None)
