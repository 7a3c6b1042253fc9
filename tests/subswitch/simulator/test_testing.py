"""Running a simulator for tests: in a thread and as a subprocess."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx
import pytest

from subswitch.simulator.config import SimulatorConfig
from subswitch.simulator.testing import running_simulator, spawned_simulator
from tests.subswitch.simulator.helpers import AUTH


def test_running_simulator_serves_and_stops() -> None:
    # Given a simulator running in a background thread
    with running_simulator(SimulatorConfig(orgs=("solo",))) as sim:
        root = sim.root_url
        # Then its URLs are on loopback and it answers
        assert root.startswith("http://127.0.0.1:")
        assert sim.base_url == f"{root}/v2"
        assert sim.token_url == f"{root}/oauth/token"
        assert sim.admin.health() == {"status": "ok"}
        listed = httpx.get(f"{sim.base_url}/orgs/solo/subscriptions/1/blocks", headers=AUTH)
        assert listed.status_code == 200
    # When the block exits
    # Then the server is gone and its thread has ended
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{root}/healthz")
    assert f"simulator {root}" not in {t.name for t in threading.enumerate()}


def test_admin_client_reads_every_page_of_writes() -> None:
    # Given a simulator with 12 writes
    with running_simulator() as sim, httpx.Client(base_url=sim.base_url, headers=AUTH) as client:
        for n in range(12):
            client.patch(f"/orgs/acme/subscriptions/{n + 1}/services/3", json={"active": True})
        # When they are read in pages of five, and all at once
        pages = [sim.admin.writes(since=since, limit=5) for since in (0, 5, 10)]
        everything = sim.admin.writes()
    # Then both ways return all twelve in order
    assert [len(page["writes"]) for page in pages] == [5, 5, 2]
    assert [w["seq"] for w in everything["writes"]] == list(range(1, 13))
    assert everything["next"] == 12


def test_admin_client_raises_on_refusals() -> None:
    # Given a running simulator
    with running_simulator() as sim:
        # When an unknown fault is set through the admin client
        # Then the 400 surfaces as an HTTP error
        with pytest.raises(httpx.HTTPStatusError):
            sim.admin.set_faults(p_999=1)
        # And waiting for stats that never come times out
        with pytest.raises(TimeoutError):
            sim.admin.wait_for_stats(lambda stats: stats["writes_total"] > 0, timeout=0.1)


def test_spawned_simulator_takes_cli_options() -> None:
    # Given a simulator subprocess with its own token and every write failing with 500
    with spawned_simulator("--token", "t-1", "--p-500", "1", "--seed", "3") as sim:
        # When a write is made with that token
        response = httpx.patch(
            f"{sim.base_url}/orgs/telco/subscriptions/1/blocks/1",
            json={"active": True},
            headers={"Authorization": "Bearer t-1"},
        )
        # Then the options are in force
        assert response.status_code == 500
        assert sim.admin.faults()["p_500"] == 1.0
        assert sim.pid is not None


def test_console_script_serves_on_port_zero() -> None:
    # Given the subswitch console script next to this interpreter
    script = Path(sys.executable).with_name("subswitch")
    if not script.exists():
        pytest.skip("subswitch console script not installed")
    # When it runs the simulator on port 0
    with spawned_simulator("--no-auth", command=(str(script), "simulator")) as sim:
        # Then it announced a URL that answers without a token
        listed = httpx.get(f"{sim.base_url}/orgs/acme/subscriptions/3/services")
        assert listed.status_code == 200


def test_spawned_simulator_reports_a_failed_start() -> None:
    # When the subprocess is given an invalid org id
    # Then the start fails with the simulator's own error message
    with pytest.raises(RuntimeError, match="invalid orgs"), spawned_simulator("--orgs", "a b"):
        pass  # pragma: no cover - never reached
