"""Where a subswitch worker's CPU per command goes, one part at a time.

Runs in the benchmark process, single-threaded, against the same Redis and simulator
(so no Celery, no thread pool, no GIL contention): the CPU time (``thread_time``) of

- ``handle``: ``Executor.handle`` of one command, everything the worker does per
  command outside Celery (validation, store, lock, traffic control, HTTP, event);
- ``http``: the upstream PATCH alone (the worker's own client);
- ``event publish``: publishing one result event alone (the worker's event sink);
- ``pydantic``: validating the message, its fingerprint, building the event, its JSON
  and reading it back, as the executor does.

``store, lock, traffic`` is what ``handle`` costs beyond the other three. Measured
after a warm-up, on commands of their own (fresh targets).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench.config import BROKER_URL, TOKEN
from bench.harness import Context, Json
from bench.load import command_dict
from subswitch.contract import Outcome, ResultEvent, parse_command, result_event

REPEATS = 1_000


def _cpu_ms(action: Callable[[int], Any], first: int, count: int) -> float:
    """Mean CPU ms of ``action(n)`` for ``count`` values of ``n``."""
    started = time.thread_time()
    for n in range(first, first + count):
        action(n)
    return (time.thread_time() - started) / count * 1000


def measure(ctx: Context, count: int = REPEATS) -> Json:
    """The per-command CPU of each part (ms), against db 11 (flushed) and the simulator."""
    from subswitch.settings import Settings  # noqa: PLC0415
    from subswitch.urls import resolve_endpoints  # noqa: PLC0415
    from worker.bootstrap import build_runtime, create_app  # noqa: PLC0415
    from worker.sinks import KombuEventSink  # noqa: PLC0415

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
    sink = KombuEventSink(app=app)
    bodies = {n: command_dict("cmp", n, "normal") for n in range(8 * count)}
    sample = result_event(
        parse_command(bodies[0]),
        outcome=Outcome.APPLIED,
        attempts=1,
        completed_at=datetime.now(UTC),
        upstream_status=201,
    ).to_json()

    def handle(n: int) -> None:
        runtime.executor.handle(bodies[n], token=uuid.uuid4().hex)

    def http(n: int) -> None:
        body = bodies[n]
        runtime.client.change_block_status(
            body["org_id"],
            body["subscription_id"],
            body["block_id"],
            active=True,
            reason="bench",
            idempotency_key=body["command_id"],
        )

    def publish(_: int) -> None:
        sink.publish(sample, routing_key="command.applied", event_id=str(uuid.uuid4()))

    def models(n: int) -> None:
        command = parse_command(bodies[n])
        command.fingerprint()
        event = result_event(
            command,
            outcome=Outcome.APPLIED,
            attempts=1,
            completed_at=datetime.now(UTC),
            upstream_status=201,
        ).to_json()
        ResultEvent.model_validate_json(event)

    try:
        _cpu_ms(handle, 0, count // 5)  # warm-up: connections, caches
        parts = {
            "handle": _cpu_ms(handle, count, count),
            "http": _cpu_ms(http, 2 * count, count),
            "event publish": _cpu_ms(publish, 0, count),
            "pydantic": _cpu_ms(models, 3 * count, count),
        }
    finally:
        runtime.close()
        ctx.fresh()
    rest = parts["handle"] - parts["http"] - parts["event publish"] - parts["pydantic"]
    parts["store, lock, traffic (rest of handle)"] = rest
    return {"repeats": count, "cpu_ms": {k: round(v, 3) for k, v in parts.items()}}
