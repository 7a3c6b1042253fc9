"""What every scenario shares: the simulator, Redis db 11, workers, producers, events.

Scenarios start workers as real processes (``subswitch worker`` or a baseline Celery
worker), enqueue from a separate producer process, and watch the outcome from this
process: result events for subswitch, the simulator's write counters for baselines
(which publish no events).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.config import BROKER_URL, LATENCY_MS, TOKEN, Sizes
from bench.load import LoadSpec, Producer
from subswitch.simulator.testing import SimulatorHandle

Json = dict[str, Any]


@dataclass
class Context:
    """One run of the suite: sizes, the simulator and where logs go."""

    sizes: Sizes
    sim: SimulatorHandle
    log_dir: Path
    redis_pid: int | None
    data_dir: Path
    shared: dict[str, Json] = field(default_factory=dict)

    def fresh(self, *, latency_ms: float = LATENCY_MS) -> None:
        """Empty Redis db 11 and the simulator's counters; set the upstream latency."""
        redis.Redis.from_url(BROKER_URL).flushdb()
        self.sim.admin.reset()
        self.sim.admin.set_faults(latency_ms=latency_ms)

    def subswitch_env(self, **extra: str) -> dict[str, str]:
        """Environment of a ``subswitch worker`` on Redis db 11 and the simulator."""
        return {
            "SUBSWITCH_BROKER_URL": BROKER_URL,
            "SUBSWITCH_STORE_URL": BROKER_URL,
            "SUBSWITCH_UPSTREAM_URL": self.sim.base_url,
            "SUBSWITCH_UPSTREAM_TOKEN": TOKEN,
            "SUBSWITCH_DATA_DIR": str(self.data_dir),
            **extra,
        }

    def baseline_env(self, **extra: str) -> dict[str, str]:
        """Environment of a baseline Celery worker (see :mod:`bench.baseline`)."""
        return {
            "BENCH_BROKER_URL": BROKER_URL,
            "BENCH_UPSTREAM_URL": self.sim.base_url,
            "BENCH_UPSTREAM_TOKEN": TOKEN,
            **extra,
        }


def redis_calls() -> dict[str, int]:
    """Calls per Redis command since the server started (all databases)."""
    try:
        stats = redis.Redis.from_url(BROKER_URL).info("commandstats")
    except redis.RedisError:
        return {}
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def redis_server_pid() -> int | None:
    """The Redis server's pid (for its CPU time), if it answers."""
    try:
        return int(redis.Redis.from_url(BROKER_URL).info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None


# --- workers -----------------------------------------------------------------------


def subswitch_consumers(lanes: str) -> int:
    """How many Celery workers one ``subswitch worker --lanes LANES`` runs."""
    try:
        from worker.cli import parse_lanes, plan_consumers  # noqa: PLC0415

        return len(plan_consumers(parse_lanes(lanes), concurrency=1, urgent_concurrency=1))
    except ImportError:  # a worker without lane supervision runs one
        return 1


def subswitch_argv(name: str, *, lanes: str, concurrency: int) -> list[str]:
    """``python -m subswitch worker`` arguments (INFO, its default log level)."""
    return [
        "-m",
        "subswitch",
        "worker",
        "-c",
        str(concurrency),
        "--lanes",
        lanes,
        "--hostname",
        f"{name}@%h",
        "--loglevel",
        "INFO",
    ]


def default_argv(name: str, *, queues: str = "celery") -> list[str]:
    """The default baseline: prefork, default concurrency, default everything."""
    return [
        "-m",
        "celery",
        "-A",
        "bench.baseline.default_task",
        "worker",
        "--loglevel",
        "INFO",
        "--hostname",
        f"{name}@%h",
        "-Q",
        queues,
    ]


def bare_argv(name: str, *, concurrency: int = 64) -> list[str]:
    """The bare threads-pool task, flags as subswitch's worker uses them."""
    return [
        "-m",
        "celery",
        "-A",
        "bench.baseline.bare_threads",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--hostname",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


@dataclass
class Fleet:
    """Worker process trees started for one side of a scenario."""

    children: list[procs.Child] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        """CPU of every worker process (trees, live and reaped)."""
        return sum(procs.tree_cpu_seconds(child.pid) for child in self.children)

    def peak_rss_mb(self) -> float:
        """The highest peak RSS of any one worker process (a Celery worker, not a tree)."""
        pids = [pid for child in self.children for pid in child.tree()]
        return max((procs.peak_rss_mb(pid) for pid in pids), default=0.0)

    def tree_peak_rss_mb(self) -> float:
        """Sum of the peak RSS of every process (shared pages counted more than once)."""
        return sum(procs.peak_rss_mb(pid) for child in self.children for pid in child.tree())

    def processes(self) -> int:
        """Live worker processes."""
        return sum(len(child.tree()) for child in self.children)


@contextmanager
def fleet(
    ctx: Context, name: str, argvs: list[list[str]], env: dict[str, str], *, ready: int
) -> Iterator[Fleet]:
    """Start one process per argv, wait until each has ``ready`` Celery workers up."""
    started = Fleet()
    try:
        for index, argv in enumerate(argvs):
            started.children.append(procs.start(f"{name}-{index}", argv, env, ctx.log_dir))
        for child in started.children:
            child.wait_ready(ready, timeout=ctx.sizes.startup_timeout_s)
        yield started
    finally:
        for child in started.children:
            child.stop()


# --- CPU split ----------------------------------------------------------------------


@dataclass
class CpuSplit:
    """CPU seconds of each party over one measured interval, and the wall time.

    ``other processes`` is what the rest of the machine used meanwhile (anything not
    started by this benchmark: a test run, an editor), from /proc/stat.
    """

    readers: dict[str, Callable[[], float]]
    machine_before: float = 0.0
    redis_before: dict[str, int] = field(default_factory=dict)
    redis_delta: dict[str, int] = field(default_factory=dict)
    before: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def start(self) -> None:
        """Snapshot every party's CPU now."""
        self.started = time.monotonic()
        self.machine_before = procs.machine_busy_seconds()
        self.redis_before = redis_calls()
        self.before = {name: read() for name, read in self.readers.items()}

    def stop(self, **extra: float) -> Json:
        """CPU used since :meth:`start` (plus ``extra`` parties measured elsewhere)."""
        self.wall_s = time.monotonic() - self.started
        self.seconds = {name: read() - self.before[name] for name, read in self.readers.items()}
        self.seconds.update(extra)
        after = redis_calls()
        delta = {name: calls - self.redis_before.get(name, 0) for name, calls in after.items()}
        self.redis_delta = {name: calls for name, calls in delta.items() if calls > 0}
        busy = procs.machine_busy_seconds() - self.machine_before
        self.seconds["other processes"] = max(0.0, busy - sum(self.seconds.values()))
        return self.as_json()

    def as_json(self) -> Json:
        """Seconds per party and their share of the machine's two cores."""
        capacity = max(self.wall_s, 1e-9) * 2
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": {name: round(value, 3) for name, value in self.seconds.items()},
            "share_of_2_cores": {
                name: round(value / capacity, 3) for name, value in self.seconds.items()
            },
            "total_share_of_2_cores": round(sum(self.seconds.values()) / capacity, 3),
            "redis_calls": dict(sorted(self.redis_delta.items(), key=lambda kv: -kv[1])),
        }


def cpu_split(ctx: Context, workers: Fleet) -> CpuSplit:
    """A CPU split over workers, simulator, Redis and this process."""
    return CpuSplit({"workers": workers.cpu_seconds, **party_readers(ctx)})


def party_readers(ctx: Context) -> dict[str, Callable[[], float]]:
    """CPU readers of the parties every scenario has: this process, simulator, Redis."""
    readers: dict[str, Callable[[], float]] = {"bench (events, probes)": time.process_time}
    if ctx.sim.pid is not None:
        pid = ctx.sim.pid
        readers["simulator"] = lambda: procs.cpu_seconds(pid)
    if ctx.redis_pid is not None:
        redis_pid = ctx.redis_pid
        readers["redis"] = lambda: procs.cpu_seconds(redis_pid)
    return readers


# --- watching the simulator ---------------------------------------------------------


def wait_for_writes(
    sim: SimulatorHandle, count: int, *, timeout: float, poll_s: float = 0.1
) -> float | None:
    """Wall time (``time.time()``) when ``count`` writes were answered, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = sim.admin.stats()
        if stats["writes_total"] >= count and stats["in_flight_now"] == 0:
            return time.time()
        time.sleep(poll_s)
    return None


@dataclass(frozen=True)
class WritesRun:
    """A baseline side driven until the simulator answered every write."""

    first_at: float
    done_at: float | None
    cpu: Json
    peak_rss_mb: float
    tree_peak_rss_mb: float
    processes: int

    @property
    def elapsed_s(self) -> float | None:
        """From the first enqueue to the last write answered (None if it never was)."""
        return self.done_at - self.first_at if self.done_at else None


def drive_writes(
    ctx: Context, name: str, argvs: list[list[str]], spec: LoadSpec, *, ready: int = 1
) -> WritesRun:
    """Start baseline workers, enqueue ``spec`` and wait for its writes (they publish no
    events); CPU and memory are read while the workers still run."""
    with (
        Producer() as producer,
        fleet(ctx, name, argvs, ctx.baseline_env(), ready=ready) as workers,
    ):
        split = cpu_split(ctx, workers)
        split.start()
        future = producer.submit(spec)
        done_at = wait_for_writes(ctx.sim, spec.count, timeout=ctx.sizes.drain_timeout_s)
        load = future.result(timeout=60)
        cpu = split.stop(producer=load.cpu_s)
        return WritesRun(
            load.first_at,
            done_at,
            cpu,
            workers.peak_rss_mb(),
            workers.tree_peak_rss_mb(),
            workers.processes(),
        )


def writes_so_far(sim: SimulatorHandle) -> int:
    """Writes the simulator has seen since its last reset."""
    return int(sim.admin.stats()["writes_total"])


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``, None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
