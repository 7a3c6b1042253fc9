"""The least a threads-pool Celery task can do per command: one PATCH, nothing else.

Run: ``celery -A bench.baseline.bare_threads worker -P threads -c 64``. One httpx
client per process, shared by the threads (pooled keep-alive connections), the same
request subswitch makes (path, JSON body, bearer token, Idempotency-Key), acks late
and prefetch 1 like subswitch's worker. No store, no lock, no event: the floor that
subswitch's worker CPU per command is compared with.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from celery import Celery

from bench.baseline import (
    BARE_TASK,
    broker_url,
    headers,
    upstream_body,
    upstream_path,
    upstream_url,
)

app = Celery("bare", broker=broker_url())
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_pool_limit=72,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# As subswitch's worker does: one INFO line per HTTP request would dominate the log.
logging.getLogger("httpx").setLevel(logging.WARNING)

_client = httpx.Client(
    base_url=upstream_url(),
    limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    timeout=10,
    trust_env=False,
)


@app.task(name=BARE_TASK, acks_late=True)
def change_status(command: dict[str, Any]) -> int:
    """One PATCH; the status code is the result (ignored)."""
    response = _client.patch(
        upstream_path(command), json=upstream_body(command), headers=headers(command)
    )
    response.raise_for_status()
    return response.status_code
