"""``subswitch demo`` (and ``make run``): the whole pipeline on one machine, no servers.

It starts the simulator, a worker and the audit archive as child processes on the
embedded broker and store (or on SUBSWITCH_BROKER_URL / SUBSWITCH_STORE_URL when set),
enqueues a realistic mix of commands, prints each result event as it arrives, and ends
with the stolen SIM's history as the archive holds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from producers import CommandProducer
from producers.events import EventStream
from producers.render import EventTable
from subswitch.archive.consumer import READY_MARK as ARCHIVE_READY_MARK
from subswitch.archive.history import HistoryTable
from subswitch.archive.store import ArchivedCommand, SqlArchive
from subswitch.archive.url import archive_url
from subswitch.contract import AnyCommand, ChangeBlockStatus, ChangeServiceStatus, Lane, ResultEvent
from subswitch.embedded import private_file, stop_embedded_redis
from subswitch.settings import Settings
from subswitch.simulator.testing import spawned_simulator
from subswitch.urls import resolve_endpoints

DEMO_TOKEN = "demo-token"  # noqa: S105 - the local simulator's throwaway token
_READY_MARK = " ready."
_WORKER_START_S = 60.0
_EVENT_WAIT_S = 60.0
_ARCHIVE_WAIT_S = 30.0
_ARCHIVE_POLL_S = 0.2
#: The stolen SIM of the demo's fraud block, whose history it prints at the end.
_STOLEN = ("telco", 101)


def run_demo(settings: Settings, console: Console) -> int:
    """Run the demo; 0 when every command reached the outcome it was meant to."""
    with ExitStack() as stack:
        endpoints = resolve_endpoints(settings)
        if endpoints.started_embedded:  # leave no server behind that the demo started
            stack.callback(stop_embedded_redis, settings.data_dir)
        broker_url = endpoints.broker_url
        console.print("[bold]subswitch demo[/]: starting the simulator and a worker...")
        # 1000 subscriptions: the mix shows a command on an unknown one (999_999) fail.
        sim = stack.enter_context(
            spawned_simulator(
                "--token", DEMO_TOKEN, "--latency-ms", "20", "--subscriptions", "1000"
            )
        )
        env = {
            "SUBSWITCH_BROKER_URL": broker_url,
            "SUBSWITCH_STORE_URL": endpoints.store_url,
            "SUBSWITCH_UPSTREAM_URL": sim.base_url,
            "SUBSWITCH_UPSTREAM_TOKEN": DEMO_TOKEN,
            "SUBSWITCH_DATA_DIR": str(settings.data_dir),
        }
        stack.enter_context(_child("worker", env, settings.data_dir, _READY_MARK))
        stack.enter_context(_child("archive", env, settings.data_dir, ARCHIVE_READY_MARK))
        archive = SqlArchive.open(archive_url(settings))
        stack.callback(archive.close)
        events = stack.enter_context(EventStream(broker_url=broker_url))
        producer = stack.enter_context(
            CommandProducer.from_settings(settings.model_copy(update={"broker_url": broker_url}))
        )
        console.print(f"simulator at {sim.base_url}; logs and archive in {settings.data_dir}\n")
        return _play(producer, events, EventTable(console), console, archive)


@contextmanager
def _child(role: str, env: dict[str, str], data_dir: Path, mark: str) -> Iterator[None]:
    """``subswitch worker`` or ``subswitch archive``, its log in ``demo-<role>.log``."""
    log_path = data_dir / f"demo-{role}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "subswitch", role]
    if role == "worker":
        argv += ["--concurrency", "8"]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        argv,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    copy = threading.Thread(target=_copy_log, args=(process, log_path, ready, mark), daemon=True)
    copy.start()
    try:
        if not ready.wait(_WORKER_START_S):
            raise RuntimeError(f"the {role} did not start; see {log_path}")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _copy_log(
    process: subprocess.Popen[str], log_path: Path, ready: threading.Event, mark: str
) -> None:
    assert process.stdout is not None
    with private_file(log_path, "w") as log:
        for line in process.stdout:
            log.write(line)
            log.flush()
            if mark in line:
                ready.set()


def _first_wave(now: datetime) -> list[tuple[str, AnyCommand]]:
    """``(expected outcome, command)`` for the mix sent at first."""
    fraud = ChangeBlockStatus(
        org_id="telco",
        subscription_id=101,
        block_id=1,
        active=True,
        reason="stolen",
        priority=Lane.URGENT,
        source="fraud-engine",
        command_id=f"demo-{now:%H%M%S}-fraud-8812",
        correlation_id="case-8812",
    )
    roaming = [
        ChangeServiceStatus(
            org_id="telco",
            subscription_id=n,
            service_id=3,
            active=True,
            priority=Lane.BULK,
            source="batch:roaming-2026-11",
        )
        for n in range(201, 206)
    ]
    return [
        ("applied", fraud),
        ("applied", fraud),  # the duplicate: applied once, reported once
        (
            "applied",
            ChangeServiceStatus(
                org_id="telco",
                subscription_id=102,
                service_id=2,
                active=False,
                source="billing",
                correlation_id="dunning-42",
            ),
        ),
        (
            "applied",
            ChangeBlockStatus(
                org_id="acme",
                subscription_id=7,
                block_id=2,
                active=True,
                reason="lost",
                source="self-care",
            ),
        ),
        *(("applied", command) for command in roaming),
        (
            "failed",
            ChangeBlockStatus(
                org_id="telco",
                subscription_id=999_999,
                block_id=1,
                active=True,
                source="fraud-engine",
            ),
        ),
        (
            "failed",
            ChangeServiceStatus(
                org_id="telco", subscription_id=103, service_id=4, active=True, source="billing"
            ),
        ),
        (
            "expired",
            ChangeBlockStatus(
                org_id="telco",
                subscription_id=104,
                block_id=1,
                active=True,
                source="billing",
                not_after=now - timedelta(seconds=1),
            ),
        ),
    ]


def _second_wave(now: datetime, fraud: AnyCommand) -> list[tuple[str, AnyCommand]]:
    """A stale unblock of the fraud block, and a reuse of its command id."""
    stale = ChangeBlockStatus(
        org_id="telco",
        subscription_id=101,
        block_id=1,
        active=False,
        issued_at=now - timedelta(hours=1),
        source="self-care",
    )
    reuse = ChangeBlockStatus(
        org_id="telco",
        subscription_id=101,
        block_id=1,
        active=False,
        command_id=fraud.command_id,
        source="fraud-engine",
    )
    return [("superseded", stale), ("rejected", reuse)]


def _play(
    producer: CommandProducer,
    events: EventStream,
    table: EventTable,
    console: Console,
    archive: SqlArchive,
) -> int:
    now = datetime.now(UTC)
    first = _first_wave(now)
    phases = [_run_wave(first, producer, events, table)]
    console.print("\nnow a stale unblock issued an hour ago, and a reuse of the fraud command id:")
    phases.append(_run_wave(_second_wave(now, first[0][1]), producer, events, table))
    verdict = _verdict(phases, console)
    stolen = [event for _, found in phases for event in found.values() if _on_stolen(event)]
    # The stale unblock was issued an hour before the others: the window starts before it.
    shown = _show_history(archive, stolen, now - timedelta(hours=1, minutes=1), console)
    return verdict or (0 if shown else 1)


def _on_stolen(event: ResultEvent) -> bool:
    return (event.data.org_id, event.data.subscription_id) == _STOLEN


def _show_history(
    archive: SqlArchive, stolen: list[ResultEvent], since: datetime, console: Console
) -> bool:
    """Print the stolen SIM's history once the archive holds every one of its events."""
    wanted = {event.id for event in stolen}
    deadline = time.monotonic() + _ARCHIVE_WAIT_S
    rows: list[ArchivedCommand] = []
    while time.monotonic() < deadline:
        rows = list(archive.subscription_history(*_STOLEN, since=since))
        if wanted <= {row.event_id for row in rows}:
            break
        time.sleep(_ARCHIVE_POLL_S)  # the archive writes in batches; poll its database
    else:
        console.print(
            f"[red]unexpected[/] the archive lacks events of {'/'.join(map(str, _STOLEN))}"
        )
        return False
    org, subscription = _STOLEN
    console.print(
        f"\nthe stolen SIM's history in the archive (subswitch history {org} {subscription}):"
    )
    history = HistoryTable(console, with_subscription=False)
    for row in rows:
        history.add(row)
    return True


def _run_wave(
    wave: list[tuple[str, AnyCommand]],
    producer: CommandProducer,
    events: EventStream,
    table: EventTable,
) -> tuple[dict[str, str], dict[str, ResultEvent]]:
    expected = {producer.send(command): outcome for outcome, command in wave}
    return expected, _show(events.wait_for(expected, timeout=_EVENT_WAIT_S), table)


def _show(found: dict[str, ResultEvent], table: EventTable) -> dict[str, ResultEvent]:
    for event in sorted(found.values(), key=lambda event: event.time):
        table.add(event)
    return found


def _verdict(phases: list[tuple[dict[str, str], dict[str, ResultEvent]]], console: Console) -> int:
    misses = [
        f"{command_id}: expected {want}, got {got.outcome.value if got else 'no event'}"
        for expected, found in phases
        for command_id, want in expected.items()
        if (got := found.get(command_id)) is None or got.outcome.value != want
    ]
    for miss in misses:
        console.print(f"[red]unexpected[/] {miss}")
    if not misses:
        console.print(
            "\nevery command reached its expected outcome (the duplicate was not applied twice)."
        )
    return 1 if misses else 0
