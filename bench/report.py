"""The results: one row per target, a markdown table and the raw numbers as JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.config import BROKER_URL
from bench.procs import REPO

Json = dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One line of the table: a measure of subswitch next to the baseline's."""

    scenario: str
    measure: str
    subswitch: str
    baseline: str
    target: str
    met: bool | None  # None: not measured (the feature or the command is missing)
    note: str = ""


@dataclass
class ScenarioResult:
    """What a scenario hands back: its rows and every number it measured."""

    rows: list[Row]
    raw: Json = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    """``1,234`` / ``12.5 ms`` / ``n/a``."""
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def met_cell(row: Row) -> str:
    """The verdict column."""
    if row.met is None:
        return "**not measured**"
    return "yes" if row.met else "**NO**"


def machine() -> Json:
    """What the numbers were measured on."""
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain")),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def markdown(results: dict[str, ScenarioResult], meta: Json) -> str:
    """The table, then each scenario's notes."""
    lines = [
        "# subswitch benchmarks",
        "",
        f"Run {meta['started_at']} ({meta['elapsed_s']:.0f} s), `{meta['command']}`; "
        f"commit {meta['machine']['commit']}{' (dirty tree)' if meta['machine']['dirty'] else ''}.",
        f"Machine: {meta['machine']['cpus']} CPUs ({meta['machine']['machine']}), Python "
        f"{meta['machine']['python']}; load average at start "
        f"{', '.join(str(x) for x in meta['machine']['loadavg_at_start'])}.",
        "Everything (workers, producer, simulator, Redis, this benchmark) shares the two "
        "cores: figures are end to end on one small machine, not per-component ceilings.",
        "Simulator latency 20 ms per write unless stated; Redis db "
        f"{BROKER_URL.rsplit('/', 1)[-1]} as broker and store, "
        "flushed before each scenario; workers at log level INFO (their default).",
        "",
        "| scenario | measure | subswitch | baseline | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for result in results.values():
        lines += [
            f"| {r.scenario} | {r.measure} | {r.subswitch} | {r.baseline} | {r.target} | "
            f"{met_cell(r)} |"
            for r in result.rows
        ]
    lines += ["", "## Notes", ""]
    for name, result in results.items():
        notes = result.notes + [r.note for r in result.rows if r.note]
        if notes:
            lines += [f"**{name}**", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines) + "\n"


def write(
    results: dict[str, ScenarioResult], meta: Json, directory: Path, *, stem: str = "latest"
) -> tuple[Path, Path]:
    """Write ``STEM.md`` and ``STEM.json``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    md_path, json_path = directory / f"{stem}.md", directory / f"{stem}.json"
    md_path.write_text(markdown(results, meta), encoding="utf-8")
    document = {
        "meta": meta,
        "rows": [asdict(row) for result in results.values() for row in result.rows],
        "scenarios": {name: result.raw for name, result in results.items()},
    }
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return md_path, json_path


def now_iso() -> str:
    """The current UTC time, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
