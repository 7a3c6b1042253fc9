"""Worker CPU per applied command: subswitch against a bare threads-pool Celery task.

Both run as one Celery worker process with the threads pool at concurrency 64 and
take the same commands (same message body, same PATCH on the same simulator) from a
producer process started after the worker is ready. CPU is the worker process's
user + system time from before the first enqueue to the last command done
(subswitch: its result event; bare task: the simulator answered every write).
subswitch's figure includes the store (idempotency, ordering, lock), the result event
and validation; the bare task does the HTTP call and nothing else.
"""

from __future__ import annotations

from bench import components, harness
from bench.config import BROKER_URL
from bench.events import Seen, collect
from bench.harness import Context, Json
from bench.load import LoadSpec, Producer
from bench.report import Row, ScenarioResult, fmt
from producers.events import EventStream

TARGET_RATIO = 1.25


def run(ctx: Context) -> ScenarioResult:
    """Both workers in turn, the ratio, then where subswitch's CPU goes."""
    ours, bare = run_subswitch(ctx), run_bare(ctx)
    try:
        parts: Json = components.measure(ctx)
    except Exception as exc:  # the split is evidence, not the measure: keep the row
        parts = {"error": repr(exc)}
    ratio = ours["cpu_ms_per_command"] / bare["cpu_ms_per_command"]
    row = Row(
        "worker CPU",
        "worker CPU per applied command (ms), one process, threads, -c 64",
        f"{ours['cpu_ms_per_command']:.2f} ({ratio:.2f}x bare)",
        f"{bare['cpu_ms_per_command']:.2f} (bare threads task)",
        f"<= {TARGET_RATIO}x bare",
        ratio <= TARGET_RATIO,
    )
    notes = [
        f"{ours['commands']:,} commands each; single-process throughput: subswitch "
        f"{fmt(ours['commands_per_s'])}/s, bare task {fmt(bare['commands_per_s'])}/s "
        "(one process is bound by its GIL: its CPU share is "
        f"{ours['cpu']['share_of_2_cores']['workers'] * 2:.0%} of one core for subswitch, "
        f"{bare['cpu']['share_of_2_cores']['workers'] * 2:.0%} for the bare task).",
    ]
    notes.append(_split_note(ours, bare, parts))
    notes.append(
        "Redis commands executed per applied command (inside Lua scripts included; the "
        "whole server, so anyone else's use of it meanwhile counts too): subswitch "
        f"{_calls(ours)}; bare task {_calls(bare)}."
    )
    raw = {"subswitch": ours, "bare": bare, "ratio": ratio, "components": parts}
    return ScenarioResult([row], raw, notes)


def _calls(side: Json) -> str:
    ours = {"rpop", "info"}  # this benchmark's event reader and probes
    calls = {k: v for k, v in side["cpu"].get("redis_calls", {}).items() if k not in ours}
    done = max(side["done"], 1)
    total = sum(calls.values()) / done
    top = ", ".join(f"{name} {count / done:.1f}" for name, count in list(calls.items())[:6])
    return f"{total:.1f} ({top})"


def _split_note(ours: Json, bare: Json, parts: Json) -> str:
    """Per command: Celery's share (from the bare task), the executor's parts, the rest."""
    if "cpu_ms" not in parts:
        return f"CPU split by component not measured: {parts.get('error')}"
    ms = parts["cpu_ms"]
    celery = bare["cpu_ms_per_command"] - ms["http"]
    threads = ours["cpu_ms_per_command"] - ms["handle"] - celery
    detail = ", ".join(f"{name} {value:.2f}" for name, value in ms.items() if name != "handle")
    return (
        f"Where subswitch's {ours['cpu_ms_per_command']:.2f} ms/command go (CPU ms, "
        f"`bench/components.py`, single-threaded, no Celery): `Executor.handle` "
        f"{ms['handle']:.2f} = {detail}. Celery's own per-message work, estimated from the "
        f"bare task ({bare['cpu_ms_per_command']:.2f} - its HTTP call {ms['http']:.2f}): "
        f"{celery:.2f}. Left for 64 threads contending for one GIL (and measurement noise): "
        f"{threads:.2f}."
    )


def run_subswitch(ctx: Context) -> Json:
    """One ``subswitch worker -c 64 --lanes normal``."""
    ctx.fresh()
    count = ctx.sizes.cpu_commands
    argvs = [harness.subswitch_argv("cpu", lanes="normal", concurrency=64)]
    ready = harness.subswitch_consumers("normal")
    with (
        Producer() as producer,
        EventStream(broker_url=BROKER_URL) as stream,
        harness.fleet(ctx, "cpu-subswitch", argvs, ctx.subswitch_env(), ready=ready) as fleet,
    ):
        split = harness.cpu_split(ctx, fleet)
        split.start()
        future = producer.submit(LoadSpec("commands", count, prefix="cpu"))
        seen = Seen()
        collect(stream, seen, until=lambda s: s.count >= count, timeout=ctx.sizes.drain_timeout_s)
        load = future.result(timeout=60)
        cpu = split.stop(producer=load.cpu_s)
        rss = fleet.peak_rss_mb()
    last = seen.last_received()
    return _figures(count, seen.count, cpu, load.first_at, last, rss)


def run_bare(ctx: Context) -> Json:
    """One bare threads-pool Celery worker, -c 64."""
    ctx.fresh()
    count = ctx.sizes.cpu_commands
    spec = LoadSpec("bare", count, prefix="cpb")
    run = harness.drive_writes(ctx, "cpu-bare", [harness.bare_argv("bare")], spec)
    done = harness.writes_so_far(ctx.sim)
    return _figures(count, done, run.cpu, run.first_at, run.done_at, run.peak_rss_mb)


def _figures(
    count: int, done: int, cpu: Json, first_at: float, last_at: float | None, rss: float
) -> Json:
    elapsed = last_at - first_at if last_at else None
    return {
        "commands": count,
        "done": done,
        "elapsed_s": elapsed,
        "commands_per_s": done / elapsed if elapsed else None,
        "cpu_ms_per_command": cpu["cpu_s"]["workers"] / max(done, 1) * 1000,
        "worker_peak_rss_mb": rss,
        "cpu": cpu,
    }
