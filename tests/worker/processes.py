"""Real worker processes for integration tests, and a way to know they are idle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import kombu
import redis
from celery import Celery

from subswitch.broker import celery_config, is_amqp
from subswitch.contract import Lane
from subswitch.settings import Settings

READY_MARK = " ready."
#: Settings' own defaults (not the environment's), for the probe's Celery app.
DEFAULTS = Settings.model_construct()
#: How long a probe waits for the workers' replies: all of them come well within it.
PROBE_TIMEOUT_S = 1.0


class WorkerProcess:
    """``subswitch worker`` in a child process, with its output kept for failures."""

    def __init__(
        self, env: Mapping[str, str], *, concurrency: int, name: str, lanes: str | None = None
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "subswitch",
            "worker",
            "-c",
            str(concurrency),
            "--urgent-concurrency",
            "2",
            "--hostname",
            f"{name}@%h",
            "--loglevel",
            "INFO",
        ]
        if lanes:
            argv += ["--lanes", lanes]
        # Urgent together with other lanes runs as two Celery workers.
        self.consumers = 2 if lanes is None or ("urgent" in lanes and "," in lanes) else 1
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: deque[str] = deque(maxlen=400)
        self._stopping = False
        self._ready = threading.Event()
        self._ready_count = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if READY_MARK in line:
                self._ready_count += 1
                if self._ready_count >= self.consumers:
                    self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker consumes, or fail with its output."""
        if not self._ready.wait(timeout):
            raise AssertionError("worker did not start:\n" + self.log())

    def log(self) -> str:
        """The worker's recent output."""
        return "".join(self.output)

    def kill(self) -> None:
        """SIGKILL to every process of the worker: no cleanup, no acks, like a lost machine."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it hangs."""
        self.request_stop()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def request_stop(self) -> None:
        """Send SIGTERM (warm shutdown) once, without waiting: ``stop`` waits."""
        if self.process.poll() is None and not self._stopping:
            self._stopping = True
            self.process.send_signal(signal.SIGTERM)


@contextmanager
def running_worker(
    env: Mapping[str, str],
    *,
    concurrency: int = 8,
    name: str = "w1",
    lanes: str | None = None,
    started: list[WorkerProcess] | None = None,
) -> Iterator[WorkerProcess]:
    """A started worker, stopped on exit (and added to ``started``, for its logs)."""
    with running_workers(
        env, names=[name], concurrency=concurrency, lanes=lanes, started=started
    ) as [worker]:
        yield worker


@contextmanager
def running_workers(
    env: Mapping[str, str],
    *,
    names: Sequence[str],
    concurrency: int = 8,
    lanes: str | None = None,
    started: list[WorkerProcess] | None = None,
) -> Iterator[list[WorkerProcess]]:
    """Workers named ``names``, started side by side (their start-ups overlap) and all
    ready, stopped together on exit (and added to ``started``, for their logs)."""
    workers: list[WorkerProcess] = []
    try:
        for name in names:
            workers.append(WorkerProcess(env, concurrency=concurrency, name=name, lanes=lanes))
            if started is not None:
                started.append(workers[-1])
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.request_stop()
        for worker in workers:
            worker.stop()


def queued_messages(broker_url: str, store_url: str) -> int:
    """Messages waiting in the lane queues (ready, not yet delivered)."""
    if not is_amqp(broker_url):
        client = redis.Redis.from_url(store_url if broker_url == store_url else broker_url)
        return sum(int(client.llen(lane.queue)) for lane in Lane)
    with kombu.Connection(broker_url) as connection:
        channel: Any = connection.default_channel  # an amqp channel: it has queue_declare
        return sum(channel.queue_declare(lane.queue, passive=True).message_count for lane in Lane)


def busy_tasks(broker_url: str, *, nodes: int | None = None) -> int | None:
    """Tasks the workers hold: running, reserved or waiting for a retry delay.

    ``nodes``: how many Celery workers (consumers) run. A probe then returns as soon as
    that many answered, instead of waiting out its timeout for any others, and the
    count is None (unknown) if fewer did.
    """
    app = Celery("probe", set_as_current=False)
    app.conf.update(
        celery_config(
            broker_url=broker_url,
            visibility_timeout=DEFAULTS.visibility_timeout,
            queue_type=DEFAULTS.rabbitmq_queue_type,
            delivery_limit=DEFAULTS.delivery_limit,
        )
    )
    inspect = app.control.inspect(timeout=PROBE_TIMEOUT_S, limit=nodes)
    total = 0
    try:
        for probe in (inspect.active, inspect.reserved, inspect.scheduled):
            replies = probe() or {}
            if nodes is not None and len(replies) < nodes:
                return None
            total += sum(len(tasks) for tasks in replies.values())
    finally:
        app.close()
    return total


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)  # poll interval, bounded by the deadline


def wait_idle(
    broker_url: str, store_url: str, *, nodes: int | None = None, timeout: float = 60.0
) -> None:
    """Wait until no command is queued or held by a worker (twice in a row).

    ``nodes``: how many Celery workers run (see ``busy_tasks``); each must answer.
    """

    def idle() -> bool:
        return (
            queued_messages(broker_url, store_url) == 0 and busy_tasks(broker_url, nodes=nodes) == 0
        )

    wait_until(lambda: idle() and idle(), timeout=timeout, what="the workers to be idle")
