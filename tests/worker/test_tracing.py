"""One trace per command: the producer's send, the worker's run, the upstream call.

In-process: a Celery worker in a thread of this process (``celery.contrib.testing``,
the threads pool, the worker's own app, consumer and runtime), on the Redis test DB,
with the simulator in its own process; spans go to OpenTelemetry's in-memory exporter.
A real worker process would need its spans shipped back; the chain is the same.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import celeryd_after_setup
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from producers.publisher import CeleryPublisher
from subswitch.contract import ChangeBlockStatus
from subswitch.logs import HANDLER_NAME
from subswitch.settings import Settings
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from subswitch.tracing import Tracing, configure_tracing
from tests.worker.processes import wait_until
from worker.bootstrap import create_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with spawned_simulator("--subscriptions", "100") as handle:
        yield handle


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing: Tracing | None = configure_tracing(Settings(), exporter=exporter, set_global=False)
    assert tracing is not None
    yield exporter
    tracing.shutdown()  # instrumentations out again: later tests run untraced
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)


def _one(spans: list[ReadableSpan], kind: SpanKind, name_part: str) -> ReadableSpan:
    found = [s for s in spans if s.kind is kind and name_part in s.name]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def test_send_run_and_upstream_call_are_one_trace(
    clean_redis_url: str, simulator: SimulatorHandle, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    # Given the worker's app running in this process, traced
    settings = Settings(
        broker_url=clean_redis_url,
        store_url=clean_redis_url,
        upstream_url=simulator.base_url,
        data_dir=tmp_path,
        visibility_timeout=8,
    )
    app = create_app(settings)
    celeryd_after_setup.send(sender="tracing-test", instance=SimpleNamespace(app=app))
    publisher = CeleryPublisher(
        broker_url=clean_redis_url, visibility_timeout=8, queue_type="quorum"
    )
    command = ChangeBlockStatus(
        org_id="telco", subscription_id=3, block_id=1, active=True, source="tests"
    )
    with (
        start_worker(app, pool="threads", concurrency=2, perform_ping_check=False),
        contextlib.closing(publisher),
    ):
        # When a producer sends a command and the worker applies it
        publisher.publish(command)
        wait_until(
            lambda: (
                any(s.kind is SpanKind.CLIENT for s in spans.get_finished_spans())
                and any(s.kind is SpanKind.CONSUMER for s in spans.get_finished_spans())
            ),
            timeout=30,
            what="the worker's spans",
        )
    # Then send -> run -> upstream PATCH is one chain of parent and child
    finished = list(spans.get_finished_spans())
    send = _one(finished, SpanKind.PRODUCER, "subswitch.apply")
    run = _one(finished, SpanKind.CONSUMER, "subswitch.apply")
    call = _one(finished, SpanKind.CLIENT, "PATCH")
    assert send.parent is None
    assert run.parent is not None and run.parent.span_id == send.context.span_id
    assert call.parent is not None and call.parent.span_id == run.context.span_id
    assert {send.context.trace_id, run.context.trace_id, call.context.trace_id} == {
        send.context.trace_id
    }
    assert (
        run.attributes is not None and run.attributes.get("celery.task_name") == "subswitch.apply"
    )
