"""``subswitch simulator``: options, help and errors (the server itself is stubbed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from subswitch.cli import app as subswitch_app
from subswitch.simulator import cli
from subswitch.simulator.config import MAX_ID, Faults, SimulatorConfig

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"}


def _app() -> typer.Typer:
    app = typer.Typer()
    cli.register(app)

    @app.callback()
    def root() -> None:
        """Keep ``simulator`` a named subcommand, as in ``subswitch``."""

    return app


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record what the CLI would serve instead of serving it."""
    calls: list[dict[str, Any]] = []

    def fake_serve(config: SimulatorConfig, **options: Any) -> None:
        calls.append({"config": config, **options})

    monkeypatch.setattr(cli, "serve", fake_serve)
    return calls


def _option(field: str) -> str:
    # A repeatable option is named for one value (--late-apply-target, once per target).
    name = field.removesuffix("s") if field.endswith("_targets") else field
    return "--" + name.replace("_", "-")


def test_help_lists_every_fault_and_server_option() -> None:
    # When the command's help is shown
    result = runner.invoke(_app(), ["simulator", "--help"], env=WIDE)
    # Then it lists every fault option and the server options
    assert result.exit_code == 0
    expected = [_option(field) for field in Faults.model_fields] + [
        "--host", "--port", "--orgs", "--subscriptions", "--token", "--no-auth",
        "--service-account-file", "--token-ttl", "--seed", "--log-level",
    ]  # fmt: skip
    missing = [option for option in expected if option not in result.output]
    assert missing == []


def test_subswitch_has_the_simulator_command() -> None:
    # Given the assembled subswitch CLI
    # When its simulator help is shown
    result = runner.invoke(subswitch_app, ["simulator", "--help"], env=WIDE)
    # Then the fault options are there
    assert result.exit_code == 0
    assert "--p-lost-response" in result.output


def test_defaults(served: list[dict[str, Any]]) -> None:
    # When the command runs without options
    result = runner.invoke(_app(), ["simulator"])
    # Then the documented defaults are served
    assert result.exit_code == 0, result.output
    (call,) = served
    assert (call["host"], call["port"], call["log_level"], call["access_log"]) == (
        "127.0.0.1",
        8080,
        "info",
        False,
    )
    # ...and, with no token and no service account named, requests need no token, and
    # every subscription id of the contract exists
    assert call["config"] == SimulatorConfig(tokens=(), auth=False, subscriptions=MAX_ID)


@pytest.mark.parametrize(
    ("args", "auth", "tokens"),
    [
        ([], False, []),
        (["--token", "t1"], True, ["t1"]),
        (["--token", "t1", "--no-auth"], False, ["t1"]),
    ],
)
def test_tokens_are_checked_only_when_given(
    served: list[dict[str, Any]], args: list[str], auth: bool, tokens: list[str]
) -> None:
    # When the simulator starts with or without a token
    result = runner.invoke(_app(), ["simulator", *args])
    # Then it checks tokens exactly when one was given (and --no-auth was not)
    assert result.exit_code == 0, result.output
    config: SimulatorConfig = served[0]["config"]
    assert config.auth is auth
    assert [token.get_secret_value() for token in config.tokens] == tokens


def test_a_service_account_alone_turns_token_checks_on(
    served: list[dict[str, Any]], account_file: Path
) -> None:
    # When the simulator is told to trust a service account and given no static token
    result = runner.invoke(_app(), ["simulator", "--service-account-file", str(account_file)])
    # Then tokens are checked, and only the account's count (no well-known static token)
    assert result.exit_code == 0, result.output
    config: SimulatorConfig = served[0]["config"]
    assert (config.auth, config.tokens) == (True, ())


def test_a_service_account_file_in_a_missing_folder_is_refused(
    served: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Given a path into a folder that does not exist (a typo, say)
    path = tmp_path / "no-such-folder" / "sa.json"
    # When the simulator is told to trust it
    result = runner.invoke(_app(), ["simulator", "--service-account-file", str(path)])
    # Then it refuses with one line, creating neither the folder nor a key, serving nothing
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: --service-account-file: no folder {path.parent}; nothing created\n"
    )
    assert not path.parent.exists()
    assert served == []


def test_options_reach_the_config(served: list[dict[str, Any]]) -> None:
    # When the command runs with every kind of option
    args = [
        "simulator", "--host", "0.0.0.0", "--port", "0", "--orgs", "x, y", "--subscriptions",
        "5", "--token", "a", "--token", "b", "--no-auth", "--token-ttl", "60", "--seed", "9",
        "--token-audience", "aud", "--write-log-cap", "10", "--log-level", "warning",
        "--access-log", "--latency-ms", "5", "--jitter-ms", "2", "--p-429", "0.1",
        "--p-429-retry-after", "0.5", "--retry-after-s", "4", "--retry-after-http-date",
        "--p-500", "0.2", "--p-502", "0.01", "--p-503", "0.02", "--p-504", "0.03", "--p-slow",
        "0.04", "--slow-ms", "900", "--p-drop", "0.05", "--p-lost-response", "0.06",
        "--p-late-apply", "0.07", "--late-apply-ms", "800", "--late-apply-target",
        "telco/7/block/1", "--late-apply-target", "acme/9/service/2",
    ]  # fmt: skip
    result = runner.invoke(_app(), args)
    # Then each lands in the served config
    assert result.exit_code == 0, result.output
    (call,) = served
    config: SimulatorConfig = call["config"]
    assert (call["host"], call["port"], call["log_level"], call["access_log"]) == (
        "0.0.0.0",
        0,
        "warning",
        True,
    )
    assert config.orgs == ("x", "y")
    assert (config.subscriptions, config.auth, config.token_ttl, config.seed) == (5, False, 60, 9)
    assert [token.get_secret_value() for token in config.tokens] == ["a", "b"]
    assert (config.token_audience, config.write_log_cap) == ("aud", 10)
    assert config.faults == Faults(
        latency_ms=5, jitter_ms=2, p_429=0.1, p_429_retry_after=0.5, retry_after_s=4,
        retry_after_http_date=True, p_500=0.2, p_502=0.01, p_503=0.02, p_504=0.03,
        p_slow=0.04, slow_ms=900, p_drop=0.05, p_lost_response=0.06, p_late_apply=0.07,
        late_apply_ms=800, late_apply_targets=("telco/7/block/1", "acme/9/service/2"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--p-429", "2"], "--p-429"), (["--port", "70000"], "--port"),
     (["--orgs", "bad org"], "invalid orgs"), (["--orgs", ","], "invalid orgs"),
     (["--subscriptions", "0"], "--subscriptions"), (["--latency-ms", "-1"], "--latency-ms"),
     (["--late-apply-target", "telco/7/blocks/1"], "invalid late_apply_targets")],
)  # fmt: skip
def test_bad_options_fail_with_a_clear_error(
    served: list[dict[str, Any]], args: list[str], message: str
) -> None:
    # When the command runs with a bad value
    result = runner.invoke(_app(), ["simulator", *args], env=WIDE)
    # Then it exits with 2, naming the problem, and serves nothing
    assert result.exit_code == 2
    assert message in result.output
    assert served == []


def test_missing_service_account_file_is_generated(
    served: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Given a path with no file
    path = tmp_path / "sa.json"
    # When the command is told to trust it
    result = runner.invoke(_app(), ["simulator", "--service-account-file", str(path)])
    # Then an account is generated there, the user is told, and it is trusted
    assert result.exit_code == 0, result.output
    assert path.exists()
    assert str(path) in result.output
    assert served[0]["config"].service_account_files == (path,)


def test_existing_service_account_file_is_kept(
    served: list[dict[str, Any]], account_file: Path
) -> None:
    # Given an existing service-account file
    before = account_file.read_bytes()
    # When the command is told to trust it
    result = runner.invoke(_app(), ["simulator", "--service-account-file", str(account_file)])
    # Then it is used as it is
    assert result.exit_code == 0, result.output
    assert account_file.read_bytes() == before
    assert "generated" not in result.output


def test_unusable_service_account_file_is_a_clear_error(tmp_path: Path) -> None:
    # Given a file that is not a service account
    path = tmp_path / "junk.json"
    path.write_text("{}")
    # When the simulator is started trusting it (port 0, so nothing else can clash)
    result = runner.invoke(
        _app(), ["simulator", "--port", "0", "--service-account-file", str(path)]
    )
    # Then it stops with a one-line error naming the file
    assert result.exit_code == 2
    assert "not a usable service-account file" in result.output
