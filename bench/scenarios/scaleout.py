"""Scale-out: per-command throughput with 1, 2 and 4 worker processes on this machine.

Each step is the ``throughput`` scenario's subswitch side (``subswitch worker -c 64
--lanes normal`` processes, one producer process sending one message per command,
commands/s = events / (last event - first enqueue)) with ``scaleout_commands``
commands. Around each step the Redis server's ``INFO commandstats`` gives the Redis
commands per applied command (broker and store on one Redis, commands run inside Lua
included; the counts are the server's, so anything else using that Redis meanwhile
is in them too). From the busiest step's figure: how many commands/s one Redis node
carries at the Redis CPU share measured. No baseline: it is a measurement, with no
target beyond being written down (issue 12, item 5).
"""

from __future__ import annotations

from dataclasses import replace

from bench import harness
from bench.harness import Context, Json
from bench.report import Row, ScenarioResult, fmt
from bench.scenarios import throughput


def run(ctx: Context) -> ScenarioResult:
    """Every step in turn, then one row with all of them."""
    steps = [run_step(ctx, workers) for workers in ctx.sizes.scaleout_workers]
    rates = " / ".join(fmt(step["commands_per_s"]) for step in steps)
    per_command = " / ".join(fmt(step["redis_calls_per_command"], 1) for step in steps)
    counts = "/".join(str(step["workers"]) for step in steps)
    row = Row(
        "scale-out",
        f"per-command lanes, commands/s with {counts} worker processes",
        rates,
        "-",
        "measured (issue 12, item 5)",
        all(step["commands_per_s"] is not None for step in steps),
    )
    notes = [
        f"scale-out: {ctx.sizes.scaleout_commands:,} commands per step; Redis commands "
        f"per command {per_command}; Redis CPU per command (ms) "
        + " / ".join(fmt(step["redis_cpu_ms_per_command"], 2) for step in steps)
        + "; CPU split per step: "
        + "; ".join(f"{s['workers']}: {throughput.split_text(s)}" for s in steps)
        + ".",
    ]
    return ScenarioResult([row], {"steps": steps}, notes)


def run_step(ctx: Context, workers: int) -> Json:
    """The throughput scenario's subswitch side with ``workers`` processes."""
    sizes = replace(
        ctx.sizes, throughput_workers=workers, throughput_commands=ctx.sizes.scaleout_commands
    )
    step_ctx = replace(ctx, sizes=sizes)
    before = harness.redis_calls()
    side = throughput.run_subswitch(step_ctx, f"scale{workers}w", lane="normal", kind="commands")
    after = harness.redis_calls()
    calls = sum(after.values()) - sum(before.values())
    events = max(side["events"], 1)
    redis_cpu_s = side["cpu"]["cpu_s"].get("redis")
    return {
        **side,
        "redis_calls": calls,
        "redis_calls_per_command": calls / events if before and after else None,
        "redis_cpu_ms_per_command": redis_cpu_s / events * 1000 if redis_cpu_s else None,
        "redis_calls_by_command": {
            name: after[name] - before.get(name, 0)
            for name in sorted(after, key=lambda n: before.get(n, 0) - after[n])[:12]
        },
    }
