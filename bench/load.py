"""Commands for a scenario, and the producer process that enqueues them.

The producer runs in its own process (``multiprocessing``, spawn), so that the
benchmark process can take result events while commands go in, and so that its CPU
is measured on its own. Every command has its own target unless a scenario says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from typing import Any, Literal

from bench.config import BROKER_URL
from subswitch.settings import Settings

Kind = Literal["commands", "chunks", "default", "bare"]


@dataclass(frozen=True)
class LoadSpec:
    """What one producer process sends: ``count`` commands from ``first`` on."""

    kind: Kind
    count: int
    first: int = 0
    lane: str = "normal"
    chunk_size: int = 100
    queue: str = "celery"
    prefix: str = "bench"


@dataclass(frozen=True)
class LoadResult:
    """When the first and last messages went in, and what it cost the producer."""

    first_at: float
    last_at: float
    cpu_s: float
    messages: int
    commands: int
    method: str


def command_id(prefix: str, number: int) -> str:
    """The command id of command ``number`` (also its Celery task id)."""
    return f"{prefix}-{number:08d}"


def command_fields(number: int) -> dict[str, Any]:
    """Target of command ``number``: one block of one subscription, never shared."""
    return {
        "org_id": "telco",
        "subscription_id": number // 2 + 1,
        "block_id": number % 2 + 1,
        "active": True,
        "reason": "bench",
    }


def plain_dict(prefix: str, number: int, lane: str) -> dict[str, Any]:
    """Command ``number`` as a team's producer builds it: a dict, no validation."""
    return {
        "type": "ChangeBlockStatus",
        "command_id": command_id(prefix, number),
        "issued_at": datetime.now(UTC).isoformat(),
        "priority": lane,
        "source": "bench",
        **command_fields(number),
    }


def command_dict(prefix: str, number: int, lane: str) -> dict[str, Any]:
    """Command ``number`` as a validated wire dict (what a producer sends)."""
    from producers.commands import block_status_command  # noqa: PLC0415

    command = block_status_command(
        **command_fields(number),
        command_id=command_id(prefix, number),
        priority=lane,
        source="bench",
        default_source="bench",
    )
    return command.model_dump(mode="json")


def produce(spec: LoadSpec) -> LoadResult:
    """Enqueue as fast as one process can; runs in the producer process."""
    started_cpu = time.process_time()
    senders = {
        "commands": _send_commands,
        "chunks": _send_chunks,
        "default": _send_baseline,
        "bare": _send_baseline,
    }
    first_at, messages, method = senders[spec.kind](spec)
    return LoadResult(
        first_at, time.time(), time.process_time() - started_cpu, messages, spec.count, method
    )


def _numbers(spec: LoadSpec) -> Iterator[int]:
    return iter(range(spec.first, spec.first + spec.count))


def _send_commands(spec: LoadSpec) -> tuple[float, int, str]:
    """One message per command, through the producer SDK."""
    from producers import CommandProducer  # noqa: PLC0415
    from producers.publisher import CeleryPublisher  # noqa: PLC0415

    producer = CommandProducer(
        publisher=CeleryPublisher.from_settings(Settings(broker_url=BROKER_URL))
    )
    first_at = time.time()
    with producer:
        for number in _numbers(spec):
            producer.change_block_status(
                **command_fields(number),
                command_id=command_id(spec.prefix, number),
                priority=spec.lane,
                source="bench",
            )
    return first_at, spec.count, "CommandProducer.change_block_status"


def _send_chunks(spec: LoadSpec) -> tuple[float, int, str]:
    """``chunk_size`` commands per message on the bulk lane."""
    from producers.publisher import CeleryPublisher  # noqa: PLC0415

    publisher = CeleryPublisher.from_settings(Settings(broker_url=BROKER_URL))
    numbers = list(_numbers(spec))
    first_at = time.time()
    messages = 0
    try:
        for start in range(0, len(numbers), spec.chunk_size):
            chunk = [
                command_dict(spec.prefix, n, spec.lane) for n in numbers[start:][: spec.chunk_size]
            ]
            method = _publish_chunk(publisher, chunk)
            messages += 1
    finally:
        publisher.close()
    return first_at, messages, method if messages else "none"


def _publish_chunk(publisher: Any, chunk: list[dict[str, Any]]) -> str:
    """``CeleryPublisher.publish_batch`` when it exists, else ``send_task`` by hand."""
    publish_batch = getattr(publisher, "publish_batch", None)
    if publish_batch is not None:
        from subswitch.contract import parse_command  # noqa: PLC0415

        publish_batch([parse_command(body) for body in chunk])
        return "CeleryPublisher.publish_batch"
    from subswitch.contract import APPLY_BATCH_TASK  # noqa: PLC0415

    with publisher.producer_pool.acquire(block=True) as producer:
        publisher.app.send_task(
            APPLY_BATCH_TASK, args=[chunk], queue="subswitch.bulk", producer=producer
        )
    return "send_task(subswitch.apply_batch)"


def _send_baseline(spec: LoadSpec) -> tuple[float, int, str]:
    """``task.apply_async`` per command, as a team's producer does."""
    from bench.baseline import BARE_TASK, DEFAULT_TASK  # noqa: PLC0415

    # The baseline apps read their broker at import, from the workers' variable: this
    # process must send where the run's workers consume (BENCH_REDIS_URL), not to db 11.
    os.environ["BENCH_BROKER_URL"] = BROKER_URL
    if spec.kind == "bare":
        from bench.baseline.bare_threads import app  # noqa: PLC0415

        name = BARE_TASK
    else:
        from bench.baseline.default_task import app  # noqa: PLC0415

        name = DEFAULT_TASK
    first_at = time.time()
    with app.producer_or_acquire() as producer:
        for number in _numbers(spec):
            body = plain_dict(spec.prefix, number, spec.lane)
            app.send_task(
                name, args=[body], task_id=body["command_id"], queue=spec.queue, producer=producer
            )
    return first_at, spec.count, f"send_task({name})"


class Producer:
    """A producer process: :meth:`submit` a spec, :meth:`result` waits for it."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
        # Start the process (imports included) before anything is timed.
        self._pool.submit(time.time).result(timeout=60)

    def submit(self, spec: LoadSpec) -> Future[LoadResult]:
        """Start sending ``spec`` in the producer process."""
        return self._pool.submit(produce, spec)

    def close(self) -> None:
        """End the producer process."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
