"""How many PATCH writes per second the simulator sustains at zero injected latency.

Run: ``python bench/simulator_bench.py [--seconds 10] [--connections 64] [--processes 2]``

The simulator runs as its own process (``python -m simulator``) on a loopback port; the
load comes from separate client processes, each an httpx AsyncClient on uvloop sharing
the connections between concurrent tasks. Every write goes to a different target, with
a bearer token, an Idempotency-Key and a JSON body, as the worker sends them. The run is
bounded both in time and in number of writes. Writes/s is reported as the clients saw
it and as the simulator counted it (``/admin/stats``); the table goes to
``bench/results/simulator.md`` and to standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from simulator.testing import spawned_simulator

TOKEN = "bench-token"  # a throwaway token of the simulator this script starts
SUBSCRIPTIONS = 1_000_000
RESULTS = Path(__file__).resolve().parent / "results" / "simulator.md"
TARGET_WRITES_PER_S = 2000


@dataclass(frozen=True)
class ClientResult:
    """What one client process achieved."""

    ok: int
    failed: int
    elapsed_s: float
    latencies_ms: list[float]


def run_client(
    base_url: str, connections: int, seconds: float, budget: int, lane: int
) -> ClientResult:
    """One client process: ``connections`` concurrent writers for ``seconds`` or ``budget`` writes."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_drive(base_url, connections, seconds, budget, lane))


async def _drive(
    base_url: str, connections: int, seconds: float, budget: int, lane: int
) -> ClientResult:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {TOKEN}", "x-auth-roles": "API_KEY"}
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0, "next": 0}
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, headers=headers, timeout=10
    ) as client:
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def writer() -> None:
            while time.perf_counter() < deadline and counts["next"] < budget:
                n = counts["next"]
                counts["next"] += 1
                subscription = (lane * budget + n) % SUBSCRIPTIONS + 1
                path = f"/orgs/telco/subscriptions/{subscription}/blocks/{n % 2 + 1}"
                began = time.perf_counter()
                try:
                    response = await client.patch(
                        path,
                        json={"active": n % 4 < 2, "reason": "bench"},
                        headers={"Idempotency-Key": f"bench-{lane}-{n}"},
                    )
                    ok = response.status_code == 201
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - began) * 1000)
                counts["ok" if ok else "failed"] += 1

        await asyncio.gather(*(writer() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return ClientResult(counts["ok"], counts["failed"], elapsed, latencies)


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


def _run(args: argparse.Namespace) -> str:
    per_process = max(1, args.connections // args.processes)
    budget = args.max_writes // args.processes
    simulator_args = (
        "--token",
        TOKEN,
        "--subscriptions",
        str(SUBSCRIPTIONS),
        "--log-level",
        "warning",
    )
    with spawned_simulator(*simulator_args) as sim:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as warmup:
            for n in range(200):
                warmup.patch(
                    f"{sim.base_url}/orgs/acme/subscriptions/{n + 1}/services/3",
                    json={"active": True},
                )
        sim.admin.reset()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
            futures = [
                pool.submit(run_client, sim.base_url, per_process, args.seconds, budget, lane)
                for lane in range(args.processes)
            ]
            results = [future.result() for future in futures]
        stats = sim.admin.stats()
    return _report(args, per_process, results, stats)


def _report(
    args: argparse.Namespace,
    per_process: int,
    results: list[ClientResult],
    stats: dict[str, object],
) -> str:
    ok = sum(r.ok for r in results)
    failed = sum(r.failed for r in results)
    elapsed = max(r.elapsed_s for r in results)
    latencies = [value for r in results for value in r.latencies_ms]
    client_rate = ok / elapsed
    server_rate = _server_rate(stats)
    rows = [
        ("client processes x connections", f"{args.processes} x {per_process}"),
        ("duration (s)", f"{elapsed:.1f}"),
        ("writes answered 201", f"{ok}"),
        ("writes failed", f"{failed}"),
        ("**writes/s at the client**", f"**{client_rate:,.0f}**"),
        ("writes/s at the simulator (median full second)", f"{server_rate:,.0f}"),
        ("max writes in one second (simulator)", f"{stats['max_writes_in_any_second']}"),
        ("writes applied (simulator)", f"{stats['writes_applied']}"),
        (
            "latency p50 / p99 (ms)",
            f"{_percentile(latencies, 0.5):.1f} / {_percentile(latencies, 0.99):.1f}",
        ),
        ("target", f">= {TARGET_WRITES_PER_S:,} writes/s"),
    ]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    lines = [
        "# Simulator benchmark: PATCH writes/s at zero injected latency",
        "",
        f"Machine: {machine}. Loopback, auth on, one simulator process (uvicorn, 1 worker).",
        f"Command: `python bench/simulator_bench.py --seconds {args.seconds:g} "
        f"--connections {args.connections} --processes {args.processes}`",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    """Run the benchmark, write the results file, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--max-writes", type=int, default=400_000)
    args = parser.parse_args()
    table = _run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
