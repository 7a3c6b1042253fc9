"""Fixtures of the simulator tests: a fake clock, ASGI clients, service accounts."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx works the same for these tests.
    warnings.filterwarnings("ignore", message=".*install `httpx2`", category=UserWarning)
    from starlette.testclient import TestClient

from subswitch.simulator.accounts import generate_service_account
from subswitch.simulator.app import create_app
from subswitch.simulator.config import SimulatorConfig
from subswitch.simulator.testing import SimulatorHandle, running_simulator
from tests.subswitch.simulator.helpers import ClientFactory, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(clock: FakeClock) -> Iterator[ClientFactory]:
    """Build an in-process (ASGI) client of a simulator configured by keyword arguments."""
    clients: list[TestClient] = []

    def make(**config: Any) -> TestClient:
        client = TestClient(create_app(SimulatorConfig(**config), clock=clock))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    """A default simulator (orgs telco and acme, subscriptions 1..1000, token dev-token)."""
    return make_client(seed=1)


@pytest.fixture(scope="session")
def account_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A service account the tests' simulators may trust."""
    return generate_service_account(tmp_path_factory.mktemp("accounts") / "sa.json")


@pytest.fixture(scope="session")
def other_account_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated service account."""
    return generate_service_account(tmp_path_factory.mktemp("accounts") / "other.json")


@pytest.fixture(scope="session")
def live(account_file: Path) -> Iterator[SimulatorHandle]:
    """One real HTTP simulator for the session, trusting ``account_file``."""
    config = SimulatorConfig(seed=1, service_account_files=(account_file,), token_ttl=600)
    with running_simulator(config) as handle:
        yield handle


@pytest.fixture
def sim(live: SimulatorHandle) -> SimulatorHandle:
    """The session's HTTP simulator, reset to seed state and no faults."""
    live.admin.reset(faults=True)
    return live
