"""The gateway from the outside: a real ``subswitch gateway`` process, a worker enforcing
the same policy, the simulator and a Redis broker and store, shared by this module's
tests. Every check goes through HTTP, the simulator's journal or the store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Any, Final

import httpx
import pytest
import redis
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subswitch import keys
from subswitch.signing import Signer, public_key_text
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.conftest import (
    _RELEASE_IF_OURS,
    LOCK_NAME,
    LOCK_TTL_MS,
    _wait_for_lock,
    purge_subswitch_queues,
)
from tests.policies import example_document
from tests.producers.gateway.conftest import sha256
from tests.worker.processes import running_worker, wait_until

pytestmark = pytest.mark.integration

ROOT: Final = Path(__file__).resolve().parents[3]
KEYS: Final = {"fraud-engine": "sskey_fraud", "billing": "sskey_billing", "batch:*": "sskey_batch"}


class GatewayProcess:
    """``subswitch gateway`` in a child process on a free port, its output kept."""

    def __init__(self, env: Mapping[str, str]) -> None:
        with socket.socket() as probe:  # a free port, given to the child
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "subswitch", "gateway", "--port", str(self.port)],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: deque[str] = deque(maxlen=200)
        Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_alive(self) -> None:
        def alive() -> bool:
            assert self.process.poll() is None, "gateway exited:\n" + "".join(self.output)
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(alive, timeout=30, what="the gateway to serve")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def running_gateway(env: Mapping[str, str]) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(env)
    try:
        gateway.wait_alive()
        yield gateway
    finally:
        gateway.stop()


@contextmanager
def locked_redis(url: str) -> Iterator[redis.Redis]:
    """The Redis test DB, flushed, held by this module (``clean_redis_url``'s lock)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    token = uuid.uuid4().hex
    _wait_for_lock(lambda: client.set(LOCK_NAME, token, nx=True, px=LOCK_TTL_MS), url)
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.flushdb().set(LOCK_NAME, token, px=LOCK_TTL_MS).execute()
        yield client
    finally:
        client.eval(_RELEASE_IF_OURS, 1, LOCK_NAME, token)
        client.close()


def write_gateway_key(folder: Path) -> Signer:
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (folder / "gateway.key").write_bytes(pem)
    return Signer(private_key=private_key)


def write_policy(folder: Path, gateway: Signer) -> Path:
    """The example policy with this run's keys, API keys for its three producers."""
    document = example_document()
    for name, api_key in KEYS.items():
        document["producers"][name]["api_keys"] = [sha256(api_key)]
    key = {"id": gateway.key_id, "public_key": public_key_text(gateway.public_key)}
    document["gateways"]["gateway"]["keys"] = [key]
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@dataclass
class Stack:
    gateway: GatewayProcess
    store: redis.Redis
    simulator: SimulatorHandle
    env: dict[str, str]

    def post(self, body: object, producer: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEYS[producer]}"}
        return httpx.post(f"{self.gateway.url}/v1/commands", json=body, headers=headers, timeout=30)

    def state(self, command_id: str, producer: str) -> str:
        headers = {"Authorization": f"Bearer {KEYS[producer]}"}
        url = f"{self.gateway.url}/v1/commands/{command_id}"
        state: str = httpx.get(url, headers=headers, timeout=10).json()["state"]
        return state

    def wait_state(self, command_id: str, producer: str, wanted: str) -> None:
        wait_until(
            lambda: self.state(command_id, producer) == wanted,
            timeout=30,
            what=f"{command_id} to be {wanted}",
        )

    def written_keys(self) -> list[str]:
        return [write["idempotency_key"] for write in self.simulator.admin.writes()["writes"]]


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("gateway")
    signer = write_gateway_key(folder)
    policy = write_policy(folder, signer)
    with (
        spawned_simulator("--token", "dev-token", "--subscriptions", "100") as simulator,
        locked_redis(redis_url) as store,
    ):
        purge_subswitch_queues(redis_url)
        env = {
            "SUBSWITCH_BROKER_URL": redis_url,
            "SUBSWITCH_STORE_URL": redis_url,
            "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
            "SUBSWITCH_UPSTREAM_TOKEN": "dev-token",
            "SUBSWITCH_DATA_DIR": str(folder),
            "SUBSWITCH_POLICY_FILE": str(policy),
            "SUBSWITCH_GATEWAY_KEY_FILE": str(folder / "gateway.key"),
            # The file looked at only on SIGHUP: the SIGHUP test shows what SIGHUP does.
            "SUBSWITCH_POLICY_POLL_SECONDS": "86400",
        }
        with running_worker(env, concurrency=4, name="gateway"), running_gateway(env) as gateway:
            yield Stack(gateway, store, simulator, env)


def block(subscription_id: int, *, active: bool, **fields: Any) -> dict[str, Any]:
    return {
        "type": "ChangeBlockStatus",
        "org_id": "telco",
        "subscription_id": subscription_id,
        "block_id": 1,
        "active": active,
    } | fields


def test_the_curl_example_blocks_a_stolen_sim(stack: Stack) -> None:
    # When the shipped curl example runs with fraud-engine's API key
    env = {
        **os.environ,
        "GATEWAY_URL": stack.gateway.url,
        "SUBSWITCH_API_KEY": KEYS["fraud-engine"],
    }
    done = subprocess.run(
        ["bash", str(ROOT / "examples" / "gateway.sh"), "11"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it was accepted and applied, and the block is on upstream
    assert done.returncode == 0, done.stdout + done.stderr
    assert "202 Accepted" in done.stdout
    assert "location: /v1/commands/fraud-case-11-block-1" in done.stdout.lower()
    assert done.stdout.rstrip().endswith(": applied")
    assert stack.simulator.admin.target("telco", 11, "block", 1)["active"] is True


def test_each_key_is_held_to_its_producers_rules(stack: Stack) -> None:
    # When billing's key lifts block 1 (theft), and claims fraud-engine's source
    lift = stack.post(block(12, active=False, command_id="bill-lift-12"), "billing")
    forged = stack.post(
        block(12, active=False, command_id="forged-12", source="fraud-engine"), "billing"
    )
    # Then both are refused, naming why, and neither was recorded or sent
    assert lift.status_code == 403, lift.text
    assert "not allowed" in lift.json()["errors"][0]["message"]
    assert forged.status_code == 403, forged.text
    assert forged.json()["errors"][0]["field"] == "source"
    assert not stack.store.exists(keys.acceptance("bill-lift-12"), keys.acceptance("forged-12"))
    # And fraud-engine putting it on, urgent, is applied (signed by the gateway)
    put = stack.post(
        block(12, active=True, command_id="fraud-12", priority="urgent"), "fraud-engine"
    )
    assert put.status_code == 202, put.text
    stack.wait_state("fraud-12", "fraud-engine", "applied")
    assert "bill-lift-12" not in stack.written_keys()


def test_a_batch_is_applied_and_the_same_batch_again_gets_the_same_answer(stack: Stack) -> None:
    # Given a batch of 30 bulk service changes from a batch job
    commands = [
        {
            "type": "ChangeServiceStatus",
            "command_id": f"roaming-{n}",
            "org_id": "telco",
            "subscription_id": n,
            "service_id": 3,
            "active": True,
            "priority": "bulk",
            "source": "batch:roaming",
        }
        for n in range(20, 50)
    ]
    # When it is posted twice
    first = stack.post({"commands": commands}, "batch:*")
    again = stack.post({"commands": commands}, "batch:*")
    # Then both answers are the same 202, and every command is applied once
    assert first.status_code == 202, first.text
    assert again.json() == first.json()
    stack.wait_state("roaming-49", "batch:*", "applied")
    wait_until(
        lambda: all(stack.state(f"roaming-{n}", "batch:*") == "applied" for n in range(20, 50)),
        timeout=30,
        what="the batch to be applied",
    )
    written = [key for key in stack.written_keys() if key.startswith("roaming-")]
    assert sorted(written) == sorted(c["command_id"] for c in commands)
    # And the same id with another payload is a conflict
    changed = commands[0] | {"active": False}
    assert stack.post(changed, "batch:*").status_code == 409


def test_a_broker_that_is_down_answers_503_and_accepts_nothing(stack: Stack) -> None:
    # Given a gateway whose broker does not answer (a port nobody listens on)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    env = stack.env | {"SUBSWITCH_BROKER_URL": f"redis://127.0.0.1:{dead_port}/0"}
    with running_gateway(env) as gateway:
        # When a command is posted
        headers = {"Authorization": f"Bearer {KEYS['fraud-engine']}"}
        body = block(13, active=True, command_id="fraud-13", priority="urgent")
        answer = httpx.post(f"{gateway.url}/v1/commands", json=body, headers=headers, timeout=30)
        ready = httpx.get(f"{gateway.url}/readyz", timeout=30)
    # Then it is 503 with Retry-After, and no record claims the command
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) > 0
    assert not stack.store.exists(keys.acceptance("fraud-13"))
    assert stack.state("fraud-13", "fraud-engine") == "unknown"
    # And the gateway says it is not ready, naming the broker
    assert ready.status_code == 503
    assert ready.json()["checks"]["store"] == "ok"
    assert ready.json()["checks"]["broker"] == "unavailable"


def test_sighup_reloads_the_policy_with_a_new_api_key(stack: Stack) -> None:
    # Given a new API key for billing, added to the policy file in force
    policy = Path(stack.env["SUBSWITCH_POLICY_FILE"])
    document = yaml.safe_load(policy.read_text())
    document["producers"]["billing"]["api_keys"].append(sha256("sskey_billing_next"))
    policy.write_text(yaml.safe_dump(document, sort_keys=False))
    headers = {"Authorization": "Bearer sskey_billing_next"}
    url = f"{stack.gateway.url}/v1/commands/anything"
    assert httpx.get(url, headers=headers, timeout=10).status_code == 401
    # When the gateway gets SIGHUP
    stack.gateway.process.send_signal(signal.SIGHUP)
    # Then the new key is accepted, without a restart
    wait_until(
        lambda: httpx.get(url, headers=headers, timeout=10).status_code == 200,
        timeout=10,
        what="the reloaded policy to know the new key",
    )
    assert stack.gateway.process.poll() is None
