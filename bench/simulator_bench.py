"""How many PATCH writes per second the simulator sustains at zero injected latency.

Run: ``python bench/simulator_bench.py [--seconds 10] [--connections 64] [--processes 3]``

The simulator runs as its own process (``python -m simulator``) on a loopback port; the
load comes from separate client processes, each running httpx AsyncClients on uvloop,
all starting at the same instant. Every write goes to its own target with a bearer
token, an Idempotency-Key and a JSON body, as the worker sends them. The run is bounded
in time and in number of writes. Writes/s is reported as the clients saw it and as the
simulator counted it (``/admin/stats``), with the simulator's CPU time per write (Linux)
to show its headroom: on a small machine the httpx clients, not the simulator, are the
limit. The table goes to ``bench/results/simulator.md`` and to standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import os
import platform
import statistics
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

try:
    import uvloop
except ImportError:  # the simulator runs without it too, only slower
    uvloop = None

from simulator.testing import SimulatorHandle, spawned_simulator

TOKEN = "bench-token"  # a throwaway token of the simulator this script starts
SUBSCRIPTIONS = 1_000_000
RESULTS = Path(__file__).resolve().parent / "results" / "simulator.md"
TARGET_WRITES_PER_S = 2000
POOL_SIZE = 4  # connections per httpx.AsyncClient
START_DELAY_S = 3.0  # time for every client process to import and get ready


@dataclass(frozen=True)
class ClientResult:
    """What one client process achieved."""

    ok: int
    failed: int
    elapsed_s: float
    latencies_ms: list[float]


@dataclass(frozen=True)
class Plan:
    """One client process's share of the load."""

    base_url: str
    connections: int
    seconds: float
    budget: int
    lane: int
    start_at: float


def run_client(plan: Plan) -> ClientResult:
    """One client process: its writers, from ``plan.start_at`` for the planned time or count."""
    _avoid_failed_import_per_request()
    if uvloop is not None:
        return uvloop.run(_drive(plan))
    return asyncio.run(_drive(plan))


def _avoid_failed_import_per_request() -> None:
    """Stand in for ``sniffio`` when it is not installed.

    httpcore 1.0.x imports ``sniffio`` on every async request to tell asyncio from trio.
    Recent anyio no longer pulls it in, and a failed import is not cached, so without it
    each request pays a full search of ``sys.path`` (about half the client's CPU).
    """
    if importlib.util.find_spec("sniffio") is None:
        shim = types.ModuleType("sniffio")
        shim.current_async_library = lambda: "asyncio"  # type: ignore[attr-defined]
        sys.modules["sniffio"] = shim


class _Progress:
    """Shared by the writers of one process: one event loop, so no locks."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.issued = 0
        self.ok = 0
        self.failed = 0
        self.latencies_ms: list[float] = []

    def take(self) -> int | None:
        if self.issued >= self.budget:
            return None
        self.issued += 1
        return self.issued - 1


async def _drive(plan: Plan) -> ClientResult:
    # httpcore's pool does work proportional to its size on every request, so the
    # connections are spread over several small clients rather than one big one.
    pools = max(1, plan.connections // POOL_SIZE)
    limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
    headers = {"Authorization": f"Bearer {TOKEN}", "x-auth-roles": "API_KEY"}
    clients = [
        httpx.AsyncClient(base_url=plan.base_url, limits=limits, headers=headers, timeout=10)
        for _ in range(pools)
    ]
    progress = _Progress(plan.budget)
    await asyncio.sleep(max(0.0, plan.start_at - time.time()))
    started = time.perf_counter()
    deadline = started + plan.seconds
    try:
        await asyncio.gather(
            *(
                _writer(clients[n % pools], progress, deadline, plan.lane)
                for n in range(plan.connections)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    elapsed = time.perf_counter() - started
    return ClientResult(progress.ok, progress.failed, elapsed, progress.latencies_ms)


async def _writer(
    client: httpx.AsyncClient, progress: _Progress, deadline: float, lane: int
) -> None:
    while time.perf_counter() < deadline and (n := progress.take()) is not None:
        subscription = (lane * progress.budget + n) % SUBSCRIPTIONS + 1
        began = time.perf_counter()
        try:
            response = await client.patch(
                f"/orgs/telco/subscriptions/{subscription}/blocks/{n % 2 + 1}",
                json={"active": n % 4 < 2, "reason": "bench"},
                headers={"Idempotency-Key": f"bench-{lane}-{n}"},
            )
            ok = response.status_code == 201
        except httpx.HTTPError:
            ok = False
        progress.latencies_ms.append((time.perf_counter() - began) * 1000)
        if ok:
            progress.ok += 1
        else:
            progress.failed += 1


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _server_rate(stats: dict[str, object]) -> float:
    """Median writes/s over the full seconds of the run (first and last are partial)."""
    per_second = stats["writes_per_second"]
    assert isinstance(per_second, dict)
    counts = [per_second[key] for key in sorted(per_second, key=int)][1:-1]
    return float(statistics.median(counts)) if counts else float("nan")


def _warm_up(sim: SimulatorHandle) -> None:
    with httpx.Client(
        base_url=sim.base_url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        for n in range(200):
            client.patch(f"/orgs/acme/subscriptions/{n + 1}/services/3", json={"active": True})
    sim.admin.reset()


def _load(args: argparse.Namespace, sim: SimulatorHandle) -> list[ClientResult]:
    start_at = time.time() + START_DELAY_S
    share, extra = divmod(args.connections, args.processes)
    plans = [
        Plan(
            sim.base_url,
            share + (lane < extra),
            args.seconds,
            args.max_writes // args.processes,
            lane,
            start_at,
        )
        for lane in range(args.processes)
    ]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        return list(pool.map(run_client, plans))


def _run(args: argparse.Namespace) -> str:
    options = ("--token", TOKEN, "--subscriptions", str(SUBSCRIPTIONS), "--log-level", "warning")
    with spawned_simulator(*options) as sim:
        _warm_up(sim)
        cpu_before = _cpu_seconds(sim.pid)
        results = _load(args, sim)
        cpu_after = _cpu_seconds(sim.pid)
        stats = sim.admin.stats()
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return _report(args, results, stats, cpu)


def _report(
    args: argparse.Namespace,
    results: list[ClientResult],
    stats: dict[str, object],
    server_cpu_s: float | None,
) -> str:
    ok = sum(r.ok for r in results)
    elapsed = max(r.elapsed_s for r in results)
    latencies = [value for r in results for value in r.latencies_ms]
    writes = stats["writes_total"]
    assert isinstance(writes, int)
    cpu_per_write = server_cpu_s / writes * 1e6 if server_cpu_s and writes else float("nan")
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    rows = [
        (
            "client processes x connections",
            f"{args.processes} x {args.connections // args.processes}",
        ),
        ("duration (s)", f"{elapsed:.1f}"),
        ("writes answered 201 / failed", f"{ok} / {sum(r.failed for r in results)}"),
        ("**writes/s at the client**", f"**{ok / elapsed:,.0f}**"),
        ("writes/s at the simulator (median full second)", f"{_server_rate(stats):,.0f}"),
        ("max writes in one second (simulator)", f"{stats['max_writes_in_any_second']}"),
        ("writes applied (simulator)", f"{stats['writes_applied']}"),
        ("latency p50 / p99 (ms)", f"{p50:.1f} / {p99:.1f}"),
        ("simulator CPU per write (us)", f"{cpu_per_write:.0f}"),
        ("simulator capacity at one full core (writes/s)", f"{1e6 / cpu_per_write:,.0f}"),
        ("target", f">= {TARGET_WRITES_PER_S:,} writes/s"),
    ]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    return "\n".join(
        [
            "# Simulator benchmark: PATCH writes/s at zero injected latency",
            "",
            f"Machine: {machine}; clients and simulator share it. Loopback, auth on,",
            "one simulator process (uvicorn, uvloop, httptools).",
            f"Command: `python bench/simulator_bench.py --seconds {args.seconds:g} "
            f"--connections {args.connections} --processes {args.processes}`",
            "",
            "| measure | value |",
            "|---|---|",
            *(f"| {name} | {value} |" for name, value in rows),
            "",
        ]
    )


def main() -> int:
    """Run the benchmark, write the results file, print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration")
    parser.add_argument("--connections", type=int, default=64, help="in total")
    parser.add_argument("--processes", type=int, default=3, help="client processes")
    parser.add_argument("--max-writes", type=int, default=400_000, help="upper bound")
    args = parser.parse_args()
    table = _run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
