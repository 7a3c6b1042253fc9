"""The four promises a chaos run checks, from its events and the simulator's view."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.chaos_plan import Plan
from subswitch.contract import ChangeBlockStatus, event_id

Json = dict[str, Any]
Target = tuple[int, int]  # (subscription_id, block_id) of org telco
CONFLICT_MARK = "already used with a different payload"

ONE_OUTCOME = "exactly one outcome per command"
FINAL_STATE = "final state = newest intent"
NO_OLDER_AFTER_NEWER = "no older write applied after a newer one"
ONE_IN_FLIGHT = "never two writes in flight on a target"
CHECKS = (ONE_OUTCOME, FINAL_STATE, NO_OLDER_AFTER_NEWER, ONE_IN_FLIGHT)


@dataclass
class Observed:
    """What the outside saw: every event copy, the write log, stats, written targets."""

    events: list[Json]
    writes: list[Json]
    stats: Json
    states: dict[Target, bool]


@dataclass
class ChaosReport:
    """Figures and checks of one run."""

    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Json] = field(default_factory=dict)
    worker_logs: str = ""

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(result["ok"] for result in self.checks.values())

    def failures(self) -> list[str]:
        """One line per failed check."""
        return [f"{name}: {r['detail']}" for name, r in self.checks.items() if not r["ok"]]


def _is_conflict(event: Json) -> bool:
    error = event["data"].get("error") or {}
    return event["data"]["outcome"] == "rejected" and CONFLICT_MARK in (error.get("message") or "")


def check(plan: Plan, seen: Observed) -> ChaosReport:
    """Every check and figure of a run."""
    by_id: dict[str, list[Json]] = defaultdict(list)
    for event in seen.events:
        by_id[event["id"]].append(event)
    report = ChaosReport()
    report.checks[ONE_OUTCOME] = _one_outcome(plan, by_id)
    winners = _winners(plan, by_id)
    report.checks[FINAL_STATE] = _final_state(plan, winners, seen.states)
    report.checks[NO_OLDER_AFTER_NEWER] = _order(plan, seen.writes)
    report.checks[ONE_IN_FLIGHT] = _in_flight(seen.stats)
    report.figures.update(_figures(plan, seen, by_id))
    return report


def _one_outcome(plan: Plan, by_id: dict[str, list[Json]]) -> Json:
    expected = plan.expected_event_ids()
    missing = expected - by_id.keys()
    stray = by_id.keys() - expected
    split = [
        eid for eid, copies in by_id.items() if len({e["data"]["outcome"] for e in copies}) > 1
    ]
    lost_conflicts = [
        command_id
        for command_id, reuse in plan.reuses.items()
        if sum(_is_conflict(e[0]) for e in _events_of(plan, command_id, reuse, by_id)) != 1
    ]
    copies = sum(len(c) - 1 for c in by_id.values())
    ok = not (missing or stray or split or lost_conflicts)
    detail = (
        f"{len(expected & by_id.keys())}/{len(expected)} event ids, {copies} repeated copies; "
        f"missing {len(missing)}, stray {len(stray)}, with two outcomes {len(split)}, "
        f"reused ids without exactly one rejection {len(lost_conflicts)}"
    )
    names = {message.event_id: message.command.command_id for message in plan.messages}
    return {"ok": ok, "detail": detail, "missing": sorted(names[eid] for eid in missing)[:10]}


def _events_of(
    plan: Plan, command_id: str, reuse: ChangeBlockStatus, by_id: dict[str, list[Json]]
) -> list[list[Json]]:
    original = plan.originals[command_id]
    ids = (event_id(command_id, original.fingerprint()), event_id(command_id, reuse.fingerprint()))
    return [by_id[eid] for eid in ids if eid in by_id]


def _winners(plan: Plan, by_id: dict[str, list[Json]]) -> dict[str, ChangeBlockStatus]:
    """The payload that stands for each command id (the first one a worker took)."""
    winners = dict(plan.originals)
    for command_id, reuse in plan.reuses.items():
        first = by_id.get(event_id(command_id, plan.originals[command_id].fingerprint()))
        if first and _is_conflict(first[0]):
            winners[command_id] = reuse
    return winners


def _final_state(
    plan: Plan, winners: dict[str, ChangeBlockStatus], states: dict[Target, bool]
) -> Json:
    newest: dict[Target, ChangeBlockStatus] = {}
    for command in winners.values():
        target = (command.subscription_id, command.block_id)
        if target not in newest or command.order_key > newest[target].order_key:
            newest[target] = command
    wrong = sorted(t for t, cmd in newest.items() if states.get(t, False) != cmd.active)
    detail = f"{len(newest) - len(wrong)}/{len(newest)} targets on their newest intent"
    return {"ok": not wrong, "detail": detail, "wrong": wrong[:10]}


def _order(plan: Plan, writes: list[Json]) -> Json:
    keys = {command_id: command.order_key for command_id, command in plan.originals.items()}
    applied: dict[Target, list[Json]] = defaultdict(list)
    for write in writes:
        if write["applied"] and write["idempotency_key"] in keys:
            applied[(write["subscription_id"], write["id"])].append(write)
    stale: Counter[str] = Counter()
    targets: set[Target] = set()
    for target, target_writes in applied.items():
        newest: tuple[int, str] | None = None
        for write in sorted(target_writes, key=lambda w: (w["applied_at"], w["seq"])):
            key = keys[write["idempotency_key"]]
            if newest is not None and key < newest:
                stale[write["fault"] or "answered"] += 1
                targets.add(target)
            newest = key if newest is None else max(newest, key)
    kinds = ", ".join(f"{fault} {n}" for fault, n in stale.most_common()) or "none"
    detail = f"{sum(stale.values())} on {len(targets)} targets (stale write's fault: {kinds})"
    return {"ok": not stale, "detail": detail, "by_fault": dict(stale)}


def _in_flight(stats: Json) -> Json:
    per_target = stats["max_in_flight_per_target"]
    crowded = sorted(t for t, n in per_target.items() if n > 1)
    detail = f"max {stats['max_in_flight_any']} per target; {len(crowded)} targets above 1"
    return {"ok": stats["max_in_flight_any"] <= 1, "detail": detail, "targets": crowded[:10]}


def _figures(plan: Plan, seen: Observed, by_id: dict[str, list[Json]]) -> Json:
    kinds = Counter(message.kind for message in plan.messages)
    outcomes = Counter(copies[0]["data"]["outcome"] for copies in by_id.values())
    faults = Counter(write["fault"] for write in seen.writes if write["fault"])
    return {
        "commands": len(plan.originals),
        "targets": len(plan.targets),
        "messages": len(plan.messages),
        "duplicates": kinds["duplicate"],
        "reused_ids": kinds["reuse"],
        "event_copies": len(seen.events),
        "outcomes": dict(outcomes.most_common()),
        "writes": seen.stats["writes_total"],
        "writes_applied": seen.stats["writes_applied"],
        "faults": dict(faults.most_common()),
    }


# --- the table ----------------------------------------------------------------------


def _row(label: str, values: list[str]) -> str:
    return f"| {label} | " + " | ".join(values) + " |"


def _check_cell(result: Json) -> str:
    return ("PASS: " if result["ok"] else "**FAIL**: ") + str(result["detail"])


def render_table(reports: list[ChaosReport]) -> str:
    """Figures and checks of each run side by side, as a Markdown table."""
    figures = [r.figures for r in reports]
    lines = [
        _row("", [f["broker"] for f in figures]),
        _row("---", ["---"] * len(reports)),
        _row("commands / targets", [f"{f['commands']:,} / {f['targets']}" for f in figures]),
        _row(
            "messages (duplicates, reused ids)",
            [f"{f['messages']:,} ({f['duplicates']}, {f['reused_ids']})" for f in figures],
        ),
        _row(
            "worker processes, SIGKILLs, broker restarts",
            [f"{f['workers']}, {f['kills']}, {f['broker_restarts']}" for f in figures],
        ),
        _row(
            "upstream writes (applied)",
            [f"{f['writes']:,} ({f['writes_applied']:,})" for f in figures],
        ),
        _row("faults injected", [_counts(f["faults"]) for f in figures]),
        _row("outcomes", [_counts(f["outcomes"]) for f in figures]),
        _row("event copies received", [f"{f['event_copies']:,}" for f in figures]),
    ]
    for name in CHECKS:
        lines.append(_row(f"**{name}**", [_check_cell(r.checks[name]) for r in reports]))
    lines.append(_row("wall time", [f"{f['wall_s']} s" for f in figures]))
    return "\n".join(lines)


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counter.items()) or "none"
