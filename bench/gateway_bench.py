"""The HTTP gateway's intake: commands/s through the batch endpoint, and the latency
it adds to a single command.

Run: ``python -m bench.gateway_bench [--redis-url URL] [--batches 20] [--singles 300]``

A real ``subswitch gateway`` process (policy and gateway key made here) on a free
loopback port, Redis as broker and store (the DB given is flushed before and after);
no worker runs, so the broker only stores. The client is httpx in this process, one
request at a time (keep-alive).

- batch: ``--batches`` requests of 1,000 bulk-lane service commands each (so 10
  ``subswitch.apply_batch`` messages of 100 per request); commands/s = commands / wall
  time from the first request to the last answer (202), and the gateway process's CPU
  per command over that time.
- single: ``--singles`` requests of one normal-lane command each; latency per request
  as the client saw it. The same commands sent by the SDK's own path in this process
  (sign, publish, record the acceptance: ``CommandProducer.send`` with a store) are the
  baseline; the gateway's added latency is the difference of the medians.

The table goes to ``bench/results/gateway.md`` and to standard output.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

import httpx
import redis
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.procs import cpu_seconds
from producers.producer import CommandProducer
from producers.publisher import CeleryPublisher
from subswitch.contract import ChangeServiceStatus, Lane
from subswitch.signing import Signer, public_key_text

RESULTS: Final = Path(__file__).resolve().parent / "results" / "gateway.md"
API_KEY: Final = "sskey_bench"
BATCH_SIZE: Final = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_bench", description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def write_setup(folder: Path) -> tuple[Path, Path, Signer]:
    """A gateway key file and a policy that lets the bench's API key change services;
    the signer of the SDK baseline (billing's own key)."""
    private_key = Ed25519PrivateKey.generate()
    key_file = folder / "gateway.key"
    key_file.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    gateway = Signer(private_key=private_key)
    billing = Signer(private_key=Ed25519PrivateKey.generate())
    policy = {
        "producers": {
            "billing": {
                "keys": [_stanza(billing)],
                "api_keys": [hashlib.sha256(API_KEY.encode()).hexdigest()],
                "rules": [{"types": ["ChangeServiceStatus"]}],
            }
        },
        "gateways": {"gateway": {"keys": [_stanza(gateway)], "speaks_for": ["billing"]}},
    }
    policy_file = folder / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    return key_file, policy_file, billing


def _stanza(signer: Signer) -> dict[str, str]:
    return {"id": signer.key_id, "public_key": public_key_text(signer.public_key)}


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def gateway_process(env: dict[str, str], port: int) -> Iterator[tuple[str, int]]:
    """``subswitch gateway`` on ``port`` until the block ends; yields its URL and pid."""
    argv = [sys.executable, "-m", "subswitch", "gateway", "--port", str(port)]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=log)
        try:
            yield _await_ready(process, log, f"http://127.0.0.1:{port}"), process.pid
        finally:
            process.terminate()
            process.wait(timeout=30)


def _await_ready(process: subprocess.Popen[bytes], log: IO[bytes], url: str) -> str:
    """``url`` once the gateway answers ``/readyz``; its output if it never does."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the gateway did not get ready: {log.read()[-2000:]!r}")
        time.sleep(0.1)  # polling the start-up, bounded by the deadline


def service(n: int, *, lane: str) -> dict[str, Any]:
    """A service command on its own subscription."""
    return {
        "type": "ChangeServiceStatus",
        "command_id": f"bench-{lane}-{n}-{uuid.uuid4().hex[:8]}",
        "org_id": "telco",
        "subscription_id": n + 1,
        "service_id": 3,
        "active": True,
        "priority": lane,
    }


def batches(client: httpx.Client, count: int, pid: int) -> dict[str, Any]:
    """``count`` batches of 1,000 bulk commands, one after the other; the CPU the
    gateway process (``pid``) spent on them."""
    bodies = [
        {"commands": [service(i * BATCH_SIZE + n, lane="bulk") for n in range(BATCH_SIZE)]}
        for i in range(count)
    ]
    latencies = []
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    for body in bodies:
        sent = time.perf_counter()
        answer = client.post("/v1/commands", json=body)
        latencies.append(time.perf_counter() - sent)
        if answer.status_code != 202:
            raise RuntimeError(f"batch answered {answer.status_code}: {answer.text[:300]}")
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "commands": count * BATCH_SIZE,
        "gateway_cpu_ms_per_command": cpu * 1000 / (count * BATCH_SIZE),
        "wall_s": wall,
        "commands_per_s": count * BATCH_SIZE / wall,
        "request_p50_ms": percentile(latencies, 0.5) * 1000,
    }


def singles(client: httpx.Client, count: int) -> list[float]:
    """Latency (s) of ``count`` single normal-lane commands."""
    latencies = []
    for n in range(count):
        body = service(n, lane="normal")
        sent = time.perf_counter()
        answer = client.post("/v1/commands", json=body)
        latencies.append(time.perf_counter() - sent)
        if answer.status_code != 202:
            raise RuntimeError(f"command answered {answer.status_code}: {answer.text[:300]}")
    return latencies


def sdk_singles(redis_url: str, signer: Signer, count: int) -> list[float]:
    """Latency (s) of the SDK's own path for the same commands: sign, publish, record."""
    publisher = CeleryPublisher(
        broker_url=redis_url, visibility_timeout=300, queue_type="quorum", signer=signer
    )
    store = redis.Redis.from_url(redis_url)
    latencies = []
    with CommandProducer(publisher=publisher, signer=signer, store=store) as producer:
        for n in range(count):
            command = ChangeServiceStatus.model_validate(
                service(n, lane=Lane.NORMAL.value) | {"source": "billing"}
            )
            sent = time.perf_counter()
            producer.send(command)
            latencies.append(time.perf_counter() - sent)
    return latencies


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(batch: dict[str, Any], gateway: list[float], sdk: list[float]) -> str:
    """The results as a Markdown table."""
    g50, g99 = percentile(gateway, 0.5) * 1000, percentile(gateway, 0.99) * 1000
    s50, s99 = percentile(sdk, 0.5) * 1000, percentile(sdk, 0.99) * 1000
    return "\n".join(
        [
            "| measure | value |",
            "| --- | --- |",
            f"| batch endpoint, commands/s ({batch['commands']:,} bulk commands in "
            f"batches of 1,000) | {batch['commands_per_s']:,.0f} |",
            f"| one batch of 1,000, request p50 (ms) | {batch['request_p50_ms']:.0f} |",
            "| gateway process CPU per command in batches (ms) | "
            f"{batch['gateway_cpu_ms_per_command']:.3f} |",
            f"| single command through the gateway, p50 / p99 (ms) | {g50:.2f} / {g99:.2f} |",
            f"| the same through the SDK in process, p50 / p99 (ms) | {s50:.2f} / {s99:.2f} |",
            f"| **added latency of the gateway, p50 (ms)** | {g50 - s50:.2f} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run both measures and write the table."""
    args = parse_args(argv)
    store = redis.Redis.from_url(args.redis_url)
    store.flushdb()
    with tempfile.TemporaryDirectory(prefix="subswitch-gateway-bench-") as tmp:
        key_file, policy_file, signer = write_setup(Path(tmp))
        env = {
            "SUBSWITCH_BROKER_URL": args.redis_url,
            "SUBSWITCH_STORE_URL": args.redis_url,
            "SUBSWITCH_POLICY_FILE": str(policy_file),
            "SUBSWITCH_GATEWAY_KEY_FILE": str(key_file),
            "SUBSWITCH_DATA_DIR": tmp,
        }
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with (
            gateway_process(env, free_port()) as (url, pid),
            httpx.Client(base_url=url, headers=headers, timeout=60) as client,
        ):
            singles(client, 20)  # warm-up: connections, pools
            batch = batches(client, args.batches, pid)
            gateway = singles(client, args.singles)
        sdk = sdk_singles(args.redis_url, signer, args.singles)
    store.flushdb()
    text = table(batch, gateway, sdk)
    load = os.getloadavg()[0]
    header = (
        f"Gateway intake, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
        f"{os.cpu_count()} cores ({platform.machine()}, load average {load:.1f} at the end), "
        "Redis broker and store, no worker; `python -m bench.gateway_bench` "
        "(see its docstring).\n\n"
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(header + text + "\n")
    print(header + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
