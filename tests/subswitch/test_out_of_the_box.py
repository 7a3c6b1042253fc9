"""Defaults that work together: simulator, worker and CLI, each started with no options
and no ``SUBSWITCH_*`` variable that matters, apply a command."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from subswitch.embedded import stop_embedded_redis
from subswitch.settings import DEFAULT_UPSTREAM_URL
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.worker.processes import running_worker

pytestmark = pytest.mark.integration

SUBSWITCH = (sys.executable, "-m", "subswitch")
SIMULATOR = (*SUBSWITCH, "simulator")
NEWCOMER = ("block", "telco", "214748364", "--block-id", "1", "--reason", "stolen", "--wait")


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No SUBSWITCH_* variable but a private data directory (short: it holds a socket)."""
    for name in list(os.environ):
        if name.startswith("SUBSWITCH_"):
            monkeypatch.delenv(name)
    with tempfile.TemporaryDirectory(prefix="ss-") as folder:
        path = Path(folder)
        try:
            yield path
        finally:
            stop_embedded_redis(path)


def _simulator(stack: ExitStack) -> tuple[SimulatorHandle, dict[str, str]]:
    """``subswitch simulator`` as a user starts it: default host and port (8080).

    Only if that port is taken (another program on this machine) does it run on a free
    port, and then the one variable the worker needs is its URL.
    """
    try:
        sim = stack.enter_context(spawned_simulator("--port", "8080", command=SIMULATOR))
    except RuntimeError as exc:
        if "cannot listen on" not in str(exc):
            raise
        sim = stack.enter_context(spawned_simulator(command=SIMULATOR))
        return sim, {"SUBSWITCH_UPSTREAM_URL": sim.base_url}
    assert sim.base_url == DEFAULT_UPSTREAM_URL
    return sim, {}


def test_simulator_worker_and_cli_work_together_with_no_settings(data_dir: Path) -> None:
    with ExitStack() as stack:
        # Given `subswitch simulator` and `subswitch worker`, neither told anything
        sim, upstream = _simulator(stack)
        env = {"SUBSWITCH_DATA_DIR": str(data_dir), **upstream}
        stack.enter_context(running_worker(env, concurrency=2))
        # When the newcomer's command is sent and waited for
        done = subprocess.run(
            [*SUBSWITCH, *NEWCOMER],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        # Then it is applied upstream (no 401: the simulator needs no token by default)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "applied" in done.stdout
        target = sim.admin.target("telco", 214748364, "block", 1)
        assert target["active"] is True, target
