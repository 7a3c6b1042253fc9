"""Constants of the suite and the size of each scenario (full run and ``--quick``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Broker and store of every scenario, flushed before each; BENCH_REDIS_URL picks
#: another database (a machine shared with other runs).
BROKER_URL: Final = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
TOKEN: Final = "dev-token"
LATENCY_MS: Final = 20.0
SUBSCRIPTIONS: Final = 2_000_000
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does; the full sizes aim at 15-20 minutes in all."""

    throughput_commands: int = 15_000
    throughput_workers: int = 2
    scaleout_workers: tuple[int, ...] = (1, 2, 4)
    scaleout_commands: int = 5_000
    baseline_commands: int = 2_000
    cpu_commands: int = 6_000
    ceiling_commands: int = 30_000
    bulk_commands: int = 100_000
    bulk_workers: int = 2
    bulk_timeout_s: float = 420.0
    chunk_size: int = 100
    urgent_bulk_commands: int = 20_000
    urgent_chunked_commands: int = 20_000
    urgent_probes_per_s: float = 10.0
    urgent_min_probes: int = 20
    urgent_window_s: float = 90.0
    baseline_urgent_bulk_commands: int = 20_000
    baseline_urgent_window_s: float = 30.0
    rate_limit: int = 200
    rate_limit_workers: int = 4
    rate_limit_seconds: float = 20.0
    baseline_rate_limit_seconds: float = 15.0
    intake_rows: int = 1_000_000
    baseline_intake_rows: int = 50_000
    startup_timeout_s: float = 90.0
    drain_timeout_s: float = 240.0


QUICK: Final = Sizes(
    throughput_commands=1_000,
    throughput_workers=1,
    scaleout_workers=(1, 2),
    scaleout_commands=400,
    baseline_commands=200,
    cpu_commands=600,
    ceiling_commands=2_000,
    bulk_commands=3_000,
    bulk_workers=1,
    bulk_timeout_s=90.0,
    urgent_bulk_commands=800,
    urgent_chunked_commands=600,
    urgent_window_s=12.0,
    urgent_probes_per_s=5.0,
    baseline_urgent_bulk_commands=1_000,
    baseline_urgent_window_s=5.0,
    rate_limit_workers=2,
    rate_limit_seconds=4.0,
    baseline_rate_limit_seconds=3.0,
    intake_rows=20_000,
    baseline_intake_rows=5_000,
    drain_timeout_s=60.0,
)
