"""The httpx-only ceiling: what processes that only send the PATCHes reach.

``bulk_workers`` processes of :mod:`bench.baseline.httpx_ceiling` (16
``httpx.AsyncClient`` of 5 connections each in one asyncio loop per process, the
fastest arrangement known here) send ``ceiling_commands`` commands between them, the
same PATCHes subswitch sends, to the same simulator. Each process imports, builds its
clients and says ``ready``; then all start together. commands/s = answers / (last
answer of any process - first send of any); CPU per request = the processes' own
CPU over their sending (``process_time``, user + system), per answer.

The result goes to ``ctx.shared["ceiling"]``: the bulk scenario, which runs next,
compares its figures with this run's ceiling.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from typing import IO

from bench import harness, procs
from bench.harness import Context, Json
from bench.report import Row, ScenarioResult, fmt
from bench.scenarios.throughput import split_text

PREFIX = "ceiling"


def run(ctx: Context) -> ScenarioResult:
    """Measure the ceiling, share it, and show it as a row of its own."""
    side = measure(ctx)
    ctx.shared["ceiling"] = side
    row = Row(
        "httpx ceiling",
        f"httpx only, {processes_text(side)}, commands/s (first send to last answer)",
        "-",
        f"{fmt(side['commands_per_s'])}/s, {fmt(side['cpu_ms_per_request'], 2)} ms CPU/request",
        "measured (the bulk lane's reference)",
        side["commands_per_s"] is not None and side["errors"] == 0,
    )
    notes = [
        f"{side['processes']} x `python -m bench.baseline.httpx_ceiling`, "
        f"{side['clients']} clients x {side['connections']} connections each, "
        f"{side['commands']:,} PATCHes in all ({side['errors']} errors); per process: "
        + ", ".join(
            f"{fmt(p['answered'] / max(p['last_at'] - p['first_at'], 1e-9))}/s at "
            f"{p['cpu_s'] / max(p['answered'], 1) * 1000:.2f} ms CPU/request"
            for p in side["per_process"]
        )
        + f"; CPU split (share of 2 cores): {split_text(side)}.",
    ]
    return ScenarioResult([row], side, notes)


def processes_text(side: Json) -> str:
    """``1 process`` / ``2 processes``."""
    count = side["processes"]
    return f"{count} process{'es' if count != 1 else ''}"


def measure(ctx: Context) -> Json:
    """Start the processes, let them send together, gather their figures."""
    ctx.fresh()
    count, processes = ctx.sizes.ceiling_commands, ctx.sizes.bulk_workers
    share = -(-count // processes)
    children: list[subprocess.Popen[str]] = []
    ctx.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for index in range(processes):
            offset = index * share
            children.append(_start(ctx, index, offset, min(share, count - offset)))
        for child in children:
            _expect_ready(child, ctx.sizes.startup_timeout_s)
        pids = [child.pid for child in children]
        mine = {"ceiling processes": lambda: sum(procs.cpu_seconds(pid) for pid in pids)}
        split = harness.CpuSplit({**mine, **harness.party_readers(ctx)})
        split.start()
        for child in children:
            _stdin(child).write("go\n")
            _stdin(child).flush()
        results = [_result(child, ctx.sizes.drain_timeout_s) for child in children]
        cpu = split.stop()
    finally:
        for child in children:
            _end(child)
    return _figures(results, cpu, count)


def _start(ctx: Context, index: int, offset: int, count: int) -> subprocess.Popen[str]:
    argv = [
        *("-m", "bench.baseline.httpx_ceiling"),
        *("--count", str(count), "--offset", str(offset), "--prefix", PREFIX),
    ]
    log = (ctx.log_dir / f"ceiling-{index}.log").open("w", encoding="utf-8")
    with log:
        return subprocess.Popen(
            [sys.executable, *argv],
            cwd=procs.REPO,
            env={**os.environ, **ctx.baseline_env()},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )


def _stdin(child: subprocess.Popen[str]) -> IO[str]:
    assert child.stdin is not None  # started with stdin=PIPE
    return child.stdin


def _line(child: subprocess.Popen[str], timeout: float) -> str:
    """The child's next stdout line; raises if none comes within ``timeout`` seconds or
    the child ended first (its log says why)."""
    assert child.stdout is not None  # started with stdout=PIPE
    # The child writes one line and then waits for stdin: nothing else is buffered, so
    # the pipe being readable means that line is there.
    readable, _, _ = select.select([child.stdout], [], [], timeout)
    line = child.stdout.readline() if readable else ""
    if not line:
        raise RuntimeError(
            f"ceiling process {child.pid}: no line within {timeout:.0f} s "
            f"(exit {child.poll()}); see its log"
        )
    return line.strip()


def _expect_ready(child: subprocess.Popen[str], timeout: float) -> None:
    line = _line(child, timeout)
    if line != "ready":
        raise RuntimeError(f"ceiling process {child.pid} said {line[:200]!r}, not 'ready'")


def _result(child: subprocess.Popen[str], timeout: float) -> Json:
    result: Json = json.loads(_line(child, timeout))
    return result


def _end(child: subprocess.Popen[str]) -> None:
    """Close stdin (the child then exits); kill it if it does not."""
    if child.stdin is not None and not child.stdin.closed:
        child.stdin.close()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=10)


def _figures(results: list[Json], cpu: Json, count: int) -> Json:
    first = min(r["first_at"] for r in results)
    last = max(r["last_at"] for r in results)
    answered = sum(r["answered"] for r in results)
    cpu_s = sum(r["cpu_s"] for r in results)
    elapsed = last - first
    return {
        "processes": len(results),
        "clients": results[0]["clients"],
        "connections": results[0]["connections"],
        "commands": count,
        "answered": answered,
        "errors": sum(r["errors"] for r in results),
        "elapsed_s": elapsed,
        "commands_per_s": answered / elapsed if elapsed > 0 and answered == count else None,
        "cpu_ms_per_request": cpu_s / max(answered, 1) * 1000,
        "per_process": results,
        "cpu": cpu,
    }
