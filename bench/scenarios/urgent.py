"""Urgent latency while a bulk backlog drains: enqueue to result event, p99.

subswitch: the bulk backlog is enqueued first: ``urgent_bulk_commands`` single
messages (one ``subswitch.apply`` per command on the bulk lane, through the SDK's
``CommandProducer``: what a batch job sending one command at a time produces); then
``bulk_workers`` x ``subswitch worker -c 64`` (default lanes: the supervisor runs an
urgent child at niceness 0 and a normal/bulk child niced) start and drain it at full
speed, while a probe thread sends one urgent command every 1/``urgent_probes_per_s``
s through the SDK, until the backlog has drained (or the window ends) and at least
``urgent_min_probes`` were sent. Latency = this process (whose event reader runs
throughout) receiving the command's result event - the moment its send began. The
same again with ``urgent_chunked_commands`` in chunks of ``chunk_size``
(``CeleryPublisher.publish_batch``), a second row. Over the probing, every worker
process's CPU, niceness and time spent waiting for a CPU (run queue, /proc schedstat)
are recorded, and Redis's, the simulator's and this process's; each probe's time is
split at its PATCH's arrival at the simulator and at the worker's ``completed_at``.

Baseline: the default task, a backlog of ``baseline_urgent_bulk_commands`` single
messages on the ``celery`` queue, urgent commands on an ``urgent`` queue that the same
worker also consumes (``-Q urgent,celery``: what a team writes first). At ~60
commands/s it cannot drain the backlog within the run, so it is probed for
``baseline_urgent_window_s`` s while the backlog is still there. With no events,
latency = the simulator receiving the write + its 20 ms answer delay - send time
(generous to the baseline: its ack and the rest of its task are not counted).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench import harness, procs
from bench.config import BROKER_URL, LATENCY_MS
from bench.events import Seen, collect
from bench.harness import Context, Json
from bench.load import Kind, LoadSpec, Producer, command_fields, command_id, plain_dict
from bench.probe import Prober
from bench.report import Row, ScenarioResult, fmt
from bench.scenarios import throughput
from producers import CommandProducer
from producers.events import EventStream
from producers.publisher import CeleryPublisher
from subswitch.settings import Settings

TARGET_P99_MS = 250.0
#: Urgent commands target subscriptions far from the bulk ones.
URGENT_FIRST = 1_000_000
GRACE_S = 10.0


def run(ctx: Context) -> ScenarioResult:
    """Single-message backlog, chunked backlog, the default task; then the verdicts."""
    sizes = ctx.sizes
    ours = run_subswitch(ctx, "commands", sizes.urgent_bulk_commands)
    chunked = (
        run_subswitch(ctx, "chunks", sizes.urgent_chunked_commands)
        if sizes.urgent_chunked_commands
        else None
    )
    theirs = run_default(ctx)
    rows = [_row("urgent latency", ours, theirs, "single bulk messages")]
    notes = [_note(ours, "single bulk messages")]
    if chunked is not None:
        backlog = f"bulk commands in chunks of {sizes.chunk_size}"
        rows.append(_row("urgent (chunked)", chunked, theirs, backlog))
        notes.append(_note(chunked, "chunked"))
    notes.append(
        f"baseline: {theirs['bulk_commands']:,} bulk tasks queued, 1 x default prefork worker "
        f"`-Q urgent,celery`, probed for {theirs['window_s']:.0f} s; it had applied "
        f"{theirs['bulk_applied']:,} of the bulk commands by then."
    )
    raw = {"subswitch": ours, "subswitch_chunked": chunked, "baseline": theirs}
    return ScenarioResult(rows, raw, notes)


def _row(label: str, ours: Json, theirs: Json, backlog: str) -> Row:
    p99 = ours["latency_ms"]["p99"]
    enough = ours["probes"] >= ours["min_probes"]
    return Row(
        label,
        f"urgent p99, send to result event, while {ours['bulk_commands']:,} {backlog} drain "
        f"(ms, {ours['probes']} probes)",
        _latency_text(ours),
        _latency_text(theirs),
        f"p99 <= {TARGET_P99_MS:.0f} ms",
        p99 is not None and p99 <= TARGET_P99_MS and ours["missing"] == 0 and enough,
    )


def _note(ours: Json, what: str) -> str:
    drained = (
        f"in {fmt(ours['drain_s'], 1)} s ({fmt(ours['bulk_per_s'])}/s)"
        if ours["drained"]
        else f"NOT within the {fmt(ours['drain_s'])} s window ({ours['bulk_done']:,} done)"
    )
    return (
        f"subswitch, {what}: {ours['bulk_commands']:,} bulk commands ({ours['bulk_messages']:,} "
        f"messages) drained by {ours['workers']} x `subswitch worker -c 64` (default lanes) "
        f"{drained}; {ours['probes']} urgent probes ({ours['probes_during_drain']} sent while "
        f"the backlog drained); p50/p99 from the send to {_stages_text(ours['stages_ms'])}; "
        f"CPU split while "
        f"probing (share of 2 cores): {throughput.split_text(ours)}; per process (CPU share "
        f"of 2 cores, niceness, run-queue wait per CPU second): "
        f"{_roles_text(ours['processes'])}."
    )


def _stages_text(stages: Json) -> str:
    names = {
        "to_upstream": "the PATCH at the simulator",
        "to_completed_at": "the worker's `completed_at`",
        "to_event": "the event here",
    }
    return ", ".join(
        f"{names[key]} {fmt(stages[key]['p50'])}/{fmt(stages[key]['p99'])} ms" for key in names
    )


def _roles_text(roles: Json) -> str:
    return ", ".join(
        f"{role}{' x' + str(r['count']) if r['count'] > 1 else ''} "
        f"{r['share_of_2_cores']:.0%} (nice {r['niceness']}, waited "
        f"{fmt(r['wait_per_cpu_s'], 2)} s per CPU s)"
        for role, r in roles.items()
    )


def _latency_text(side: Json) -> str:
    latency = side["latency_ms"]
    text = f"p99 {fmt(latency['p99'])} (p50 {fmt(latency['p50'])}, max {fmt(latency['max'])})"
    if side["missing"]:
        text += f", {side['missing']} of {side['probes']} never done"
    return text


def latencies(sent: dict[str, float], done: dict[str, float]) -> Json:
    """Percentiles in ms; a probe never done counts as infinitely late."""
    values = [(done[key] - began) * 1000 for key, began in sent.items() if key in done]
    missing = len(sent) - len(values)
    ranked = values + [float("inf")] * missing
    return {
        "p50": harness.percentile(ranked, 0.50),
        "p90": harness.percentile(ranked, 0.90),
        "p99": harness.percentile(ranked, 0.99),
        "max": max(ranked, default=None),
        "done": len(values),
        "missing": missing,
    }


def run_subswitch(ctx: Context, kind: Kind, bulk: int) -> Json:
    """Backlog first, then workers, then probes until the backlog is gone."""
    ctx.fresh()
    sizes = ctx.sizes
    prefix = "ubk" if kind == "commands" else "ubc"
    spec = LoadSpec(kind, bulk, lane="bulk", chunk_size=sizes.chunk_size, prefix=prefix)
    with Producer() as producer:
        load = producer.submit(spec).result(timeout=sizes.drain_timeout_s)
    argvs = [
        harness.subswitch_argv(f"urg{i}", lanes="urgent,normal,bulk", concurrency=64)
        for i in range(sizes.bulk_workers)
    ]
    ready = harness.subswitch_consumers("urgent,normal,bulk")
    publisher = CeleryPublisher.from_settings(Settings(broker_url=BROKER_URL))
    with (
        CommandProducer(publisher=publisher) as sdk,
        EventStream(broker_url=BROKER_URL) as stream,
        harness.fleet(ctx, "urgent-subswitch", argvs, ctx.subswitch_env(), ready=ready) as fleet,
    ):

        def send(number: int) -> str:
            n = URGENT_FIRST + number
            fields = command_fields(n)
            return sdk.change_block_status(
                **fields, command_id=command_id("urg", n), priority="urgent", source="bench"
            )

        probe = _probe(ctx, stream, fleet, Prober(send, sizes.urgent_probes_per_s), bulk)
        rss = fleet.peak_rss_mb()
    stats = latencies(probe.prober.sent, probe.seen.received)
    arrivals = _upstream_arrivals(ctx)
    return {
        "latency_to_completed_at_ms": latencies(probe.prober.sent, probe.seen.completed),
        "stages_ms": _stages(probe, arrivals),
        "slowest_probes": _slowest(probe, arrivals),
        "workers": sizes.bulk_workers,
        "bulk_commands": bulk,
        "bulk_messages": load.messages,
        "publish_method": load.method,
        "drained": probe.drained,
        "drain_s": probe.drain_s,
        "bulk_per_s": bulk / probe.drain_s if probe.drained else None,
        "bulk_done": probe.seen.count - _urgent_seen(probe.seen),
        "probes": len(probe.prober.sent),
        "probes_during_drain": probe.during_drain,
        "min_probes": sizes.urgent_min_probes,
        "probe_errors": probe.prober.errors[:5],
        "missing": stats["missing"],
        "latency_ms": stats,
        "worker_peak_rss_mb": rss,
        "cpu": probe.cpu,
        "processes": probe.roles.as_json(probe.cpu["wall_s"]),
    }


@dataclass
class _Probed:
    prober: Prober
    seen: Seen
    drained: bool
    drain_s: float
    during_drain: int
    cpu: Json
    roles: procs.RoleCpu


def _probe(
    ctx: Context, stream: EventStream, fleet: harness.Fleet, prober: Prober, bulk: int
) -> _Probed:
    """Probe while the backlog drains (and until enough probes went), then a grace period
    for the last probes' events."""
    sizes = ctx.sizes
    seen = Seen()
    split = harness.cpu_split(ctx, fleet)
    named = {"redis": ctx.redis_pid, "simulator": ctx.sim.pid, "bench": os.getpid()}
    roles = procs.RoleCpu(
        [child.pid for child in fleet.children],
        {name: pid for name, pid in named.items() if pid is not None},
    )
    split.start()
    roles.start()
    started = time.time()
    prober.start()
    drained = collect(
        stream,
        seen,
        until=lambda s: s.count - _urgent_seen(s) >= bulk,
        timeout=sizes.urgent_window_s,
    )
    drain_s, during_drain = time.time() - started, len(prober.sent)
    # A small backlog (--quick) may drain before enough probes went: keep probing, idle.
    collect(
        stream,
        seen,
        until=lambda _: len(prober.sent) >= sizes.urgent_min_probes,
        timeout=sizes.urgent_min_probes / sizes.urgent_probes_per_s + GRACE_S,
    )
    prober.stop()
    roles.stop()
    cpu = split.stop()
    collect(stream, seen, until=lambda s: set(prober.sent) <= s.received.keys(), timeout=GRACE_S)
    return _Probed(prober, seen, drained, drain_s, during_drain, cpu, roles)


def _upstream_arrivals(ctx: Context) -> dict[str, float]:
    """When each urgent probe's PATCH reached the simulator (its write log)."""
    writes = ctx.sim.admin.writes()["writes"]
    return {
        str(w["idempotency_key"]): float(w["time"])
        for w in writes
        if str(w.get("idempotency_key") or "").startswith("urg-")
    }


def _stages(probe: _Probed, arrivals: dict[str, float]) -> Json:
    """Where a probe's time goes: send to its PATCH at the simulator (the broker queue,
    the worker's pick-up and store), to the worker's ``completed_at`` (the upstream's
    20 ms, the result recorded), to its event here (publish and this reader)."""
    sent = probe.prober.sent
    return {
        "to_upstream": latencies(sent, arrivals),
        "to_completed_at": latencies(sent, probe.seen.completed),
        "to_event": latencies(sent, probe.seen.received),
    }


def _slowest(probe: _Probed, arrivals: dict[str, float], count: int = 10) -> list[Json]:
    """The slowest probes (send to event), each with its stages in ms."""
    sent, seen = probe.prober.sent, probe.seen

    def ms(done: dict[str, float], key: str) -> float | None:
        return round((done[key] - sent[key]) * 1000, 1) if key in done else None

    ranked = sorted(sent, key=lambda key: -(seen.received.get(key, float("inf")) - sent[key]))
    return [
        {
            "command_id": key,
            "sent_offset_s": round(sent[key] - min(sent.values()), 2),
            "to_upstream_ms": ms(arrivals, key),
            "to_completed_at_ms": ms(seen.completed, key),
            "to_event_ms": ms(seen.received, key),
        }
        for key in ranked[:count]
    ]


def _urgent_seen(seen: Seen) -> int:
    return sum(1 for key in seen.received if key.startswith("urg-"))


def run_default(ctx: Context) -> Json:
    """The default task: backlog on ``celery``, probes on ``urgent``, one worker on both."""
    ctx.fresh()
    sizes = ctx.sizes
    bulk = sizes.baseline_urgent_bulk_commands
    with Producer() as producer:
        producer.submit(LoadSpec("default", bulk, prefix="ubb")).result(timeout=300)
    from bench.baseline import DEFAULT_TASK  # noqa: PLC0415
    from bench.baseline.default_task import app  # noqa: PLC0415

    def send(number: int) -> str:
        body = plain_dict("urb", URGENT_FIRST + number, "urgent")
        app.send_task(DEFAULT_TASK, args=[body], task_id=body["command_id"], queue="urgent")
        return str(body["command_id"])

    argvs = [harness.default_argv("urgbase", queues="urgent,celery")]
    with harness.fleet(ctx, "urgent-default", argvs, ctx.baseline_env(), ready=1):
        prober = Prober(send, sizes.urgent_probes_per_s)
        prober.start()
        time.sleep(sizes.baseline_urgent_window_s)
        prober.stop()
        time.sleep(GRACE_S)  # the same grace period as subswitch's probes get
        writes = ctx.sim.admin.writes()["writes"]
    done = {
        w["idempotency_key"]: w["time"] + LATENCY_MS / 1000
        for w in writes
        if str(w.get("idempotency_key", "")).startswith("urb-")
    }
    stats = latencies(prober.sent, done)
    return {
        "bulk_commands": bulk,
        "bulk_applied": len(writes) - len(done),
        "window_s": sizes.baseline_urgent_window_s,
        "probes": len(prober.sent),
        "probe_errors": prober.errors[:5],
        "missing": stats["missing"],
        "latency_ms": stats,
    }
