"""Batch intake: rows/s and peak RSS of ``subswitch batch FILE`` on a generated CSV.

The CSV has ``intake_rows`` block commands, one target each. ``subswitch batch``
(validate every row, then enqueue chunks of 100 on the bulk lane) runs under
``/usr/bin/time -v`` for its peak RSS; no worker runs, so the broker only stores.
rows/s = rows / wall time of the whole command (start-up and both passes included).
Baseline: ``bench.baseline.enqueue_csv`` (``csv.DictReader`` and one ``delay()`` per
row) on ``baseline_intake_rows`` rows of the same file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import redis

from bench.config import BROKER_URL
from bench.harness import Context, Json
from bench.procs import REPO
from bench.report import Row, ScenarioResult, fmt

TARGET_ROWS_PER_S = 10_000
TARGET_RSS_MB = 200.0
HEADER = "type,org_id,subscription_id,block_id,active,reason\n"


def run(ctx: Context) -> ScenarioResult:
    """Generate the files, run both, then the verdict."""
    rows, base_rows = ctx.sizes.intake_rows, ctx.sizes.baseline_intake_rows
    big = write_csv(ctx.data_dir / "intake.csv", rows)
    small = write_csv(ctx.data_dir / "intake-baseline.csv", base_rows)
    ours = run_batch(ctx, big, rows)
    theirs = timed(ctx, [sys.executable, "-m", "bench.baseline.enqueue_csv", str(small)], base_rows)
    rate, rss = ours.get("rows_per_s"), ours.get("peak_rss_mb")
    met = (
        None
        if not ours["available"]
        else bool(ours["ok"] and rate and rss and rate >= TARGET_ROWS_PER_S and rss < TARGET_RSS_MB)
    )
    row = Row(
        "batch intake",
        f"`subswitch batch` CSV: rows/s, peak RSS ({rows:,} rows)",
        _text(ours),
        f"{_text(theirs)} ({base_rows:,} rows)",
        f">= {TARGET_ROWS_PER_S:,} rows/s, RSS < {TARGET_RSS_MB:.0f} MB",
        met,
        "" if ours["available"] else "`subswitch batch` is not available in this tree.",
    )
    return ScenarioResult([row], {"subswitch": ours, "baseline": theirs})


def _text(side: Json) -> str:
    if not side["available"]:
        return "not available"
    if not side["ok"]:
        return f"failed (exit {side['exit']})"
    return f"{fmt(side['rows_per_s'])} rows/s, {fmt(side['peak_rss_mb'])} MB"


def write_csv(path: Path, rows: int) -> Path:
    """A CSV of ``rows`` block commands on distinct targets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        handle.write(HEADER)
        for start in range(0, rows, 10_000):
            handle.writelines(
                f"block,telco,{n // 2 + 1},{n % 2 + 1},true,bench\n"
                for n in range(start, min(rows, start + 10_000))
            )
    return path


def run_batch(ctx: Context, path: Path, rows: int) -> Json:
    """``subswitch batch FILE --quiet`` if the command exists."""
    probe = subprocess.run(
        [sys.executable, "-m", "subswitch", "batch", "--help"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        return {"available": False}
    argv = [sys.executable, "-m", "subswitch", "batch", str(path), "--quiet"]
    return timed(ctx, argv, rows)


def timed(ctx: Context, argv: list[str], rows: int) -> Json:
    """Run ``argv`` under ``/usr/bin/time -v`` on a flushed db 11; rows/s and peak RSS."""
    redis.Redis.from_url(BROKER_URL).flushdb()
    env = {
        **os.environ,
        "SUBSWITCH_BROKER_URL": BROKER_URL,
        "SUBSWITCH_STORE_URL": BROKER_URL,
        "SUBSWITCH_SOURCE": "bench",
        "BENCH_BROKER_URL": BROKER_URL,
    }
    started = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/time", "-v", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=ctx.sizes.drain_timeout_s * 3,
        check=False,
    )
    wall = time.monotonic() - started
    queued = _queued(BROKER_URL)
    redis.Redis.from_url(BROKER_URL).flushdb()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {
        "available": True,
        "ok": done.returncode == 0,
        "exit": done.returncode,
        "rows": rows,
        "wall_s": wall,
        "rows_per_s": rows / wall,
        "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None,
        "messages_queued": queued,
        "output_tail": _tail(done.stdout[-800:] + done.stderr[-1500:]),
    }


def _tail(output: str) -> str:
    # time -v repeats the command line, with this machine's paths: results are committed.
    kept = [line for line in output.splitlines() if "Command being timed" not in line]
    return "\n".join(kept).strip()


def _queued(url: str) -> int:
    client = redis.Redis.from_url(url)
    return sum(int(client.llen(q)) for q in ("subswitch.bulk", "celery"))
