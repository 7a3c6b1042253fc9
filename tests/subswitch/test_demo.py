"""``subswitch demo`` (``make run``): the whole pipeline on the embedded broker and store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from subswitch.embedded import SOCKET_NAME


def test_the_demo_runs_end_to_end_with_no_servers(tmp_path: Path) -> None:
    # Given no broker, store or upstream configured
    env = {key: value for key, value in os.environ.items() if not key.startswith("SUBSWITCH_")}
    env |= {"SUBSWITCH_DATA_DIR": str(tmp_path), "COLUMNS": "160"}
    # When the demo runs
    result = subprocess.run(
        [sys.executable, "-m", "subswitch", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    # Then every command reached its expected outcome, and no server was left running
    assert result.returncode == 0, result.stdout + result.stderr
    for outcome in ("applied", "failed", "expired", "superseded", "rejected"):
        assert outcome in result.stdout
    assert "every command reached its expected outcome" in result.stdout
    assert not (tmp_path / SOCKET_NAME).exists()
    # And it ended with the stolen SIM's history from the archive: the stale unblock
    # (issued an hour earlier) first, then the fraud block, then the reused id
    history = result.stdout.split("subswitch history telco 101", 1)[1].splitlines()[1:]
    assert history[0].startswith("ISSUED_AT")
    column = history[0].index("OUTCOME")
    outcomes = [line[column:].split()[0] for line in history[1:]]
    assert outcomes == ["superseded", "applied", "rejected"]
    assert "fraud-engine" in history[2] and "case-8812" in history[2]
