"""``subswitch status`` and ``subswitch retry`` from the outside, on the embedded default:
a real worker process and the simulator, every step through the real CLI.

The simulator answers 503 to every write while a test wants a command to fail; the
worker gives up after two attempts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from subswitch.embedded import stop_embedded_redis
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.worker.processes import running_worker, wait_until

pytestmark = pytest.mark.integration

SUBSWITCH = (sys.executable, "-m", "subswitch")


@dataclass(frozen=True)
class Setup:
    """The simulator, and the environment every CLI call of the tests gets."""

    sim: SimulatorHandle
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``subswitch ARGS`` as a user runs it."""
        return subprocess.run(
            [*SUBSWITCH, *args], env=self.env, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip

    def status(self, command_id: str) -> dict[str, Any]:
        """``subswitch status ID --json``, parsed."""
        done = self.run("status", command_id, "--json")
        assert done.returncode == 0, done.stderr
        parsed: dict[str, Any] = json.loads(done.stdout)
        return parsed

    def failed_block(
        self, command_id: str, subscription_id: int
    ) -> subprocess.CompletedProcess[str]:
        """A fraud block that fails: every write answered 503, two attempts."""
        self.sim.admin.set_faults(p_503=1.0)
        try:
            return self.run(
                "block", "telco", str(subscription_id), "--block-id", "1", "--reason", "stolen",
                "--command-id", command_id, "--correlation-id", "case-77", "--wait",
                "--timeout", "30",
            )  # fmt: skip
        finally:
            self.sim.admin.set_faults(p_503=0.0)


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    """Simulator and worker on the embedded broker and store, no SUBSWITCH_* but these."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SUBSWITCH_")}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ss-")))
        stack.callback(stop_embedded_redis, folder)
        sim = stack.enter_context(spawned_simulator(command=(*SUBSWITCH, "simulator")))
        env |= {
            "SUBSWITCH_DATA_DIR": str(folder),
            "SUBSWITCH_UPSTREAM_URL": sim.base_url,
            "SUBSWITCH_MAX_ATTEMPTS": "2",
        }
        with pytest.MonkeyPatch.context() as patch:  # the worker inherits os.environ
            for name in [name for name in os.environ if name.startswith("SUBSWITCH_")]:
                patch.delenv(name)
            stack.enter_context(running_worker(env, concurrency=2))
        yield Setup(sim, env)


def test_status_shows_a_failed_command_with_its_error_and_event(setup: Setup) -> None:
    # Given a block that failed (two 503s)
    sent = setup.failed_block("case-77-block", 41)
    assert sent.returncode == 1, sent.stdout + sent.stderr
    # When its status is asked, as JSON and as a table
    found = setup.status("case-77-block")
    table = setup.run("status", "case-77-block")
    # Then: failed after 2 attempts with the 503 and its event
    assert (found["state"], found["attempts"], found["found_in"]) == ("failed", 2, "store")
    assert "503" in found["last_error"]
    assert found["event"]["data"]["correlation_id"] == "case-77"
    assert table.returncode == 0 and "failed" in table.stdout and "case-77" in table.stdout


def test_a_failed_command_retried_is_applied_once(setup: Setup) -> None:
    # Given a block that failed while the upstream answered 503 (it answers 201 again)
    assert setup.failed_block("case-78-block", 42).returncode == 1
    # When it is retried
    retried = setup.run("retry", "case-78-block", "--json", "--source", "retry:oncall")
    # Then the retry case-78-block.r1 carries the same intent and is applied upstream
    assert retried.returncode == 0, retried.stderr
    answer = json.loads(retried.stdout)
    assert answer["retry_id"] == "case-78-block.r1"
    assert answer["command"]["correlation_id"] == "case-77"
    assert answer["command"]["source"] == "retry:oncall"
    wait_until(
        lambda: setup.status("case-78-block.r1")["state"] == "applied",
        timeout=30,
        what="the retry to be applied",
    )
    assert setup.sim.admin.target("telco", 42, "block", 1)["active"] is True
    # And the original is not retried again
    again = setup.run("retry", "case-78-block")
    assert again.returncode == 1
    assert again.stderr == (
        "error: case-78-block: it was retried already as case-78-block.r1, which is applied\n"
    )
