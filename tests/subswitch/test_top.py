"""``subswitch top``: views from readings, and ``--once --json`` against real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from rich.console import Console
from typer.testing import CliRunner, Result

from producers import CommandProducer
from producers.publisher import CeleryPublisher
from subswitch import livestats
from subswitch.backlog import Backlog, InMemoryBacklog
from subswitch.cli import app
from subswitch.commandline import ExitCode
from subswitch.contract import Lane
from subswitch.errors import BrokerError
from subswitch.livestats import ProcessStats
from subswitch.top import Reading, TopView, render, summarise
from subswitch.top_cli import follow


def reading(at: float, *processes: ProcessStats, urgent: int = 0, dead: int = 0) -> Reading:
    depths = {Lane.URGENT: urgent, Lane.NORMAL: 0, Lane.BULK: 0}
    return Reading(
        at=at, backlog=Backlog(depths=depths, dead=dead), breaker="open", processes=list(processes)
    )


def stats(pid: int, writes: int, **outcomes: int) -> ProcessStats:
    named = {name.replace("_", ":", 1): count for name, count in outcomes.items()}
    return ProcessStats(node="w1", pid=pid, outcomes=named, writes=writes, inflight=2, settling=1)


def test_rates_are_the_growth_between_readings_per_process_seen_in_both() -> None:
    # Given two readings 2 s apart: process 1 in both, process 2 only in the second
    before = reading(100.0, stats(1, writes=10, urgent_applied=5))
    after = reading(
        102.0,
        stats(1, writes=30, urgent_applied=9, bulk_failed=2),
        stats(2, writes=500, urgent_applied=400),
        urgent=7,
        dead=3,
    )
    # When they are summarised against a cap of 20 writes/s
    view = summarise(before, after, rate_limit=20)
    # Then only process 1's growth counts, per lane and outcome, and levels are summed
    assert view.lanes["urgent"].outcomes_per_s == 2.0
    assert view.lanes["urgent"].depth == 7
    assert view.lanes["bulk"].outcomes_per_s == 1.0
    assert view.outcomes_per_s["applied"] == 2.0
    assert view.outcomes_per_s["failed"] == 1.0
    assert (view.writes_per_s, view.rate_limit_use) == (10.0, 0.5)
    assert (view.inflight, view.settling, view.worker_processes) == (4, 2, 2)
    assert (view.breaker, view.dead_letters) == ("open", 3)


def test_the_rendered_view_names_every_part() -> None:
    # Given a view
    view = summarise(reading(0, stats(1, 0)), reading(1, stats(1, 5), dead=4), rate_limit=None)
    # When it is rendered
    console = Console(width=120, record=True)
    console.print(render(view))
    text = console.export_text()
    # Then lanes, breaker, in flight, settling, writes and dead letters are shown
    for part in ("urgent", "normal", "bulk", "breaker open", "in flight 2", "settling 1"):
        assert part in text
    assert "5.0/s (no cap)" in text
    assert "dead letters 4" in text


@dataclass
class Readings:
    """A :class:`TopSource` that returns readings from a list."""

    readings: list[Reading]
    slept: list[float] = field(default_factory=list)

    def read(self) -> Reading:
        return self.readings.pop(0)


def test_follow_yields_a_view_per_interval_from_consecutive_readings() -> None:
    # Given three readings
    source = Readings([reading(0, stats(1, 0)), reading(1, stats(1, 3)), reading(2, stats(1, 9))])
    # When two views are taken
    views: Iterator[TopView] = follow(
        source, rate_limit=None, interval_s=1.0, sleep=source.slept.append
    )
    first, second = next(views), next(views)
    # Then each has the rate since the reading before, after sleeping an interval
    assert (first.writes_per_s, second.writes_per_s) == (3.0, 6.0)
    assert source.slept == [1.0, 1.0]


def test_an_in_memory_backlog_fails_like_a_broker_when_told() -> None:
    # Given an in-memory backlog that is set to fail
    backlog = InMemoryBacklog(fail=True)
    # When it is sampled
    # Then it raises the tree's broker error
    with pytest.raises(BrokerError, match="broker unavailable"):
        backlog.sample()


def test_top_once_json_reads_the_real_broker_and_store(
    broker_url: str, clean_redis_url: str
) -> None:
    # Given commands waiting (no worker runs) and a worker process reporting, growing
    publisher = CeleryPublisher(broker_url=broker_url, visibility_timeout=300, queue_type="quorum")
    with CommandProducer(publisher=publisher) as producer:
        producer.change_block_status(org_id="telco", subscription_id=1, block_id=1, active=True,
                                     priority="urgent", source="tests")  # fmt: skip
        for subscription in (2, 3, 4):
            producer.change_service_status(org_id="telco", subscription_id=subscription,
                                           service_id=2, active=False, priority="bulk",
                                           source="tests")  # fmt: skip
    client = redis.Redis.from_url(clean_redis_url)
    stop = threading.Event()

    def report() -> None:
        applied = 0
        while not stop.is_set():
            applied += 10
            update = {"urgent:applied": applied}
            livestats.publish(
                client, stats(4242, writes=applied).model_copy(update={"outcomes": update})
            )
            stop.wait(0.1)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    env = {
        **os.environ,
        "SUBSWITCH_BROKER_URL": broker_url,
        "SUBSWITCH_STORE_URL": clean_redis_url,
        "SUBSWITCH_RATE_LIMIT": "200",
    }
    try:
        # When `subswitch top --once --json` runs
        result = subprocess.run(
            [sys.executable, "-m", "subswitch", "top", "--once", "--json", "--interval", "0.5"],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
    finally:
        stop.set()
        reporter.join()
        client.close()
    # Then it prints one JSON view with the queues' depth, the reporting process and rates
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert {lane: v["depth"] for lane, v in view["lanes"].items()} == {
        "urgent": 1, "normal": 0, "bulk": 3,
    }  # fmt: skip
    assert view["worker_processes"] == 1
    assert view["lanes"]["urgent"]["outcomes_per_s"] > 0
    assert view["writes_per_s"] > 0
    assert view["rate_limit_per_s"] == 200
    assert (view["breaker"], view["dead_letters"], view["inflight"]) == ("closed", 0, 2)


def run_top(*args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(app, ["top", *args], env={"COLUMNS": "200", **env})


@pytest.mark.parametrize(
    ("args", "env", "code", "expected"),
    [
        (["--interval", "0"], {}, ExitCode.BAD_INPUT, "Invalid value for '--interval'"),
        (
            ["--once"],
            {"SUBSWITCH_BROKER_URL": "redis://127.0.0.1:1/0"},
            ExitCode.BAD_INPUT,
            "SUBSWITCH_STORE_URL",
        ),
        (
            ["--once", "--json"],
            {
                "SUBSWITCH_BROKER_URL": "redis://:s3cret@127.0.0.1:1/0",
                "SUBSWITCH_STORE_URL": "redis://127.0.0.1:1/0",
            },
            ExitCode.UNAVAILABLE,
            "broker unavailable",
        ),
    ],
)
def test_top_mistakes_and_unreachable_services_are_one_line(
    args: list[str],
    env: dict[str, str],
    code: int,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Given none of the developer's settings, and a bad option, half a configuration,
    # or a broker nobody listens on
    for name in list(os.environ):
        if name.startswith("SUBSWITCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SUBSWITCH_DATA_DIR", str(tmp_path))
    # When top runs
    result = run_top(*args, env=env)
    # Then it ends with one line naming the problem (never a password) and its status
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert expected in result.stderr
    assert "s3cret" not in result.output
