"""What subswitch is compared with: Celery tasks as a team would write them.

- :mod:`bench.baseline.default_task`: the plain task a team writes by default (prefork
  pool at its default concurrency, one httpx call per command, ``autoretry_for`` with
  ``retry_backoff``, JSON).
- :mod:`bench.baseline.bare_threads`: the least a threads-pool worker can do per
  command (one PATCH on a pooled httpx client), the floor for worker CPU.

Both read ``BENCH_BROKER_URL``, ``BENCH_UPSTREAM_URL`` and ``BENCH_UPSTREAM_TOKEN``.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_TASK = "baseline.change_status"
BARE_TASK = "bare.change_status"


def upstream_path(command: dict[str, Any]) -> str:
    """The MasStack path a command writes to (under the ``/v2`` base URL)."""
    prefix = f"/orgs/{command['org_id']}/subscriptions/{command['subscription_id']}"
    if command["type"] == "ChangeBlockStatus":
        return f"{prefix}/blocks/{command['block_id']}"
    return f"{prefix}/services/{command['service_id']}"


def upstream_body(command: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of the PATCH."""
    body: dict[str, Any] = {"active": command["active"]}
    if command.get("reason"):
        body["reason"] = command["reason"]
    return body


def headers(command: dict[str, Any]) -> dict[str, str]:
    """Bearer token and idempotency key, as subswitch sends them."""
    return {
        "Authorization": f"Bearer {os.environ.get('BENCH_UPSTREAM_TOKEN', 'dev-token')}",
        "Idempotency-Key": command["command_id"],
        "x-auth-roles": "API_KEY",
    }


def broker_url() -> str:
    """The broker of the run: ``BENCH_BROKER_URL`` (set for baseline workers), else the
    suite's own ``BENCH_REDIS_URL`` (the benchmark and its producer process, which
    import the baseline apps too), else Redis db 11."""
    return (
        os.environ.get("BENCH_BROKER_URL")
        or os.environ.get("BENCH_REDIS_URL")
        or "redis://127.0.0.1:6379/11"
    )


def upstream_url() -> str:
    """The simulator's ``/v2`` base URL."""
    return os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:8080/v2")
