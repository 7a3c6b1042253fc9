"""The plain Celery task a team would write by default.

Run: ``celery -A bench.baseline.default_task worker`` (prefork pool, default
concurrency = CPU count, default prefetch, early acks). One httpx call per
command on a client kept per worker process, ``autoretry_for`` with
``retry_backoff``, JSON messages. (The even plainer ``httpx.patch(...)`` builds a
client, SSL context included, on every call: that costs this machine about 30 ms of
CPU per command and would halve the baseline, so it is not what is measured.)
No result backend, no idempotency store, no result events: the simulator's write log
is how the benchmark sees it finish.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from celery import Celery

from bench.baseline import (
    DEFAULT_TASK,
    broker_url,
    headers,
    upstream_body,
    upstream_path,
    upstream_url,
)

app = Celery("baseline", broker=broker_url())
app.conf.task_serializer = "json"
app.conf.accept_content = ["json"]
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True

#: Optional per-worker rate limit (Celery's own, ``"200/s"``), for the rate-limit scenario.
RATE_LIMIT = os.environ.get("BENCH_TASK_RATE_LIMIT") or None


_clients: dict[int, httpx.Client] = {}


def _client() -> httpx.Client:
    """This process's client (prefork children must not share the parent's sockets)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = httpx.Client()
    return _clients[pid]


@app.task(
    name=DEFAULT_TASK,
    autoretry_for=(httpx.HTTPError,),
    retry_backoff=True,
    max_retries=8,
    rate_limit=RATE_LIMIT,
)
def change_status(command: dict[str, Any]) -> int:
    """Apply one command upstream; an HTTP error or a 5xx/429 is retried with backoff."""
    response = _client().patch(
        upstream_url() + upstream_path(command),
        json=upstream_body(command),
        headers=headers(command),
        timeout=10,
    )
    response.raise_for_status()
    return response.status_code
