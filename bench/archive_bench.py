"""The audit archive: events archived per second, and history / status lookups among many.

Run: ``python -m bench.archive_bench [--events 20000] [--total 200000] [--only sqlite]
[--runs 2] [--broker URL]``

For each database (a SQLite file in a temporary directory, and a fresh database on the
PostgreSQL at 127.0.0.1:5432, user ``postgres``, dropped afterwards):

- ``insert``: ``SqlArchive.store`` of ``--events`` events in batches of
  ``Settings.archive_batch_size`` (500): the database's share alone.
- ``archive``: a backlog of ``--events`` events waits on ``subswitch.archive`` (Redis
  db 11, flushed), then a real ``subswitch archive`` process starts on an empty
  database; events/s = events / (last one committed - process ready). Broker, JSON
  parsing, batching, inserts and acks: the whole path.
- ``lookups``: the archive filled to ``--total`` events, 10,000 of them on one
  subscription; the wall time of ``history`` of that subscription (every row read),
  of its first row, and of ``latest_event`` (the status lookup) for 200 random
  command ids; median and p95. The history's CPU time in this process is recorded
  too (on a shared machine the wall time also holds the waits for a core).

``--runs`` repeats every measurement (a fresh database each time), one table line per
run. The table goes to ``bench/results/archive-<broker>[-<only>].md`` (``redis`` or
``rabbitmq``, then the ``--only`` databases; raw numbers to the ``.json`` beside it) and
to standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final

import psycopg
import redis
from kombu import Connection
from psycopg import sql

from bench.config import RESULTS_DIR
from subswitch.archive.consumer import READY_MARK
from subswitch.archive.store import SqlArchive
from subswitch.archive.url import normalise_archive_url
from subswitch.broker import EVENTS, archive_queue, is_amqp
from subswitch.contract import (
    EVENT_CONTENT_TYPE,
    ChangeBlockStatus,
    Outcome,
    ResultEvent,
    result_event,
)
from subswitch.redact import redact_url
from subswitch.settings import Settings

BROKER: Final = "redis://127.0.0.1:6379/11"  # the main benchmark's db: flushed
PG_ADMIN: Final = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
HOT: Final = ("telco", 4242)
HOT_COMMANDS: Final = 10_000
LOOKUPS: Final = 200
T0: Final = datetime(2026, 11, 1, tzinfo=UTC)
_FILL_BATCH: Final = 5000


def events(count: int, *, offset: int = 0, hot: bool = False) -> Iterator[ResultEvent]:
    """``count`` applied block events, each on its own subscription (or all on HOT)."""
    for n in range(offset, offset + count):
        issued = T0 + timedelta(milliseconds=n)
        command = ChangeBlockStatus(
            org_id=HOT[0] if hot else "telco",
            subscription_id=HOT[1] if hot else 100_000 + n,
            block_id=1 + n % 2,
            active=n % 3 != 0,
            reason="fraud",
            source=f"batch:bench-{n % 7}",
            correlation_id=f"case-{n // 10}",
            issued_at=issued,
            command_id=f"bench-{'hot-' if hot else ''}{n}",
        )
        yield result_event(
            command,
            outcome=Outcome.APPLIED,
            attempts=1,
            completed_at=issued + timedelta(milliseconds=40),
            upstream_status=201,
        )


@contextmanager
def database(kind: str) -> Iterator[str]:
    """An empty database URL of ``kind``, removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{Path(directory) / 'archive.sqlite3'}"
        return
    name = f"subswitch_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def opened(url: str) -> SqlArchive:
    """A migrated archive on ``url``."""
    store = SqlArchive.open(normalise_archive_url(url), create=True)
    store.migrate()
    return store


def bench_insert(url: str, count: int) -> dict[str, Any]:
    """events/s of ``SqlArchive.store`` alone, in the archive's batch size."""
    batch = Settings().archive_batch_size
    pending = list(events(count))
    store = opened(url)
    started = time.perf_counter()
    for start in range(0, count, batch):
        store.store(pending[start : start + batch])
    elapsed = time.perf_counter() - started
    assert store.count() == count
    store.close()
    return {"events": count, "batch": batch, "seconds": elapsed, "events_per_s": count / elapsed}


def bench_archive(url: str, count: int, broker: str) -> dict[str, Any]:
    """events/s of a real ``subswitch archive`` process draining a backlog of ``count``."""
    if not is_amqp(broker):
        redis.Redis.from_url(broker).flushdb()
    with Connection(broker) as connection:
        channel = connection.default_channel
        queue = archive_queue(broker_url=broker, queue_type=Settings().rabbitmq_queue_type)
        queue(channel).delete()  # a backlog of this run's events only
        queue(channel).declare()
        producer = connection.Producer()
        for event in events(count):
            producer.publish(
                event.to_json(),
                exchange=EVENTS,
                routing_key="command.applied",
                declare=[EVENTS],
                content_type=EVENT_CONTENT_TYPE,
                content_encoding="utf-8",
            )
    reader = opened(url)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SUBSWITCH_")}
    env |= {"SUBSWITCH_BROKER_URL": broker, "SUBSWITCH_ARCHIVE_URL": url}
    process = subprocess.Popen(
        [sys.executable, "-m", "subswitch", "archive"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _ready_time(process)
        deadline = time.monotonic() + 600
        while reader.count() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{reader.count()} of {count} events archived in 600 s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - ready
    finally:
        process.terminate()
        process.wait(30)
        reader.close()
    return {"events": count, "seconds": elapsed, "events_per_s": count / elapsed}


def _ready_time(process: subprocess.Popen[str]) -> float:
    ready = threading.Event()
    when: list[float] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if READY_MARK in line and not ready.is_set():
                when.append(time.perf_counter())
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        raise RuntimeError("subswitch archive did not start")
    return when[0]


def bench_lookups(url: str, total: int) -> dict[str, Any]:
    """History of a 10,000-command subscription, and status lookups, among ``total``."""
    store = opened(url)
    fill = max(0, total - HOT_COMMANDS)
    _fill(store, events(fill))
    _fill(store, events(HOT_COMMANDS, hot=True))
    ids = [f"bench-{random.randrange(fill)}" for _ in range(LOOKUPS)] if fill else []
    whole = _timed(lambda: sum(1 for _ in store.subscription_history(*HOT)), 10)
    whole_cpu = _timed(
        lambda: sum(1 for _ in store.subscription_history(*HOT)), 10, time.process_time
    )
    first = _timed(lambda: next(iter(store.subscription_history(*HOT))), 20)
    status = [_once(partial(store.latest_event, command_id)) for command_id in ids]
    store.close()
    return {
        "total": total,
        "history_rows": HOT_COMMANDS,
        "history_all_rows_ms": _summary(whole),
        "history_all_rows_cpu_ms": _summary(whole_cpu),
        "history_first_row_ms": _summary(first),
        "status_lookup_ms": _summary(status),
    }


def _fill(store: SqlArchive, stream: Iterator[ResultEvent]) -> None:
    batch: list[ResultEvent] = []
    for event in stream:
        batch.append(event)
        if len(batch) == _FILL_BATCH:
            store.store(batch)
            batch = []
    store.store(batch)


def _once(call: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    started = clock()
    call()
    return (clock() - started) * 1000


def _timed(
    call: Callable[[], object], times: int, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    return [_once(call, clock) for _ in range(times)]


def _summary(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return {"median": round(statistics.median(ordered), 2), "p95": round(p95, 2)}


def run(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement on one kind of database."""
    print(f"[archive bench] {kind} ...", flush=True)
    with database(kind) as url:
        insert = bench_insert(url, args.events)
    with database(kind) as url:
        archive = bench_archive(url, args.events, args.broker)
    with database(kind) as url:
        lookups = bench_lookups(url, args.total)
    return {"insert": insert, "archive": archive, "lookups": lookups}


def table(results: dict[str, dict[str, Any]]) -> str:
    """The Markdown table of ``results``."""
    lines = [
        "| database | store() events/s | `subswitch archive` events/s | history of 10,000 "
        "(all rows / first row) | history CPU | status lookup | archived events |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, found in results.items():
        kind, _, run_number = name.partition("#")
        look = found["lookups"]
        whole, first = look["history_all_rows_ms"], look["history_first_row_ms"]
        cpu = look.get("history_all_rows_cpu_ms", {}).get("median", "-")
        lines.append(
            f"| {kind} (run {run_number}) | {found['insert']['events_per_s']:,.0f} "
            f"| {found['archive']['events_per_s']:,.0f} "
            f"| {whole['median']} / {first['median']} ms (p95 {whole['p95']} / {first['p95']}) "
            f"| {cpu} ms "
            f"| {look['status_lookup_ms'].get('median', '-')} ms "
            f"(p95 {look['status_lookup_ms'].get('p95', '-')}) "
            f"| {look['total']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run, print and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.archive_bench", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events to ingest")
    parser.add_argument("--total", type=int, default=200_000, help="events for the lookups")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], action="append")
    parser.add_argument("--broker", default=BROKER, help="redis://... (flushed) or amqp://...")
    parser.add_argument("--runs", type=int, default=1, help="repeat every measurement")
    args = parser.parse_args(argv)
    results = {
        f"{kind}#{n}": run(kind, args)
        for n in range(1, args.runs + 1)
        for kind in args.only or ["sqlite", "postgresql"]
    }
    text = table(results)
    header = (
        f"# Audit archive ({datetime.now(UTC):%Y-%m-%dT%H:%MZ}, {os.cpu_count()} cores, "
        f"`python -m bench.archive_bench --events {args.events} --total {args.total} "
        f"--runs {args.runs}`, "
        f"broker {redact_url(args.broker).split('://')[0]})\n\n"
    )
    RESULTS_DIR.mkdir(exist_ok=True)
    name = f"archive-{'rabbitmq' if is_amqp(args.broker) else 'redis'}"
    name += "".join(f"-{kind}" for kind in args.only or [])
    (RESULTS_DIR / f"{name}.md").write_text(header + text + "\n")
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
