"""How many PATCH writes per second the simulator sustains at zero injected latency.

Run: ``python bench/simulator_bench.py [--seconds 10] [--connections 64] [--processes 3]``

The simulator runs as its own process (``python -m subswitch.simulator``) on a loopback port. The
load comes from separate client processes that all start at the same instant; every
write goes to its own target with a bearer token, an Idempotency-Key and a JSON body,
as the worker sends them. Each run is bounded in time and in number of writes.

Two phases, one after the other, against the same simulator:

- ``httpx``: httpx AsyncClients on uvloop, as the worker talks to the upstream.
- ``raw``: a minimal keep-alive HTTP/1.1 client on asyncio streams, the same requests
  at a fraction of the client CPU. On a small machine the clients and the simulator
  share the cores and httpx's client-side cost is the limit; this phase shows what
  the simulator itself sustains.

For each phase: writes/s as the clients saw it and as the simulator counted it
(``/admin/stats``), latency, and the simulator's CPU time per write (Linux). The table
goes to ``bench/results/simulator.md`` and to standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
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
from urllib.parse import urlsplit

import httpx

from subswitch.simulator.testing import SimulatorHandle, spawned_simulator

try:
    import uvloop
except ImportError:  # the bench runs without it too, only slower
    uvloop = None  # type: ignore[assignment]

TOKEN = "bench-token"  # a throwaway token of the simulator this script starts
SUBSCRIPTIONS = 1_000_000
RESULTS = Path(__file__).resolve().parent / "results" / "simulator.md"
TARGET_WRITES_PER_S = 2000
POOL_SIZE = 4  # connections per httpx.AsyncClient
START_DELAY_S = 3.0  # time for every client process to import and get ready
PHASES = ("httpx", "raw")


@dataclass(frozen=True)
class Plan:
    """One client process's share of the load."""

    kind: str
    base_url: str
    connections: int
    seconds: float
    budget: int
    lane: int
    start_at: float


@dataclass(frozen=True)
class ClientResult:
    """What one client process achieved."""

    ok: int
    failed: int
    elapsed_s: float
    latencies_ms: list[float]


@dataclass(frozen=True)
class Phase:
    """One phase: its clients' results and what the simulator saw."""

    kind: str
    results: list[ClientResult]
    stats: dict[str, object]
    server_cpu_s: float | None


class _Progress:
    """Shared by the writers of one process: one event loop, so no locks."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.issued = 0
        self.ok = 0
        self.failed = 0
        self.latencies_ms: list[float] = []
        self.started = time.perf_counter()

    def take(self) -> int | None:
        if self.issued >= self.plan.budget:
            return None
        self.issued += 1
        return self.issued - 1

    def target(self, n: int) -> tuple[str, bytes]:
        """The path (under /v2) and JSON body of write ``n``."""
        subscription = (self.plan.lane * self.plan.budget + n) % SUBSCRIPTIONS + 1
        body = json.dumps({"active": n % 4 < 2, "reason": "bench"}).encode()
        return f"/orgs/telco/subscriptions/{subscription}/blocks/{n % 2 + 1}", body

    def done(self, began: float, ok: bool) -> None:
        self.latencies_ms.append((time.perf_counter() - began) * 1000)
        if ok:
            self.ok += 1
        else:
            self.failed += 1


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


async def _drive(plan: Plan) -> ClientResult:
    progress = _Progress(plan)
    if plan.kind == "httpx":
        await _drive_httpx(plan, progress)
    else:
        await _drive_raw(plan, progress)
    elapsed = time.perf_counter() - progress.started
    return ClientResult(progress.ok, progress.failed, elapsed, progress.latencies_ms)


async def _start(plan: Plan, progress: _Progress) -> float:
    await asyncio.sleep(max(0.0, plan.start_at - time.time()))
    progress.started = time.perf_counter()
    return progress.started + plan.seconds


async def _drive_httpx(plan: Plan, progress: _Progress) -> None:
    # httpcore's pool does work proportional to its size on every request, so the
    # connections are spread over several small clients rather than one big one.
    pools = max(1, plan.connections // POOL_SIZE)
    limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    clients = [
        httpx.AsyncClient(
            base_url=plan.base_url, limits=limits, headers=headers, timeout=10, trust_env=False
        )
        for _ in range(pools)
    ]
    deadline = await _start(plan, progress)
    try:
        writers = (
            _httpx_writer(clients[n % pools], progress, deadline) for n in range(plan.connections)
        )
        await asyncio.gather(*writers)
    finally:
        for client in clients:
            await client.aclose()


async def _httpx_writer(client: httpx.AsyncClient, progress: _Progress, deadline: float) -> None:
    while time.perf_counter() < deadline and (n := progress.take()) is not None:
        path, body = progress.target(n)
        began = time.perf_counter()
        try:
            key = {"Idempotency-Key": f"bench-{progress.plan.lane}-{n}"}
            response = await client.patch(path, content=body, headers=key)
            ok = response.status_code == 201
        except httpx.HTTPError:
            ok = False
        progress.done(began, ok)


async def _drive_raw(plan: Plan, progress: _Progress) -> None:
    url = urlsplit(plan.base_url)
    streams = [
        await asyncio.open_connection(url.hostname, url.port) for _ in range(plan.connections)
    ]
    deadline = await _start(plan, progress)
    try:
        await asyncio.gather(*(_raw_writer(r, w, url.path, progress, deadline) for r, w in streams))
    finally:
        for _, writer in streams:
            writer.close()


async def _raw_writer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    prefix: str,
    progress: _Progress,
    deadline: float,
) -> None:
    while time.perf_counter() < deadline and (n := progress.take()) is not None:
        path, body = progress.target(n)
        head = (
            f"PATCH {prefix}{path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nIdempotency-Key: bench-raw-{progress.plan.lane}-{n}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        began = time.perf_counter()
        writer.write(head.encode() + body)
        answer = await reader.readuntil(b"\r\n\r\n")
        length = _content_length(answer)
        if length:
            await reader.readexactly(length)
        progress.done(began, answer.startswith(b"HTTP/1.1 201 "))


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _warm_up(sim: SimulatorHandle) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=sim.base_url, headers=headers, trust_env=False) as client:
        for n in range(200):
            client.patch(f"/orgs/acme/subscriptions/{n + 1}/services/3", json={"active": True})


def _plans(args: argparse.Namespace, sim: SimulatorHandle, kind: str) -> list[Plan]:
    start_at = time.time() + START_DELAY_S
    share, extra = divmod(args.connections, args.processes)
    budget = args.max_writes // args.processes
    return [
        Plan(kind, sim.base_url, share + (lane < extra), args.seconds, budget, lane, start_at)
        for lane in range(args.processes)
    ]


def _phase(args: argparse.Namespace, sim: SimulatorHandle, kind: str) -> Phase:
    sim.admin.reset()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        cpu_before = _cpu_seconds(sim.pid)
        results = list(pool.map(run_client, _plans(args, sim, kind)))
        cpu_after = _cpu_seconds(sim.pid)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Phase(kind, results, sim.admin.stats(), cpu)


def _run(args: argparse.Namespace) -> list[Phase]:
    options = ("--token", TOKEN, "--subscriptions", str(SUBSCRIPTIONS), "--log-level", "warning")
    with spawned_simulator(*options) as sim:
        _warm_up(sim)
        return [_phase(args, sim, kind) for kind in PHASES]


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


def _column(phase: Phase) -> list[str]:
    results, stats = phase.results, phase.stats
    ok = sum(r.ok for r in results)
    elapsed = max(r.elapsed_s for r in results)
    latencies = [value for r in results for value in r.latencies_ms]
    writes = stats["writes_total"]
    assert isinstance(writes, int)
    cpu_us = phase.server_cpu_s / writes * 1e6 if phase.server_cpu_s and writes else float("nan")
    return [
        f"{elapsed:.1f}",
        f"{ok} / {sum(r.failed for r in results)}",
        f"**{ok / elapsed:,.0f}**",
        f"{_server_rate(stats):,.0f}",
        f"{stats['max_writes_in_any_second']}",
        f"{stats['writes_applied']}",
        f"{_percentile(latencies, 0.5):.1f} / {_percentile(latencies, 0.99):.1f}",
        f"{cpu_us:.0f}",
        f"{1e6 / cpu_us:,.0f}",
    ]


MEASURES = (
    "duration (s)",
    "writes answered 201 / failed",
    "**writes/s at the clients**",
    "writes/s at the simulator (median full second)",
    "max writes in one second (simulator)",
    "writes applied (simulator)",
    "latency p50 / p99 (ms)",
    "simulator CPU per write (us)",
    "simulator ceiling at one full core (writes/s)",
)


def _report(args: argparse.Namespace, phases: list[Phase]) -> str:
    columns = [_column(phase) for phase in phases]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    header = " | ".join(f"{phase.kind} clients" for phase in phases)
    return "\n".join(
        [
            "# Simulator benchmark: PATCH writes/s at zero injected latency",
            "",
            f"Machine: {machine}; clients and simulator share it. Loopback, auth on, one",
            "simulator process (uvicorn, uvloop, httptools). "
            f"{args.processes} client processes, {args.connections} connections in total.",
            f"Command: `python bench/simulator_bench.py --seconds {args.seconds:g} "
            f"--connections {args.connections} --processes {args.processes}`",
            f"Target: >= {TARGET_WRITES_PER_S:,} writes/s.",
            "",
            f"| measure | {header} |",
            "|---|" + "---|" * len(phases),
            *(
                f"| {measure} | " + " | ".join(column[row] for column in columns) + " |"
                for row, measure in enumerate(MEASURES)
            ),
            "",
        ]
    )


def main() -> int:
    """Run the benchmark, write the results file, print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per phase")
    parser.add_argument("--connections", type=int, default=64, help="in total")
    parser.add_argument("--processes", type=int, default=3, help="client processes")
    parser.add_argument("--max-writes", type=int, default=400_000, help="upper bound per phase")
    args = parser.parse_args()
    table = _report(args, _run(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
