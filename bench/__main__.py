"""``python -m bench [--only SCENARIO ...] [--quick]``: run the suite, write the results.

Starts one simulator (20 ms latency, its own process) for the whole run, then each
scenario in turn. A scenario that fails is reported as not measured, with its error,
and the others still run. The table and the raw numbers go to ``bench/results/``
(``latest.md``, ``latest.json``; ``quick.*`` with ``--quick``, ``partial.*`` with
``--only``) and
the table is printed at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import harness
from bench.config import LATENCY_MS, QUICK, RESULTS_DIR, SUBSCRIPTIONS, TOKEN, Sizes
from bench.report import Row, ScenarioResult, machine, now_iso, write
from bench.scenarios import SCENARIOS, summary
from subswitch.simulator.testing import spawned_simulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where the results go")
    return parser.parse_args(argv)


def run_scenario(name: str, ctx: harness.Context) -> ScenarioResult:
    """One scenario; an exception becomes a 'not measured' row, never a crash."""
    print(f"[bench] {now_iso()} {name} ...", flush=True)
    started = time.monotonic()
    try:
        result = SCENARIOS[name](ctx)
    except Exception as exc:
        traceback.print_exc()
        row = Row(name, "(scenario failed)", "n/a", "n/a", "-", None, f"error: {exc!r}"[:500])
        result = ScenarioResult([row], {"error": repr(exc)})
    result.raw["scenario_s"] = round(time.monotonic() - started, 1)
    print(f"[bench] {name} done in {result.raw['scenario_s']} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios and write the results."""
    args = parse_args(argv)
    sizes: Sizes = QUICK if args.quick else Sizes()
    names = [name for name in SCENARIOS if not args.only or name in args.only]
    started, started_at = time.monotonic(), now_iso()
    meta: dict[str, Any] = {"started_at": started_at, "machine": machine(), "sizes": sizes.__dict__}
    options = [
        *("--token", TOKEN, "--subscriptions", str(SUBSCRIPTIONS)),
        *("--log-level", "warning", "--latency-ms", str(LATENCY_MS)),
    ]
    results: dict[str, ScenarioResult] = {}
    with (
        tempfile.TemporaryDirectory(prefix="subswitch-bench-") as tmp,
        spawned_simulator(*options) as sim,
    ):
        log_dir = args.results / "logs"
        ctx = harness.Context(sizes, sim, log_dir, harness.redis_server_pid(), Path(tmp))
        for name in names:
            results[name] = run_scenario(name, ctx)
    results.update(summary(results))
    meta["elapsed_s"] = time.monotonic() - started
    meta["command"] = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    # Only a full run replaces latest.*: a partial or quick one goes to files of its own.
    stem = "quick" if args.quick else "partial" if args.only else "latest"
    md_path, json_path = write(results, meta, args.results, stem=stem)
    print(md_path.read_text(encoding="utf-8"))
    print(f"[bench] wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
