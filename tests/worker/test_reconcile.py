"""Reconcile's comparison and repair, on fakeredis, an in-memory archive and a fake
upstream."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from typer.testing import CliRunner

from subswitch import keys
from subswitch.cli import app
from subswitch.contract import (
    AnyCommand,
    ChangeBlockStatus,
    ChangeServiceStatus,
    Lane,
    Outcome,
    ResultEvent,
    Target,
    result_event,
)
from subswitch.errors import InvalidInput
from worker.reconcile import (
    Drift,
    Intent,
    Reconciler,
    StoreIntents,
    Totals,
    read_targets,
    repair_command,
)
from worker.reconcile_cli import parse_since
from worker.upstream.errors import UpstreamUnavailable
from worker.upstream.models import Block, Service, SubscriptionBlocks, SubscriptionServices

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BLOCK = Target("telco", 7, "block", 1)
SERVICE = Target("telco", 7, "service", 2)


def block_command(command_id: str = "fraud-1", **overrides: Any) -> ChangeBlockStatus:
    fields: dict[str, Any] = {
        "command_id": command_id, "org_id": "telco", "subscription_id": 7, "block_id": 1,
        "active": True, "reason": "stolen", "source": "fraud", "priority": "urgent",
        "issued_at": NOW - timedelta(hours=1), "correlation_id": "case-9",
    }  # fmt: skip
    fields.update(overrides)
    return ChangeBlockStatus(**fields)


def service_command(command_id: str = "bill-1", **overrides: Any) -> ChangeServiceStatus:
    fields: dict[str, Any] = {
        "command_id": command_id, "org_id": "telco", "subscription_id": 7, "service_id": 2,
        "active": False, "source": "billing", "issued_at": NOW - timedelta(hours=2),
    }  # fmt: skip
    fields.update(overrides)
    return ChangeServiceStatus(**fields)


def applied(command: AnyCommand) -> ResultEvent:
    return result_event(command, outcome=Outcome.APPLIED, attempts=1, completed_at=NOW)


def record_applied(client: fakeredis.FakeRedis, command: AnyCommand, *, event: bool = True) -> None:
    """What the worker leaves in the store after applying ``command``."""
    us = int(command.issued_at.timestamp() * 1_000_000)
    client.hset(keys.target(command.target), mapping={"us": us, "id": command.command_id,
                                                      "status": 201})  # fmt: skip
    if event:
        client.hset(keys.command(command.command_id), mapping={
            "state": "done", "event": applied(command).to_json()})  # fmt: skip


@dataclass
class MemoryArchive:
    events: dict[Target, ResultEvent] = field(default_factory=dict)

    def latest_event(self, command_id: str) -> ResultEvent | None:
        return None

    def newest_applied(self, target: Target) -> ResultEvent | None:
        return self.events.get(target)


@dataclass
class FakeUpstream:
    blocks: dict[int, bool] = field(default_factory=lambda: {1: False, 2: False})
    services: dict[int, bool] = field(default_factory=lambda: {1: True, 2: True})
    reads: list[str] = field(default_factory=list)
    error: Exception | None = None

    def list_blocks(self, org_id: str, subscription_id: int) -> SubscriptionBlocks:
        self.reads.append(f"blocks {org_id}/{subscription_id}")
        if self.error:
            raise self.error
        items = tuple(Block(id=i) for i, on in self.blocks.items() if on)
        return SubscriptionBlocks(items=items)

    def list_services(self, org_id: str, subscription_id: int) -> SubscriptionServices:
        self.reads.append(f"services {org_id}/{subscription_id}")
        items = tuple(Service(id=i, active=on) for i, on in self.services.items())
        return SubscriptionServices(items=items)


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def reconciler(
    client: fakeredis.FakeRedis, upstream: FakeUpstream, *, archive: MemoryArchive | None = None,
    enqueued: list[AnyCommand] | None = None, **extra: Any,
) -> Reconciler:  # fmt: skip
    intents = StoreIntents(client=client, archive=archive)
    return Reconciler(
        intents=intents, upstream=upstream, clock=lambda: NOW, watermark=intents.watermark,
        in_flight=intents.in_flight,
        enqueue=enqueued.append if enqueued is not None else None, **extra,
    )  # fmt: skip


def test_a_block_the_upstream_still_holds_is_in_sync(client: fakeredis.FakeRedis) -> None:
    # Given a fraud block applied, and the upstream showing it on
    record_applied(client, block_command())
    upstream = FakeUpstream(blocks={1: True})
    # When it is reconciled
    report = reconciler(client, upstream).check(BLOCK)
    # Then it is in sync, from the store's record
    assert report.verdict is Drift.IN_SYNC
    assert report.intent is not None
    assert (report.intent.found_in, report.intent.command_id) == ("store", "fraud-1")
    assert report.upstream_active is True


def test_a_block_lifted_behind_subswitchs_back_has_drifted(client: fakeredis.FakeRedis) -> None:
    # Given a block applied, which another system lifted since
    record_applied(client, block_command())
    # When it is reconciled without repair
    report = reconciler(client, FakeUpstream(blocks={1: False})).check(BLOCK)
    # Then it has drifted, and nothing is repaired
    assert report.verdict is Drift.DRIFTED
    assert (report.upstream_active, report.repair) == (False, None)
    assert report.to_json()["drift"] is True


def test_a_drifted_target_is_repaired_with_a_new_command_that_wins(
    client: fakeredis.FakeRedis,
) -> None:
    # Given a drifted block
    record_applied(client, block_command())
    enqueued: list[AnyCommand] = []
    # When it is reconciled with repair
    report = reconciler(client, FakeUpstream(), enqueued=enqueued).check(BLOCK)
    # Then its intent is enqueued again: new id, pointing at the original, issued now
    (repair,) = enqueued
    assert isinstance(repair, ChangeBlockStatus)
    assert report.repair == repair.command_id == f"fraud-1.reconcile.{int(NOW.timestamp())}"
    assert (repair.target, repair.active, repair.reason) == (BLOCK, True, "stolen")
    assert (repair.source, repair.correlation_id) == ("reconcile", "fraud-1")
    assert (repair.issued_at, repair.priority) == (NOW, Lane.URGENT)


def test_a_service_switched_back_on_has_drifted_and_one_still_off_is_in_sync(
    client: fakeredis.FakeRedis,
) -> None:
    # Given services 1 and 2 switched off by billing; another system switched 2 back on
    record_applied(client, service_command())
    record_applied(client, service_command("bill-0", service_id=1))
    upstream = FakeUpstream(services={1: False, 2: True})
    # When both are reconciled
    reports = list(reconciler(client, upstream).reconcile([Target("telco", 7, "service", 1),
                                                           SERVICE]))  # fmt: skip
    # Then 2 drifted, 1 is in sync, and the services were read once for both
    assert [r.verdict for r in reports] == [Drift.IN_SYNC, Drift.DRIFTED]
    assert upstream.reads == ["services telco/7"]


def test_a_target_without_an_applied_intent_is_not_compared(client: fakeredis.FakeRedis) -> None:
    # Given a target nothing was applied to, when it is reconciled
    upstream = FakeUpstream()
    report = reconciler(client, upstream).check(BLOCK)
    # Then it has no intent and the upstream is not read for it
    assert report.verdict is Drift.NO_INTENT
    assert upstream.reads == []


def test_the_archive_answers_once_the_store_forgot_the_command(
    client: fakeredis.FakeRedis,
) -> None:
    # Given a watermark whose command record expired, and the archive holding its event
    command = block_command()
    record_applied(client, command, event=False)
    archive = MemoryArchive({BLOCK: applied(command)})
    # When it is reconciled
    report = reconciler(client, FakeUpstream(blocks={1: True}), archive=archive).check(BLOCK)
    # Then the intent comes from the archive
    assert report.intent is not None
    assert report.intent.found_in == "archive"
    assert report.verdict is Drift.IN_SYNC


def test_an_upstream_that_cannot_be_read_makes_the_target_unreadable(
    client: fakeredis.FakeRedis,
) -> None:
    # Given an applied block and an upstream answering 503
    record_applied(client, block_command())
    upstream = FakeUpstream(error=UpstreamUnavailable("GET blocks: 503 Service Unavailable"))
    # When it is reconciled
    report = reconciler(client, upstream, enqueued=[]).check(BLOCK)
    # Then it is unreadable, with the reason, and not repaired
    assert report.verdict is Drift.UNREADABLE
    assert "503" in (report.error or "")
    assert report.repair is None


def test_no_repair_goes_out_when_a_newer_command_was_applied_meanwhile(
    client: fakeredis.FakeRedis,
) -> None:
    # Given a drifted block whose watermark moves to a newer command after it was read
    record_applied(client, block_command())
    enqueued: list[AnyCommand] = []
    newer = block_command("care-2", active=False, issued_at=NOW - timedelta(minutes=1))
    watermarks = iter(["care-2"])

    def moved(target: Target) -> str | None:
        record_applied(client, newer)
        return next(watermarks)

    intents = StoreIntents(client=client)
    rec = Reconciler(intents=intents, upstream=FakeUpstream(), clock=lambda: NOW,
                     enqueue=enqueued.append, watermark=moved)  # fmt: skip
    # When it is reconciled with repair
    report = rec.check(BLOCK)
    # Then nothing is enqueued, and the report says why
    assert enqueued == []
    assert "care-2" in (report.not_repaired or "")


@pytest.mark.parametrize("held_by", ["lock", "pending"])
def test_no_repair_goes_out_while_a_command_is_on_its_way_to_the_target(
    client: fakeredis.FakeRedis, held_by: str
) -> None:
    # Given a drifted block whose target a command holds, or has an unresolved attempt on
    record_applied(client, block_command())
    if held_by == "lock":
        client.set(keys.target_lock(BLOCK), "token-1", px=30_000)
    else:
        client.hset(keys.target_pending(BLOCK), "care-3", 1)
    enqueued: list[AnyCommand] = []
    # When it is reconciled with repair
    report = reconciler(client, FakeUpstream(), enqueued=enqueued).check(BLOCK)
    # Then it is reported drifted but not repaired: that command decides
    assert report.verdict is Drift.DRIFTED
    assert enqueued == []
    assert report.not_repaired is not None


def test_each_upstream_read_waits_for_a_slot_of_the_global_rate_limit(
    client: fakeredis.FakeRedis,
) -> None:
    # Given two targets on two subscriptions, and a limiter that first says "wait 0.2 s"
    record_applied(client, block_command())
    record_applied(client, block_command("fraud-8", subscription_id=8))
    answers: list[float | None] = [0.2, None, None]
    lanes: list[Lane] = []
    slept: list[float] = []

    def acquire(lane: Lane) -> float | None:
        lanes.append(lane)
        return answers.pop(0)

    rec = reconciler(client, FakeUpstream(), acquire=acquire, sleep=slept.append)
    # When both are reconciled
    list(rec.reconcile([BLOCK, Target("telco", 8, "block", 1)]))
    # Then each read took a slot on the bulk lane's reach, after the wait it was told
    assert lanes == [Lane.BULK, Lane.BULK, Lane.BULK]
    assert slept == [0.2]


def test_totals_count_each_verdict_and_the_repairs(client: fakeredis.FakeRedis) -> None:
    # Given one drifted block, one in-sync service and a target without intent
    record_applied(client, block_command())
    record_applied(client, service_command(active=True))
    rec = reconciler(client, FakeUpstream(), enqueued=[])
    totals = Totals()
    # When they are reconciled with repair
    for report in rec.reconcile([BLOCK, SERVICE, Target("telco", 9, "block", 2)]):
        totals.add(report)
    # Then the totals add up
    assert totals.to_json() == {"targets": 3, "in_sync": 1, "drifted": 1, "no_intent": 1,
                                "unreadable": 0, "repaired": 1}  # fmt: skip


def test_the_store_lists_an_orgs_targets_changed_since_a_time(client: fakeredis.FakeRedis) -> None:
    # Given targets of two orgs applied at different times
    record_applied(client, block_command(issued_at=NOW - timedelta(days=2)))
    record_applied(client, service_command(issued_at=NOW - timedelta(hours=1)))
    record_applied(client, block_command("acme-1", org_id="acme"))
    intents = StoreIntents(client=client)
    # When telco's targets are listed, all and since a day ago
    every = set(intents.targets_of("telco", since=None))
    recent = set(intents.targets_of("telco", since=NOW - timedelta(days=1)))
    # Then only telco's, and only the recent one since the day
    assert every == {BLOCK, SERVICE}
    assert recent == {SERVICE}


def test_a_repair_of_a_long_command_id_gets_a_derived_uuid() -> None:
    # Given an applied command with the longest id the contract allows
    intent = Intent(applied(block_command("x" * 128)), "store")
    # When its repair is built twice
    first, again = repair_command(intent, now=NOW), repair_command(intent, now=NOW)
    # Then its id fits, is stable, and still points at the original
    assert first.command_id.startswith("reconcile.")
    assert len(first.command_id) <= 128
    assert first.command_id == again.command_id
    assert first.correlation_id == "x" * 128


def test_a_targets_file_takes_a_header_comments_and_groups_by_subscription(
    tmp_path: Path,
) -> None:
    # Given a file with a header, a comment, a blank line, a repeat and two subscriptions
    path = tmp_path / "targets.csv"
    path.write_text("org_id,subscription_id,kind,id\n# fraud cases\ntelco,8,block,1\n\n"
                    "telco,7,service,2\ntelco,7,block,1\ntelco,8,block,1\n")  # fmt: skip
    # When it is read, then each target is there once, grouped by subscription
    assert read_targets(path) == [BLOCK, SERVICE, Target("telco", 8, "block", 1)]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("telco,7,block", "expected org_id,subscription_id,kind,id"),
     ("telco,7,widget,1", "kind must be block or service"),
     ("telco,x,block,1", "must be integers"), ("te/lco,7,block,1", "bad org_id")],
)  # fmt: skip
def test_a_bad_line_of_a_targets_file_is_named(tmp_path: Path, line: str, fragment: str) -> None:
    # Given a file whose second line is wrong
    path = tmp_path / "targets.csv"
    path.write_text(f"telco,7,block,1\n{line}\n")
    # When it is read, then the error names the file's line and the problem
    with pytest.raises(InvalidInput, match=rf"targets.csv:2: .*{fragment}"):
        read_targets(path)


def test_since_takes_rfc_3339_with_an_offset_or_a_duration_ago() -> None:
    # Then a time with its offset, or 24h, are read; a naive time or nonsense is refused
    assert parse_since("2026-12-01T10:00:00+00:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_since("24h", now=NOW) == NOW - timedelta(hours=24)
    for bad in ("2026-12-01T10:00:00", "yesterday"):
        with pytest.raises(InvalidInput, match="--since"):
            parse_since(bad)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [([], "give --targets FILE or --org ORG"),
     (["--targets", "t.csv", "--org", "telco"], "give --targets FILE or --org ORG"),
     (["--targets", "t.csv", "--since", "1h"], "--since goes with --org"),
     (["--org", "tel*"], "is no org id")],
)  # fmt: skip
def test_reconcile_needs_one_selection_of_targets(args: list[str], fragment: str) -> None:
    # When reconcile is given no selection, two, or --since without --org
    result = CliRunner().invoke(app, ["reconcile", *args])
    # Then it says so in one line and exits 2, before the store is asked
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert fragment in result.stderr
    assert len(result.stderr.splitlines()) == 1
