"""``subswitch gateway`` refuses to start, with one line, when it could not keep its
promises: no policy, no signing key, a key the policy does not know as a gateway's; and
a built gateway takes a changed policy file, without SIGHUP, unless it is unusable."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner, Result

from producers.gateway.server import build_gateway
from subswitch.cli import app
from subswitch.commandline import ExitCode
from subswitch.settings import Settings
from tests.producers.gateway.conftest import GATEWAY_PRIVATE, GATEWAY_SIGNER, POLICY_YAML, sha256


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


def _settings(folder: Path, *, poll_s: float = 1.0) -> Settings:
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
        policy_poll_seconds=poll_s,
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


def _rewrite(path: Path, text: str) -> None:
    """``text`` into ``path``, dated a second later whatever the file system's grain."""
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))


def _within(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_changed_policy_file_is_in_force_without_sighup(tmp_path: Path) -> None:
    # Given a built gateway that looks at its policy file every 50 ms
    gateway = build_gateway(_settings(tmp_path, poll_s=0.05))
    new_key = "sskey_new_billing"
    assert gateway.intake.policy.producer_for_api_key(new_key) is None
    # When the file gets a new API key, and nobody sends SIGHUP
    policy = tmp_path / "policy.yaml"
    _rewrite(policy, POLICY_YAML.replace("api_keys: [", f"api_keys: [{sha256(new_key)}, ", 1))
    # Then the policy the requests read knows the new key soon
    assert _within(lambda: gateway.intake.policy.producer_for_api_key(new_key) == "fraud-engine")
    gateway.close()


def test_a_changed_file_without_the_gateways_key_is_not_taken(tmp_path: Path) -> None:
    # Given a built gateway that looks at its policy file every 50 ms
    gateway = build_gateway(_settings(tmp_path, poll_s=0.05))
    before = gateway.policy
    # When the file is changed into a valid policy whose gateway entry lost the key
    policy = tmp_path / "policy.yaml"
    stranger = POLICY_YAML.replace(GATEWAY_SIGNER.key_id, "someone-else")
    assert stranger != POLICY_YAML
    _rewrite(policy, stranger)
    # Then once the file was looked at the old policy is still in force
    assert gateway.reload_policy() is False
    assert gateway.policy is before
    gateway.close()
