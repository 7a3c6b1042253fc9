"""What the operating commands read from the audit archive, as one small interface.

``subswitch status`` answers from the archive once a command's record has left the
store; ``subswitch retry`` and ``subswitch reconcile`` find a command's or a target's
newest event there. The archive (``subswitch.archive``) implements it on SQL; tests
pass an in-memory one.
"""

from __future__ import annotations

from typing import Protocol

from subswitch.contract import ResultEvent, Target


class EventArchive(Protocol):
    """Read side of the audit archive."""

    def latest_event(self, command_id: str) -> ResultEvent | None:
        """The newest archived event of ``command_id`` (by completion time), if any."""
        ...

    def newest_applied(self, target: Target) -> ResultEvent | None:
        """The ``applied`` event of the newest command (by ``issued_at``, then
        ``command_id``) on ``target``, if any."""
        ...
