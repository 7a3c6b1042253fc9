"""``subswitch gateway`` refuses to start, with one line, when it could not keep its
promises: no policy, no signing key, a key the policy does not know as a gateway's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner, Result

from producers.gateway.server import build_gateway
from subswitch.cli import app
from subswitch.commandline import ExitCode
from subswitch.settings import Settings
from tests.producers.gateway.conftest import GATEWAY_PRIVATE, POLICY_YAML, sha256


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("SUBSWITCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SUBSWITCH_DATA_DIR", str(tmp_path))


def run(env: dict[str, str]) -> Result:
    return CliRunner().invoke(app, ["gateway"], env={"COLUMNS": "200", **env})


def key_file(folder: Path) -> Path:
    path = folder / "stranger.key"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


def assert_refused(result: Result, expected: str) -> None:
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.output


def test_without_a_policy_it_refuses_to_start() -> None:
    assert_refused(run({}), "SUBSWITCH_POLICY_FILE: the gateway needs a policy")


def test_without_a_signing_key_it_refuses_to_start(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_YAML)
    result = run({"SUBSWITCH_POLICY_FILE": str(policy)})
    assert_refused(result, "SUBSWITCH_GATEWAY_KEY_FILE: the gateway signs every command")


def test_a_key_that_is_no_gateways_of_the_policy_is_refused(tmp_path: Path) -> None:
    # Given a valid policy and a key none of its gateways holds
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_YAML)
    env = {
        "SUBSWITCH_POLICY_FILE": str(policy),
        "SUBSWITCH_GATEWAY_KEY_FILE": str(key_file(tmp_path)),
    }
    # When the gateway starts, then it refuses, naming the key
    assert_refused(run(env), "is no key of a gateways: entry of the policy")


def test_a_broken_policy_is_refused_with_its_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("producers:\n  billing:\n    rules: [{lanes: [slow]}]\n")
    assert_refused(run({"SUBSWITCH_POLICY_FILE": str(policy)}), "line 3")


def _settings(folder: Path) -> Settings:
    """The test policy and its gateway's key on disk, URLs of servers that do not run."""
    key = folder / "gateway.key"
    key.write_bytes(
        GATEWAY_PRIVATE.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    policy = folder / "policy.yaml"
    policy.write_text(POLICY_YAML)
    return Settings(
        policy_file=policy,
        gateway_key_file=key,
        broker_url="redis://127.0.0.1:1/0",
        store_url="redis://127.0.0.1:1/0",
    )


def test_with_its_key_in_the_policy_it_builds_without_contacting_anything(
    tmp_path: Path,
) -> None:
    # When the gateway is built with the test policy and its key, and no server running
    gateway = build_gateway(_settings(tmp_path))
    # Then it signs as the policy's gateway
    assert gateway.name == "gateway"
    gateway.close()


def test_a_reload_puts_a_valid_policy_in_force_and_keeps_the_old_one_otherwise(
    tmp_path: Path,
) -> None:
    # Given a built gateway whose policy knows no API key for a new producer key
    gateway = build_gateway(_settings(tmp_path))
    new_key = "sskey_new_billing"
    assert gateway.policy.producer_for_api_key(new_key) is None
    # When the file gets the new key's hash and the policy is reloaded
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_YAML.replace("api_keys: [", f"api_keys: [{sha256(new_key)}, ", 1))
    reloaded = gateway.reload_policy()
    # Then the new key is known at once
    assert reloaded is True
    assert gateway.policy.producer_for_api_key(new_key) == "fraud-engine"
    # And a broken file leaves the policy in force as it was
    policy.write_text("producers: [")
    assert gateway.reload_policy() is False
    assert gateway.policy.producer_for_api_key(new_key) == "fraud-engine"
    gateway.close()
