"""Bulk lane with chunking: commands/s when many commands travel in one message.

subswitch: ``bulk_workers`` x ``subswitch worker -c 64 --lanes bulk``; a producer
process sends ``chunk_size`` commands per ``subswitch.apply_batch`` message
(``CeleryPublisher.publish_batch`` when it exists, else ``send_task``) while the
workers run; the end is the last command's result event. The baseline has no bulk
lane: its figure is the default task's per-command throughput, measured in the
throughput scenario of the same run (or here, when that one did not run).
"""

from __future__ import annotations

from bench.harness import Context
from bench.report import Row, ScenarioResult, fmt
from bench.scenarios import throughput

TARGET_PER_S = 2_000


def run(ctx: Context) -> ScenarioResult:
    """subswitch's bulk lane; the baseline's figure is shared with ``throughput``."""
    ours = throughput.run_subswitch(ctx, "bulk", lane="bulk", kind="chunks")
    theirs = ctx.shared.get("default_throughput") or throughput.run_default(ctx)
    rate, base = ours["commands_per_s"], theirs["commands_per_s"]
    row = Row(
        "bulk",
        f"bulk lane, chunks of {ctx.sizes.chunk_size}, commands/s (enqueue to result event)",
        fmt(rate),
        f"{fmt(base)} (no chunking)",
        f">= {TARGET_PER_S:,}/s",
        rate is not None and rate >= TARGET_PER_S,
    )
    notes = [
        f"{ours['workers']} x `subswitch worker -c 64 --lanes bulk`, {ours['commands']:,} "
        f"commands in {ours['messages']:,} messages via {ours['publish_method']}; worker CPU "
        f"{ours['worker_cpu_ms_per_command']:.2f} ms/command; CPU split (share of 2 cores): "
        f"{throughput.split_text(ours)}.",
    ]
    return ScenarioResult([row], {"subswitch": ours, "baseline": theirs}, notes)
