"""Per-command lanes: commands/s from the first enqueue to the last result event.

subswitch: ``throughput_workers`` x ``subswitch worker -c 64 --lanes normal``; a
producer process sends one message per command with the SDK (``CommandProducer``)
while the workers run, and this process takes the result events.

Baseline: the bare Celery floor, as many processes of the bare threads-pool task
(``bench/baseline/bare_threads.py``: -c 64, one PATCH per message on a pooled client,
nothing else), the same number of commands sent one message each while they run. It
publishes no events, so it is done when the simulator has answered every write
(polled every 0.1 s). The default task (prefork, default concurrency) is measured too,
for a note.
"""

from __future__ import annotations

from bench import harness
from bench.config import BROKER_URL
from bench.events import Seen, collect
from bench.harness import Context, Json
from bench.load import LoadSpec, Producer
from bench.report import Row, ScenarioResult, fmt
from producers.events import EventStream

TARGET_FACTOR = 0.85


def run(ctx: Context) -> ScenarioResult:
    """subswitch, the bare floor, the default task, then the verdict."""
    ours = run_subswitch(ctx, "throughput", lane="normal", kind="commands")
    floor = run_bare(ctx)
    theirs = run_default(ctx) if ctx.sizes.baseline_commands else None
    rate, base = ours["commands_per_s"], floor["commands_per_s"]
    factor = rate / base if rate and base else None
    row = Row(
        "throughput",
        "per-command lanes, commands/s (enqueue to result event)",
        fmt(rate) + (f" ({factor:.2f}x floor)" if factor else ""),
        f"{fmt(base)} (bare Celery, {floor['workers']} processes)",
        f">= {TARGET_FACTOR}x bare Celery floor",
        factor is not None and factor >= TARGET_FACTOR,
    )
    notes = [
        f"subswitch: {ours['workers']} x `subswitch worker -c 64 --lanes normal`, "
        f"{ours['commands']:,} commands, one message each; worker CPU "
        f"{ours['worker_cpu_ms_per_command']:.2f} ms/command; CPU split over the run (share "
        f"of 2 cores): {split_text(ours)}.",
        f"bare Celery floor: {floor['workers']} x bare threads task -c 64, "
        f"{floor['commands']:,} commands; worker CPU {floor['worker_cpu_ms_per_command']:.2f} "
        f"ms/command; CPU split: {split_text(floor)}.",
    ]
    if theirs is not None:
        notes.append(
            f"default task (1 x `celery worker` prefork, default concurrency, "
            f"{theirs['commands']:,} commands): {fmt(theirs['commands_per_s'])}/s; CPU split: "
            f"{split_text(theirs)}."
        )
    raw = {"subswitch": ours, "baseline": floor, "default_task": theirs}
    return ScenarioResult([row], raw, notes)


def split_text(side: Json) -> str:
    """``workers 62%, redis 7%, ...``: each party's share of the two cores."""
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


def run_bare(ctx: Context) -> Json:
    """``throughput_workers`` bare threads-pool workers on ``throughput_commands``."""
    ctx.fresh()
    count, workers = ctx.sizes.throughput_commands, ctx.sizes.throughput_workers
    spec = LoadSpec("bare", count, prefix="tpf")
    argvs = [harness.bare_argv(f"floor{i}") for i in range(workers)]
    run = harness.drive_writes(ctx, "throughput-bare", argvs, spec)
    elapsed = run.elapsed_s
    return {
        "workers": workers,
        "concurrency": 64,
        "commands": count,
        "writes_seen": harness.writes_so_far(ctx.sim),
        "elapsed_s": elapsed,
        "commands_per_s": count / elapsed if elapsed else None,
        "worker_cpu_ms_per_command": run.cpu["cpu_s"]["workers"] / count * 1000,
        "worker_peak_rss_mb": run.peak_rss_mb,
        "cpu": run.cpu,
    }
