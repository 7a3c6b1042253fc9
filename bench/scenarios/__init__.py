"""The scenarios, in the order a full run takes them; each returns a ScenarioResult.

``summary`` adds the rows drawn from several scenarios (worker memory).
"""

from __future__ import annotations

from collections.abc import Callable

from bench.harness import Context
from bench.report import Row, ScenarioResult, fmt
from bench.scenarios import (
    bulk,
    ceiling,
    cpu,
    intake,
    logs,
    policy,
    ratelimit,
    scaleout,
    throughput,
    urgent,
)

Scenario = Callable[[Context], ScenarioResult]

SCENARIOS: dict[str, Scenario] = {
    "throughput": throughput.run,
    "scaleout": scaleout.run,
    "cpu": cpu.run,
    "ceiling": ceiling.run,
    "bulk": bulk.run,
    "urgent": urgent.run,
    "ratelimit": ratelimit.run,
    "intake": intake.run,
    "logs": logs.run,
    "policy": policy.run,
}

TARGET_RSS_MB = 200.0
#: Scenarios whose subswitch workers ran at concurrency 64 under load.
_LOADED = ("throughput", "cpu", "bulk", "urgent")


def summary(results: dict[str, ScenarioResult]) -> dict[str, ScenarioResult]:
    """The worker RSS row: the highest peak of any one worker process under load."""
    peaks = {
        name: results[name].raw["subswitch"]["worker_peak_rss_mb"]
        for name in _LOADED
        if name in results and "worker_peak_rss_mb" in results[name].raw.get("subswitch", {})
    }
    bare = results["cpu"].raw.get("bare", {}) if "cpu" in results else {}
    if not peaks:
        return {}
    worst = max(peaks, key=lambda name: peaks[name])
    row = Row(
        "worker RSS",
        "peak RSS of one worker process at -c 64 under load (MB)",
        f"{fmt(peaks[worst])} (in {worst})",
        f"{fmt(bare.get('worker_peak_rss_mb'))} (bare threads task)",
        f"<= {TARGET_RSS_MB:.0f} MB",
        peaks[worst] <= TARGET_RSS_MB,
    )
    notes = [
        "Peak (VmHWM) of each Celery worker process, per scenario: "
        + ", ".join(f"{name} {fmt(value)} MB" for name, value in peaks.items())
        + "."
    ]
    return {"rss": ScenarioResult([row], {"peaks_mb": peaks}, notes)}
