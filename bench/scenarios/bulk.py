"""Bulk lane end to end: a ``subswitch batch`` file drained by the bulk lane, against
the httpx-only ceiling of the same run.

subswitch: ``bulk_workers`` x ``subswitch worker -c 8 --lanes bulk`` start first;
then ``subswitch batch FILE --quiet`` (a generated CSV of ``bulk_commands`` block
rows, every row its own target; the CLI validates every row, then enqueues chunks of
100, its default) runs as its own process. commands/s = result events / (the last
result event received here - the moment the batch process was started); worker CPU
per command = the workers' user + system time (/proc, whole trees) over the run /
events.

Baseline: the ``ceiling`` scenario's figures (``ctx.shared["ceiling"]``, measured just
before with as many processes), or measured here when that did not run.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import harness
from bench.config import BROKER_URL
from bench.events import Seen, collect
from bench.harness import Context, Json
from bench.procs import REPO
from bench.report import Row, ScenarioResult, fmt
from bench.scenarios import ceiling
from bench.scenarios.intake import write_csv
from bench.scenarios.throughput import split_text
from producers.events import EventStream

TARGET_FACTOR = 0.75
TARGET_CPU_MS = 0.8
#: Threads of a bulk-lane worker: each runs a whole chunk's writes at once, so a few
#: chunks at a time keep the process's 80 requests in flight.
BULK_CONCURRENCY = 8
BATCH_ARGV = ("-m", "subswitch", "batch")


def run(ctx: Context) -> ScenarioResult:
    """The same run's ceiling (measured here if missing), then the batch, then the rows."""
    theirs = ctx.shared.get("ceiling") or ceiling.measure(ctx)
    ours = run_batch(ctx)
    rate, base = ours["commands_per_s"], theirs["commands_per_s"]
    factor = rate / base if rate and base else None
    cpu, base_cpu = ours["worker_cpu_ms_per_command"], theirs["cpu_ms_per_request"]
    rows = [
        Row(
            "bulk",
            f"bulk lane: `subswitch batch` of {ours['commands']:,} rows, chunks of "
            f"{ctx.sizes.chunk_size}, commands/s (batch start to last result event)",
            fmt(rate) + (f" ({factor:.2f}x ceiling)" if factor else "") + _incomplete(ours),
            f"{fmt(base)} (httpx only, {ceiling.processes_text(theirs)})",
            f">= {TARGET_FACTOR}x httpx-only ceiling",
            ours["all_events_in"] and factor is not None and factor >= TARGET_FACTOR,
        ),
        Row(
            "bulk CPU",
            f"bulk lane: worker CPU per command (ms), {ours['workers']} workers",
            f"{cpu:.2f}",
            f"{base_cpu:.2f} (httpx only, per request)",
            f"<= {TARGET_CPU_MS} ms",
            ours["all_events_in"] and cpu <= TARGET_CPU_MS,
        ),
    ]
    notes = [
        f"{ours['workers']} x `subswitch worker -c {BULK_CONCURRENCY} --lanes bulk`; "
        "`subswitch batch` "
        f"enqueued {ours['commands']:,} rows ({ours['rows_sharing_a_target']:.0%} of them "
        f"share a target with another row; two rows per subscription, blocks 1 and 2) in "
        f"{fmt(ours['batch_s'], 1)} s (exit {ours['batch_exit']}, "
        f"{fmt(ours['batch_cpu_s'], 1)} s CPU); events {ours['events']:,} "
        f"({ours['outcomes']}); CPU split over the run (share of 2 cores): "
        f"{split_text(ours)}.",
    ]
    if not ours["all_events_in"]:
        notes.append(f"Not every event arrived within {ctx.sizes.bulk_timeout_s:.0f} s.")
    return ScenarioResult(rows, {"subswitch": ours, "baseline": theirs}, notes)


def _incomplete(ours: Json) -> str:
    if ours["all_events_in"]:
        return ""
    return f", incomplete: {ours['events']:,} of {ours['commands']:,} events in time"


def run_batch(ctx: Context) -> Json:
    """Workers first, then ``subswitch batch`` on a fresh CSV, until every event is in."""
    ctx.fresh()
    sizes = ctx.sizes
    count = sizes.bulk_commands
    path = write_csv(ctx.data_dir / "bulk.csv", count)
    argvs = [
        harness.subswitch_argv(f"bulk{i}", lanes="bulk", concurrency=BULK_CONCURRENCY)
        for i in range(sizes.bulk_workers)
    ]
    env = ctx.subswitch_env()
    ready = harness.subswitch_consumers("bulk")
    with (
        EventStream(broker_url=BROKER_URL) as stream,
        harness.fleet(ctx, "bulk-subswitch", argvs, env, ready=ready) as fleet,
    ):
        split = harness.cpu_split(ctx, fleet)
        split.start()
        started = time.time()
        batch = _start_batch(ctx, path, env)
        seen = Seen()

        def done(seen: Seen) -> bool:
            batch.poll()  # notes when the batch process ended, while events come in
            return seen.count >= count

        finished = collect(stream, seen, until=done, timeout=sizes.bulk_timeout_s)
        batch_exit, batch_cpu = _finish_batch(batch, ctx.log_dir / "bulk-batch.log")
        cpu = split.stop(producer=batch_cpu)
        rss, tree_rss = fleet.peak_rss_mb(), fleet.tree_peak_rss_mb()
    last = seen.last_received()
    elapsed = last - started if last else None
    return {
        "workers": sizes.bulk_workers,
        "concurrency": BULK_CONCURRENCY,
        "commands": count,
        "rows_sharing_a_target": shared_target_share(path),
        "batch_exit": batch_exit,
        "batch_s": batch.ended_at - started,
        "batch_cpu_s": batch_cpu,
        "events": seen.count,
        "duplicate_events": seen.duplicates,
        "outcomes": seen.outcomes,
        "all_events_in": finished,
        "elapsed_s": elapsed,
        # Also when not every event came in time: the rate so far, shown as incomplete.
        "commands_per_s": seen.count / elapsed if elapsed else None,
        "worker_cpu_ms_per_command": cpu["cpu_s"]["workers"] / max(seen.count, 1) * 1000,
        "worker_peak_rss_mb": rss,
        "worker_tree_peak_rss_mb": tree_rss,
        "cpu": cpu,
    }


class _Batch:
    """The running ``subswitch batch`` process, and when it ended."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.ended_at = 0.0

    def poll(self) -> None:
        """Note the wall time at which the process is first seen ended."""
        if not self.ended_at and self.process.poll() is not None:
            self.ended_at = time.time()


def _start_batch(ctx: Context, path: Path, env: dict[str, str]) -> _Batch:
    """``subswitch batch FILE --quiet`` under ``/usr/bin/time -v`` (for its CPU)."""
    log = (ctx.log_dir / "bulk-batch.log").open("wb")
    with log:
        process = subprocess.Popen(
            ["/usr/bin/time", "-v", sys.executable, *BATCH_ARGV, str(path), "--quiet"],
            cwd=REPO,
            env={**os.environ, **env, "SUBSWITCH_SOURCE": "bench"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return _Batch(process)


def _finish_batch(batch: _Batch, log_path: Path) -> tuple[int, float]:
    """Wait for the batch process; its exit status and CPU seconds (user + system)."""
    status = batch.process.wait(timeout=600)
    batch.poll()
    text = log_path.read_text(errors="replace")
    cpu = sum(
        float(match.group(1))
        for match in re.finditer(r"(?:User|System) time \(seconds\): ([\d.]+)", text)
    )
    if status != 0:
        raise RuntimeError(f"subswitch batch exited {status}: {text[-1500:]}")
    return status, cpu


def shared_target_share(path: Path) -> float:
    """The share of the file's rows whose target another row also has."""
    counts: dict[tuple[str, ...], int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            key = (row["org_id"], row["subscription_id"], row["type"], row.get("block_id", ""))
            counts[key] = counts.get(key, 0) + 1
    rows = sum(counts.values())
    return sum(n for n in counts.values() if n > 1) / max(rows, 1)
