"""What the per-command log line costs: INFO in text and in JSON against WARNING.

In the benchmark process, single-threaded, against Redis db 11 and the simulator at
zero latency (as ``bench/components.py``): the CPU time (``thread_time``) of
``Executor.handle`` per command with the root logger

- at WARNING (no per-command line: the baseline),
- at INFO, text lines (``SUBSWITCH_LOG_FORMAT=text``, the default),
- at INFO, JSON lines (``SUBSWITCH_LOG_FORMAT=json``),

each written to a file as a worker's are, through the handler the worker installs
(``subswitch.logs.configure_logging``: the command's fields, the secret mask). The
modes take turns, round after round, so drift on the shared machine hits them alike;
the WARNING mode runs twice per round, and the largest gap between its two halves
in a round is the noise floor. Separately, the cost of one line (format and write) in each format.
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from bench.config import BROKER_URL, TOKEN
from bench.harness import Context, Json
from bench.load import command_dict
from bench.report import Row, ScenarioResult
from subswitch.logs import HANDLER_NAME, LogFormat, configure_logging, log_context
from subswitch.settings import Settings
from subswitch.urls import resolve_endpoints
from worker.bootstrap import build_runtime, create_app

#: The share of a worker's CPU per command a log line may take: 1% of 3.79 ms
#: (bench/results/latest.md, worker CPU) is 38 us.
TARGET_SHARE = 0.01
WORKER_CPU_MS = 3.79
ROUNDS = 8
LINES = 20_000
#: Loggers the worker keeps at WARNING below DEBUG (worker/cli.py): one line per HTTP
#: request and Celery's two per task would otherwise come on top.
_QUIET = ("httpx", "celery.app.trace", "celery.worker.strategy")
_MODES = ("warning", "text", "json", "warning2")


def run(ctx: Context) -> ScenarioResult:
    """The CPU per command in each mode, and the cost of one line."""
    per_round = max(ctx.sizes.cpu_commands // 20, 50)
    rounds = _handle_cpu(ctx, per_round)
    handle = {mode: statistics.median(values) for mode, values in rounds.items()}
    line_us = {
        fmt.value: _line_us(ctx.data_dir / f"line-{fmt.value}.log", fmt) for fmt in LogFormat
    }
    base = (handle["warning"] + handle["warning2"]) / 2
    # The noise floor: how far the two WARNING halves of one round drift apart.
    noise = max(abs(b / a - 1) for a, b in zip(rounds["warning"], rounds["warning2"], strict=True))
    overhead = {fmt: handle[fmt] / base - 1 for fmt in ("text", "json")}
    budget_us = WORKER_CPU_MS * 1000 * TARGET_SHARE
    row = Row(
        "log lines",
        "per-command INFO line: CPU of one line (us) and of Executor.handle vs WARNING",
        f"text {line_us['text']:.1f} us ({overhead['text']:+.1%}), "
        f"json {line_us['json']:.1f} us ({overhead['json']:+.1%})",
        f"WARNING: {base:.3f} ms/command (noise up to {noise:.1%})",
        f"<= {budget_us:.0f} us/line ({TARGET_SHARE:.0%} of {WORKER_CPU_MS} ms)",
        max(line_us.values()) <= budget_us,
    )
    notes = [
        f"{ROUNDS} rounds of {per_round:,} commands per mode, single-threaded, no Celery; "
        f"Executor.handle CPU ms/command (median of the rounds): "
        + ", ".join(f"{mode} {handle[mode]:.3f}" for mode in _MODES)
        + f". One line, format and write to a file, {LINES:,} lines: "
        + ", ".join(f"{fmt} {us:.1f} us" for fmt, us in line_us.items())
        + ". A worker logs one such line per delivered command."
    ]
    raw: Json = {
        "handle_cpu_ms": handle,
        "rounds_cpu_ms": rounds,
        "line_us": line_us,
        "noise": noise,
        "overhead": overhead,
    }
    return ScenarioResult([row], raw, notes)


def _handle_cpu(ctx: Context, per_round: int) -> dict[str, list[float]]:
    ctx.fresh(latency_ms=0)
    settings = Settings(
        broker_url=BROKER_URL,
        store_url=BROKER_URL,
        upstream_url=ctx.sim.base_url,
        upstream_token=TOKEN,
        data_dir=ctx.data_dir,
    )
    app = create_app(settings)
    runtime = build_runtime(settings, resolve_endpoints(settings), app)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    cpu: dict[str, list[float]] = {mode: [] for mode in _MODES}
    number = 0
    try:
        for round_ in range(ROUNDS + 1):  # round 0 warms up: connections, caches
            for mode in _MODES:
                _log_as(mode, ctx.data_dir / f"worker-{mode}.log")
                bodies = [command_dict("log", number + n, "normal") for n in range(per_round)]
                number += per_round
                started = time.thread_time()
                for body in bodies:
                    runtime.executor.handle(body, token=uuid.uuid4().hex)
                if round_:
                    cpu[mode].append((time.thread_time() - started) / per_round * 1000)
    finally:
        _log_as("warning", ctx.data_dir / "worker-after.log")
        _remove_handler()
        runtime.close()
        app.close()
        ctx.fresh()
    return cpu


def _log_as(mode: str, path: Path) -> None:
    fmt = LogFormat.JSON if mode == "json" else LogFormat.TEXT
    level = logging.INFO if mode in {"text", "json"} else logging.WARNING
    configure_logging(fmt, level=level, logfile=path)


def _line_us(path: Path, fmt: LogFormat) -> float:
    """Mean CPU us of one per-command line, as the executor logs it, in ``fmt``."""
    handler = configure_logging(fmt, level=logging.INFO, logfile=path)
    logger = logging.getLogger("worker.executor")
    fields: dict[str, Any] = {
        "command_id": "batch-3f2a9c1d7e6b5a40-000000017",
        "correlation_id": "case-8812",
        "lane": "bulk",
        "target": "orgs/telco/subscriptions/214748364/blocks/1",
    }
    try:
        with log_context(**fields):
            started = time.thread_time()
            for _ in range(LINES):
                logger.info("command %s", "applied", extra={"outcome": "applied"})
            elapsed = time.thread_time() - started
    finally:
        handler.close()
        _remove_handler()
    return elapsed / LINES * 1e6


def _remove_handler() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.WARNING)
