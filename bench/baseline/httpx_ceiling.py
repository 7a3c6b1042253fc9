"""The httpx-only ceiling: one process that sends the upstream PATCHes and nothing else.

Run: ``python -m bench.baseline.httpx_ceiling --count K --offset O``. The process
builds its clients, prints ``ready``, waits for one line on stdin (so that several
processes start sending together), sends commands ``O .. O+K-1`` as fast as it can,
prints one JSON line (first send and last answer as wall times, its CPU over that
interval, answers and errors), then waits for stdin to close before it exits (so its
/proc entry can still be read).

The requests are subswitch's own (path, JSON body, bearer token, Idempotency-Key:
:mod:`bench.baseline`). The arrangement is the fastest known on this machine
(celery-pitfalls.md, "httpx on this machine"): one asyncio loop, ``--clients`` (16)
``httpx.AsyncClient`` of ``--connections`` (5) connections each, every connection
kept busy. One client with a pool of 50 or more collapses here (4-5 ms of CPU per
request); no queue, store, event or validation: only what any worker must do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx

from bench.baseline import headers, upstream_body, upstream_path, upstream_url

CLIENTS = 16
CONNECTIONS = 5


def command(prefix: str, number: int) -> dict[str, Any]:
    """Command ``number`` as the bulk scenario's CSV has it: one target each."""
    return {
        "type": "ChangeBlockStatus",
        "command_id": f"{prefix}-{number:09d}",
        "org_id": "telco",
        "subscription_id": number // 2 + 1,
        "block_id": number % 2 + 1,
        "active": True,
        "reason": "bench",
    }


async def _sender(client: httpx.AsyncClient, numbers: Iterator[int], prefix: str) -> list[int]:
    """Send the next command until none is left; ``[answered, errors]``."""
    answered = errors = 0
    for number in numbers:
        body = command(prefix, number)
        try:
            response = await client.patch(
                upstream_path(body), json=upstream_body(body), headers=headers(body)
            )
            answered += 1
            errors += response.status_code >= 400
        except httpx.HTTPError:
            errors += 1
    return [answered, errors]


async def run(
    count: int, offset: int, prefix: str, clients: int, connections: int
) -> dict[str, Any]:
    """Send every command on ``clients`` x ``connections`` concurrent requests."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    pool = [
        httpx.AsyncClient(base_url=upstream_url(), limits=limits, timeout=10, trust_env=False)
        for _ in range(clients)
    ]
    # One iterator shared by every sender: each takes the next command when it is free.
    numbers = iter(range(offset, offset + count))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu_before, first_at = time.process_time(), time.time()
    tallies = await asyncio.gather(
        *(_sender(client, numbers, prefix) for client in pool for _ in range(connections))
    )
    last_at, cpu_s = time.time(), time.process_time() - cpu_before
    for client in pool:
        await client.aclose()
    return {
        "first_at": first_at,
        "last_at": last_at,
        "cpu_s": cpu_s,
        "answered": sum(t[0] for t in tallies),
        "errors": sum(t[1] for t in tallies),
        "clients": clients,
        "connections": connections,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options, send, print the result line, wait for stdin to close."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline.httpx_ceiling")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--prefix", default="ceiling")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.count, args.offset, args.prefix, args.clients, args.connections))
    print(json.dumps(result), flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
