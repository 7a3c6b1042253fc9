"""``subswitch keys create`` and ``subswitch policy check``."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import yaml
from typer.testing import CliRunner, Result

from subswitch.cli import app
from subswitch.commandline import ExitCode
from subswitch.contract import ChangeServiceStatus
from subswitch.policy import parse_policy
from subswitch.signing import Signer
from tests.policies import EXAMPLE, example_document


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


def test_keys_create_writes_an_owner_only_key_and_prints_a_stanza_that_verifies(
    tmp_path: Path,
) -> None:
    # When a key pair is created for billing
    result = run("keys", "create", "billing", "--out", str(tmp_path))
    # Then the private key is readable by its owner only
    assert result.exit_code == 0, result.output
    key_file = tmp_path / "billing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # and the printed stanza, pasted into a policy, verifies what the key file signs
    stanza = yaml.safe_load(result.stdout.split("(under producers: or gateways:):\n", 1)[1])
    document = example_document()
    document["producers"]["billing"]["keys"] = stanza["billing"]["keys"]
    policy = parse_policy(yaml.safe_dump(document))
    signer = Signer.from_key_file(key_file)
    [entry] = stanza["billing"]["keys"]
    assert entry["id"] == signer.key_id
    command = ChangeServiceStatus(
        org_id="telco", subscription_id=7, service_id=2, active=False, source="billing"
    )
    assert policy.verify(command, signer.sign(command)) is None
    assert "PRIVATE" not in result.stdout


def test_keys_create_never_overwrites_a_key(tmp_path: Path) -> None:
    # Given a key file that exists
    run("keys", "create", "billing", "--out", str(tmp_path), "--json")
    before = (tmp_path / "billing.key").read_bytes()
    # When another is created under the same name
    result = run("keys", "create", "billing", "--out", str(tmp_path))
    # Then it is refused in one line, and the first key is kept
    assert result.exit_code == ExitCode.BAD_INPUT
    assert result.stderr.startswith("error: ") and "exists" in result.stderr
    assert (tmp_path / "billing.key").read_bytes() == before


def test_keys_create_json_and_bad_names(tmp_path: Path) -> None:
    # When created with --json
    result = run("keys", "create", "fraud-engine", "--out", str(tmp_path), "--json")
    # Then one object names the file, the key id and the public key
    created = json.loads(result.stdout)
    assert set(created) == {"producer", "key_file", "key_id", "public_key"}
    # and a name that would leave the folder is refused
    assert run("keys", "create", "../x", "--out", str(tmp_path)).exit_code == ExitCode.BAD_INPUT


def test_an_api_key_is_shown_once_with_the_sha256_the_policy_keeps() -> None:
    # When an API key is made for billing
    result = run("keys", "create", "billing", "--api-key", "--json")
    # Then the key and its SHA-256 are printed
    created = json.loads(result.stdout)
    assert created["api_key"].startswith("sskey_") and len(created["api_key"]) > 40
    assert created["sha256"] == hashlib.sha256(created["api_key"].encode()).hexdigest()
    # and that hash in the policy file makes the key billing's
    document = example_document()
    document["producers"]["billing"]["api_keys"] = [created["sha256"]]
    policy = parse_policy(yaml.safe_dump(document))
    assert policy.producer_for_api_key(created["api_key"]) == "billing"


def test_policy_check_accepts_the_example_and_lists_each_problem_with_its_line(
    tmp_path: Path,
) -> None:
    # Given the example, and a file with two problems
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "producers:\n  billing:\n    keys: []\n    rulez: []\n    rules:\n      - lanes: [x]\n"
    )
    # When each is checked
    good_result = run("policy", "check", str(EXAMPLE), "--json")
    bad_result = run("policy", "check", str(bad))
    bad_json = run("policy", "check", str(bad), "--json")
    # Then the example is valid
    assert good_result.exit_code == 0
    assert json.loads(good_result.stdout)["valid"] is True
    # and each problem of the other is one line with file and line number, exit 2
    assert bad_result.exit_code == ExitCode.BAD_INPUT
    assert bad_result.stdout.splitlines() == [
        f"{bad}:4: producers.billing.rulez: unknown field 'rulez'",
        f"{bad}:6: producers.billing.rules[0].lanes[0]: Input should be 'urgent', 'normal' "
        "or 'bulk'",
    ]
    assert [p["line"] for p in json.loads(bad_json.stdout)["problems"]] == [4, 6]
