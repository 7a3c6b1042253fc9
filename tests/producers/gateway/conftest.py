"""An in-process gateway on in-memory parts: publisher, acceptances, status."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from producers.gateway import GatewayParts, Intake, create_app
from producers.gateway.acceptances import InMemoryAcceptances
from producers.gateway.metrics import GatewayMetrics
from producers.publisher import InMemoryPublisher
from subswitch.contract import TimeBounds
from subswitch.errors import BrokerError
from subswitch.policy import Policy, load_policy
from subswitch.signing import Signer, public_key_text
from subswitch.status import CommandStatus

FRAUD_KEY: Final = "fraud-engine-api-key-0123456789"
BILLING_KEY: Final = "billing-api-key-0123456789"
BATCH_KEY: Final = "batch-api-key-0123456789"
GATEWAY: Final = "gateway"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: The gateway's signing key (a fresh one per test session).
GATEWAY_PRIVATE: Final = Ed25519PrivateKey.generate()
GATEWAY_SIGNER: Final = Signer(private_key=GATEWAY_PRIVATE)

GATEWAY_PUBLIC_KEY: Final = public_key_text(GATEWAY_SIGNER.public_key)

POLICY_YAML: Final = f"""
producers:
  fraud-engine:
    api_keys: [{sha256(FRAUD_KEY)}]
    rules:
      - {{types: [ChangeBlockStatus], block_ids: [1, 2], active: true, lanes: [urgent, normal]}}
  billing:
    api_keys: [{sha256(BILLING_KEY)}]
    rules:
      - {{types: [ChangeServiceStatus], active: [true, false], lanes: [normal, bulk]}}
      - {{types: [ChangeBlockStatus], block_ids: [2], active: [true, false]}}
  "batch:*":
    api_keys: [{sha256(BATCH_KEY)}]
    rules:
      - {{types: [ChangeServiceStatus], lanes: [bulk]}}
gateways:
  {GATEWAY}:
    keys: [{{id: {GATEWAY_SIGNER.key_id}, public_key: "{GATEWAY_PUBLIC_KEY}"}}]
    speaks_for: [fraud-engine, billing, "batch:*"]
"""


@dataclass
class FakeStatus:
    """Statuses by id; every other id is ``unknown``."""

    known: dict[str, CommandStatus] = field(default_factory=dict)
    #: Raised by every read, when set.
    fail: Exception | None = None

    def status(self, command_id: str) -> CommandStatus:
        if self.fail is not None:
            raise self.fail
        return self.known.get(command_id) or CommandStatus(command_id=command_id, state="unknown")


@dataclass
class Probe:
    """A readiness probe that fails while ``down``."""

    name: str
    down: bool = False

    def __call__(self) -> None:
        if self.down:
            raise BrokerError(f"{self.name} is down")


@dataclass
class Gateway:
    client: TestClient
    publisher: InMemoryPublisher
    acceptances: InMemoryAcceptances
    status: FakeStatus
    broker: Probe

    def post(self, body: object, key: str = BILLING_KEY) -> object:
        return self.client.post(
            "/v1/commands", json=body, headers={"Authorization": f"Bearer {key}"}
        )


def write_policy(folder: Path) -> Policy:
    """The test policy, written to ``folder`` and loaded."""
    path = folder / "policy.yaml"
    path.write_text(POLICY_YAML)
    return load_policy(path)


def build_gateway(policy: Policy, *, max_body_bytes: int = 64 * 1024) -> Gateway:
    """An app on in-memory parts, with a client that raises no server exception."""
    publisher = InMemoryPublisher(signer=GATEWAY_SIGNER)
    acceptances, status = InMemoryAcceptances(), FakeStatus()
    broker = Probe("broker")
    intake = Intake(
        publisher=publisher,
        acceptances=acceptances,
        policy=policy,
        gateway=GATEWAY,
        time_bounds=TimeBounds(max_skew_s=300, retention_s=86400),
        chunk_size=3,
    )
    parts = GatewayParts(
        intake=intake,
        status=status,
        probes={"broker": broker, "store": Probe("store")},
        metrics=GatewayMetrics(),
        max_body_bytes=max_body_bytes,
        retry_after_s=5,
    )
    client = TestClient(create_app(parts), raise_server_exceptions=False)
    return Gateway(client, publisher, acceptances, status, broker)


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return write_policy(tmp_path)


@pytest.fixture
def gateway(policy: Policy) -> Iterator[Gateway]:
    built = build_gateway(policy)
    with built.client:
        yield built
