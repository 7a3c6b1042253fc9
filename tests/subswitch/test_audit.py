"""The in-memory EventArchive that tests of status, retry and reconcile use."""

from __future__ import annotations

from datetime import timedelta

from subswitch.audit import EventArchive, InMemoryEventArchive
from subswitch.contract import Outcome, Target
from tests.subswitch.archive.conftest import T0, block, event_of


def test_it_answers_like_the_sql_archive() -> None:
    # Given an applied block, a newer applied unblock, a newest failure, and a duplicate
    older, newer, newest = (
        block(issued_at=T0 + timedelta(minutes=n), active=n != 1) for n in range(3)
    )
    events = [event_of(older), event_of(newer), event_of(newest, outcome=Outcome.FAILED)]
    archive: EventArchive = InMemoryEventArchive([*events, events[0]])
    # When the newest applied intent and the latest events are looked up
    applied = archive.newest_applied(Target("telco", 101, "block", 1))
    # Then they are the unblock, and each command's own event; unknown ones are None
    assert applied is not None and applied.data.command_id == newer.command_id
    latest = archive.latest_event(newest.command_id)
    assert latest is not None and latest.outcome is Outcome.FAILED
    assert archive.latest_event("unknown") is None
    assert archive.newest_applied(Target("telco", 101, "service", 1)) is None
    assert archive.newest_applied(Target("telco", 102, "block", 1)) is None
