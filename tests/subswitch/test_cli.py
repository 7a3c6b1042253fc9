"""The ``subswitch`` CLI's root: one line for every user mistake, documented exit codes,
``--version`` and ``-h``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from subswitch import __version__
from subswitch.cli import app
from subswitch.commandline import EXIT_STATUS_HELP, ExitCode

WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"}


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # None of the developer's settings; an embedded broker, if any, under tmp_path.
    for name in list(os.environ):
        if name.startswith("SUBSWITCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SUBSWITCH_DATA_DIR", str(tmp_path))


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={**WIDE, **(env or {})})


def assert_one_line_error(result: Result, code: int, expected: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert "╭" not in result.output  # no rich panel


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["blok"], "No such command 'blok'. Did you mean 'block', 'unblock'?"),
        (["--bogus"], "No such option: --bogus"),
        (["worker", "--lanes", "foo"], "Invalid value for '--lanes': unknown lane(s) foo"),
        (["worker", "--loglevel", "LOUD"], "Invalid value for '--loglevel': unknown level 'LOUD'"),
        (["worker", "--concurrency", "0"], "--concurrency"),
        (["simulator", "--port", "99999"], "Invalid value for '--port'"),
        (["block", "telco", "1"], "Missing option '--block-id'"),
        (["events", "--count", "x"], "Invalid value for '--count'"),
        (["batch", "missing.csv"], "'missing.csv' does not exist"),
    ],
)
def test_a_user_mistake_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    # When a command is mistyped or given a bad option / Then one line, exit 2
    assert_one_line_error(run(*args), ExitCode.BAD_INPUT, expected)


@pytest.mark.parametrize(
    ("variable", "value", "args"),
    [
        ("SUBSWITCH_MAX_ATTEMPTS", "x", ["worker"]),
        ("SUBSWITCH_MAX_ATTEMPTS", "x", ["block", "telco", "1", "--block-id", "1"]),
        ("SUBSWITCH_VISIBILITY_TIMEOUT", "soon", ["batch", "--check", "x.csv"]),
        ("SUBSWITCH_RETENTION_SECONDS", "-1", ["demo"]),
        ("SUBSWITCH_BROKER_URL", "nonsense://x", ["block", "telco", "1", "--block-id", "1"]),
        ("SUBSWITCH_BROKER_URL", "nonsense://x", ["events"]),
        ("SUBSWITCH_BROKER_URL", "nonsense://x", ["worker"]),
    ],
)
def test_a_configuration_error_names_the_variable(
    variable: str, value: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one bad SUBSWITCH_* variable (and a file for batch, so only the setting is bad)
    (tmp_path / "x.csv").write_text("type,org_id,subscription_id,block_id,active\n")
    monkeypatch.chdir(tmp_path)
    # When a command runs
    result = run(*args, env={variable: value})
    # Then one line names the environment variable, not the settings field
    assert_one_line_error(result, ExitCode.BAD_INPUT, f"invalid configuration: {variable}: ")


def test_version() -> None:
    # When the version is asked for / Then it is printed alone
    result = run("--version")
    assert (result.exit_code, result.stdout) == (0, f"subswitch {__version__}\n")


@pytest.mark.parametrize("args", [["-h"], ["block", "-h"], ["worker", "-h"], ["simulator", "-h"]])
def test_dash_h_is_help(args: list[str]) -> None:
    # When -h is given / Then it shows the help, like --help
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "Usage: subswitch" in result.stdout


def test_the_root_help_documents_every_exit_code() -> None:
    # When the root help is shown
    text = " ".join(run("--help").stdout.split())
    # Then its epilog lists the exit statuses, timed-out waiting apart from bad input
    assert EXIT_STATUS_HELP in text
    assert "2 bad input" in text and "4 timed out waiting" in text
    assert {code.value for code in ExitCode} == {0, 1, 2, 3, 4, 130}


@pytest.mark.parametrize(
    ("args", "env", "code"),
    [
        (["worker", "--loglevel", "LOUD"], {}, 2),
        (["block", "telco", "1", "--block-id", "1"], {"SUBSWITCH_BROKER_URL": "nonsense://x"}, 2),
    ],
)
def test_the_installed_command_prints_one_line(
    args: list[str], env: dict[str, str], code: int, tmp_path: Path
) -> None:
    # Given the real entry point in a process of its own (not the test runner's invoke)
    environment = {"PATH": os.environ["PATH"], "SUBSWITCH_DATA_DIR": str(tmp_path), **env}
    # When it is given a user mistake
    done = subprocess.run(
        [sys.executable, "-m", "subswitch", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it ends with one error line and nothing else
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
