"""``subswitch retry``: what it refuses before it reads or sends anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from producers.retry_cli import _producer, default_source, register
from subswitch.settings import Settings
from subswitch.signing import key_id_of


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    register(app)
    app.command("noop")(lambda: None)  # a group, so `retry` is a subcommand
    return app


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SUBSWITCH_BROKER_URL", "SUBSWITCH_STORE_URL", "SUBSWITCH_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUBSWITCH_DATA_DIR", str(tmp_path))


@pytest.mark.parametrize(
    "args", [[], ["case-1", "--from-report", "r.csv"]], ids=["neither", "both"]
)
def test_one_id_or_one_report(app: typer.Typer, args: list[str]) -> None:
    # Given neither an id nor a report, or both / When retry runs / Then exit 2, one line
    result = CliRunner().invoke(app, ["retry", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: give a COMMAND_ID or --from-report REPORT.csv (one of them)\n"


@pytest.mark.parametrize(
    ("variable", "missing"),
    [
        ("SUBSWITCH_BROKER_URL", "SUBSWITCH_STORE_URL"),
        ("SUBSWITCH_STORE_URL", "SUBSWITCH_BROKER_URL"),
    ],
)
def test_one_url_without_the_other_names_the_missing_variable(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, missing: str
) -> None:
    # Given only one of the fleet's URLs (retry reads the store and enqueues)
    monkeypatch.setenv(variable, "redis://127.0.0.1:1/0")
    # When a command is retried
    result = CliRunner().invoke(app, ["retry", "case-1"])
    # Then one line names the missing variable, exit 2, no embedded Redis started
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: invalid configuration: {missing} is not set")
    assert not (tmp_path / "redis.sock").exists()


def test_the_default_source_names_the_login(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a login name / When the default source is made / Then retry:<login>
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.setenv("USER", "alice")
    assert default_source(Settings.model_construct()) == "retry:alice"


def test_a_retry_is_signed_with_the_producer_key(tmp_path: Path) -> None:
    # Given a producer key (a worker under a policy rejects unsigned commands)
    private_key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "ops.key"
    key_file.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = Settings(
        broker_url="redis://127.0.0.1:1/0",
        store_url="redis://127.0.0.1:1/0",
        data_dir=tmp_path,
        producer_key_file=key_file,
    )
    # When retry builds its producer (nothing is connected yet)
    with _producer(settings) as producer:
        # Then it signs with that key
        assert producer.signer is not None
        assert producer.signer.key_id == key_id_of(private_key.public_key())
