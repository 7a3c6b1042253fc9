"""Per-command lanes: commands/s from the first enqueue to the last result event.

subswitch: ``subswitch worker -c 64 --lanes normal`` processes (one per core by
default); a producer process sends one message per command with the SDK
(``CommandProducer``) while the workers run, and this process takes the result events.
Baseline: the default Celery task (prefork, default concurrency), enqueued the same
way; it publishes no events, so it is done when the simulator has answered every
write (polled every 0.25 s).
"""

from __future__ import annotations

from bench import harness
from bench.config import BROKER_URL
from bench.events import Seen, collect
from bench.harness import Context, Json
from bench.load import LoadSpec, Producer
from bench.report import Row, ScenarioResult, fmt
from producers.events import EventStream

TARGET_PER_S = 1_000
TARGET_FACTOR = 10


def run(ctx: Context) -> ScenarioResult:
    """Both sides, then the verdict."""
    ours = run_subswitch(ctx, "throughput", lane="normal", kind="commands")
    theirs = run_default(ctx)
    ctx.shared["default_throughput"] = theirs
    rate, base = ours["commands_per_s"], theirs["commands_per_s"]
    met = rate is not None and base is not None and rate >= max(TARGET_PER_S, 10 * base)
    factor = f" ({rate / base:.1f}x)" if rate and base else ""
    row = Row(
        "throughput",
        "per-command lanes, commands/s (enqueue to result event)",
        fmt(rate) + factor,
        fmt(base),
        f">= {TARGET_PER_S:,}/s and >= {TARGET_FACTOR}x baseline",
        met,
    )
    notes = [
        f"subswitch: {ours['workers']} x `subswitch worker -c 64 --lanes normal`, "
        f"{ours['commands']:,} commands, one message each; CPU split over the run (share of "
        f"2 cores): {split_text(ours)}.",
        f"baseline: 1 x `celery worker` prefork, default concurrency, {theirs['commands']:,} "
        f"commands; CPU split: {split_text(theirs)}.",
    ]
    return ScenarioResult([row], {"subswitch": ours, "baseline": theirs}, notes)


def split_text(side: Json) -> str:
    shares = side["cpu"]["share_of_2_cores"]
    return ", ".join(f"{name} {share:.0%}" for name, share in shares.items())


def run_subswitch(ctx: Context, name: str, *, lane: str, kind: str) -> Json:
    """Run ``throughput_commands`` through ``throughput_workers`` subswitch workers."""
    ctx.fresh()
    sizes = ctx.sizes
    count = sizes.throughput_commands if kind == "commands" else sizes.bulk_commands
    workers = sizes.throughput_workers if kind == "commands" else sizes.bulk_workers
    lanes = "normal" if lane == "normal" else "bulk"
    argvs = [
        harness.subswitch_argv(f"{name}{i}", lanes=lanes, concurrency=64) for i in range(workers)
    ]
    env = ctx.subswitch_env()
    ready = harness.subswitch_consumers(lanes)
    spec = LoadSpec(kind, count, lane=lane, chunk_size=sizes.chunk_size, prefix=name[:3])  # type: ignore[arg-type]
    with (
        Producer() as producer,
        EventStream(broker_url=BROKER_URL) as stream,
        harness.fleet(ctx, f"{name}-subswitch", argvs, env, ready=ready) as fleet,
    ):
        split = harness.cpu_split(ctx, fleet)
        split.start()
        future = producer.submit(spec)
        seen = Seen()
        finished = collect(
            stream, seen, until=lambda s: s.count >= count, timeout=sizes.drain_timeout_s
        )
        load = future.result(timeout=sizes.drain_timeout_s)
        cpu = split.stop(producer=load.cpu_s)
        rss, tree_rss = fleet.peak_rss_mb(), fleet.tree_peak_rss_mb()
    last = seen.last_received()
    elapsed = (last - load.first_at) if last else None
    last_done = max(seen.completed.values(), default=None)
    return {
        "workers": workers,
        "concurrency": 64,
        "commands": count,
        "messages": load.messages,
        "publish_method": load.method,
        "events": seen.count,
        "duplicate_events": seen.duplicates,
        "outcomes": seen.outcomes,
        "all_events_in": finished,
        "elapsed_s": elapsed,
        "commands_per_s": seen.count / elapsed if elapsed and finished else None,
        "commands_per_s_by_event_time": (
            seen.count / (last_done - load.first_at) if last_done and finished else None
        ),
        "enqueue_s": load.last_at - load.first_at,
        "producer_cpu_ms_per_command": load.cpu_s / count * 1000,
        "worker_cpu_ms_per_command": cpu["cpu_s"]["workers"] / max(seen.count, 1) * 1000,
        "worker_peak_rss_mb": rss,
        "worker_tree_peak_rss_mb": tree_rss,
        "cpu": cpu,
    }


def run_default(ctx: Context) -> Json:
    """The default Celery task on one prefork worker."""
    ctx.fresh()
    count = ctx.sizes.baseline_commands
    spec = LoadSpec("default", count, prefix="tpb")
    run = harness.drive_writes(ctx, "throughput-default", [harness.default_argv("tpbase")], spec)
    elapsed = run.elapsed_s
    return {
        "commands": count,
        "worker_processes": run.processes,
        "writes_seen": harness.writes_so_far(ctx.sim),
        "elapsed_s": elapsed,
        "commands_per_s": count / elapsed if elapsed else None,
        "worker_cpu_ms_per_command": run.cpu["cpu_s"]["workers"] / count * 1000,
        "worker_tree_peak_rss_mb": run.tree_peak_rss_mb,
        "cpu": run.cpu,
    }
