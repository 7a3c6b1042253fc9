"""``subswitch reconcile`` from the outside: a block applied by a real worker is lifted
behind subswitch's back on the simulator; reconcile reports the drift, and ``--repair``
puts it back through the whole pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from producers import CommandProducer
from producers.events import EventStream
from producers.publisher import CeleryPublisher
from subswitch.cli import app
from subswitch.contract import Outcome
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.worker.processes import running_worker


@pytest.fixture
def simulator() -> Iterator[SimulatorHandle]:
    with spawned_simulator("--token", "dev-token", "--seed", "7") as handle:
        yield handle


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_reconcile_reports_drift_and_repair_converges(
    clean_redis_url: str, simulator: SimulatorHandle, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a worker on Redis, and a fraud block it applied
    env = {
        "SUBSWITCH_BROKER_URL": clean_redis_url,
        "SUBSWITCH_STORE_URL": clean_redis_url,
        "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
        "SUBSWITCH_UPSTREAM_TOKEN": "dev-token",
        "SUBSWITCH_DATA_DIR": str(tmp_path),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    targets = tmp_path / "targets.csv"
    targets.write_text("org_id,subscription_id,kind,id\ntelco,71,block,1\ntelco,71,service,1\n")
    publisher = CeleryPublisher(broker_url=clean_redis_url, visibility_timeout=300,
                                queue_type="quorum")  # fmt: skip
    with (
        running_worker(env, concurrency=2, lanes="normal"),
        EventStream(broker_url=clean_redis_url) as events,
    ):
        with CommandProducer(publisher=publisher) as sdk:
            fraud = sdk.change_block_status(
                org_id="telco", subscription_id=71, block_id=1, active=True, reason="stolen",
                source="fraud",
            )  # fmt: skip
        assert events.wait_for({fraud}, 30)[fraud].outcome is Outcome.APPLIED
        # ...which another system lifts behind subswitch's back
        simulator.admin.change_behind("telco", 71, "block", 1, active=False)

        # When the targets are reconciled
        checked = cli("reconcile", "--targets", str(targets), "--json")
        # Then the block has drifted (the service has no applied intent), exit 1
        assert checked.exit_code == 1, checked.output
        document = json.loads(checked.stdout)
        block, service = document["targets"]
        assert (block["verdict"], block["drift"], block["upstream_active"]) == (
            "drifted",
            True,
            False,
        )
        assert block["intent"]["command_id"] == fraud and block["intent"]["active"] is True
        assert service["verdict"] == "no_intent"
        assert document["totals"]["drifted"] == 1

        # When the org's recent targets are reconciled with --repair
        repaired = cli("reconcile", "--org", "telco", "--since", "1h", "--repair", "--json")
        # Then a repair is enqueued, pointing at the fraud block, and applied
        assert repaired.exit_code == 0, repaired.output
        (target,) = json.loads(repaired.stdout)["targets"]
        repair_id = target["repair"]
        assert repair_id.startswith(f"{fraud}.reconcile.")
        event = events.wait_for({repair_id}, 30)[repair_id]
        assert event.outcome is Outcome.APPLIED
        assert (event.data.source, event.data.correlation_id) == ("reconcile", fraud)

    # Then the upstream holds the block again, and reconcile finds no drift
    assert simulator.admin.target("telco", 71, "block", 1)["active"] is True
    again = cli("reconcile", "--targets", str(targets))
    assert again.exit_code == 0, again.output
    assert "1 in sync, 0 drifted" in again.stdout
