"""The policy: its file and its problems (with lines), its rules and globs, signers,
key rotation, gateways and API keys."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from subswitch.contract import AnyCommand, ChangeBlockStatus, ChangeServiceStatus, Lane
from subswitch.errors import ConfigurationError, PermanentError
from subswitch.policy import Policy, PolicyError, load_policy, parse_policy
from tests.policies import EXAMPLE, example_document, example_text, signer, stanza

ISSUED = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def block(block_id: int, active: bool, source: str, lane: Lane = Lane.NORMAL) -> AnyCommand:
    return ChangeBlockStatus(
        org_id="telco",
        subscription_id=7,
        block_id=block_id,
        active=active,
        source=source,
        priority=lane,
        issued_at=ISSUED,
    )


def service(active: bool, source: str, lane: Lane = Lane.NORMAL) -> AnyCommand:
    return ChangeServiceStatus(
        org_id="telco",
        subscription_id=7,
        service_id=2,
        active=active,
        source=source,
        priority=lane,
        issued_at=ISSUED,
    )


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(example_text(), origin="example")


def rule_of(policy: Policy, command: AnyCommand, *, signer_name: str) -> str | None:
    refusal = policy.verify(command, signer(signer_name).sign(command))
    return refusal.rule if refusal is not None else None


def test_the_shipped_example_is_valid() -> None:
    # When the example file is loaded as it ships
    shipped = load_policy(EXAMPLE)
    # Then it names the mission's producers and a gateway
    assert list(shipped.document.producers) == ["fraud-engine", "billing", "batch:*"]
    assert list(shipped.document.gateways) == ["gateway"]


@pytest.mark.parametrize(
    ("command", "signer_name", "refused_by"),
    [
        (block(1, True, "fraud-engine", Lane.URGENT), "fraud-engine", None),
        (block(2, True, "fraud-engine", Lane.URGENT), "fraud-engine", None),
        (block(1, False, "fraud-engine", Lane.URGENT), "fraud-engine", "not-allowed"),
        (block(1, True, "fraud-engine", Lane.NORMAL), "fraud-engine", "not-allowed"),
        (service(True, "fraud-engine", Lane.URGENT), "fraud-engine", "not-allowed"),
        (service(True, "billing"), "billing", None),
        (service(False, "billing", Lane.BULK), "billing", None),
        (block(2, True, "billing"), "billing", None),
        (block(2, False, "billing"), "billing", None),
        (block(1, False, "billing"), "billing", "not-allowed"),
        (block(1, True, "billing"), "billing", "not-allowed"),
        (service(True, "batch:dunning-2026-11", Lane.BULK), "batch:*", None),
        (service(True, "batch:dunning-2026-11", Lane.NORMAL), "batch:*", "not-allowed"),
        (block(2, True, "batch:dunning-2026-11", Lane.BULK), "batch:*", "not-allowed"),
    ],
)
def test_each_producer_may_do_what_its_rules_allow_and_nothing_else(
    policy: Policy, command: AnyCommand, signer_name: str, refused_by: str | None
) -> None:
    # When the command, signed by the producer's key, is verified
    # Then only what a rule allows passes
    assert rule_of(policy, command, signer_name=signer_name) == refused_by


def test_a_refusal_names_the_producer_the_command_and_each_rule(policy: Policy) -> None:
    # When billing's key lifts block 1
    command = block(1, False, "billing")
    refusal = policy.verify(command, signer("billing").sign(command))
    # Then the message says which producer, what, and why each rule did not allow it
    assert refusal is not None
    assert refusal.message == (
        "policy: not allowed: no rule of producer 'billing' allows ChangeBlockStatus block 1 "
        "active=false on lane normal in org 'telco' (rule 1 (services on and off): types; "
        "rule 2 (suspension for debt): block_ids)"
    )


def test_a_command_claiming_another_producers_source_is_refused(policy: Policy) -> None:
    # Given billing's key signing a command that claims to come from fraud-engine
    command = block(1, True, "fraud-engine", Lane.URGENT)
    # Then the source check refuses it, as it does billing claiming a batch source
    assert rule_of(policy, command, signer_name="billing") == "source"
    assert rule_of(policy, service(True, "batch:x", Lane.BULK), signer_name="billing") == "source"
    # and the batch glob's key may not speak for billing either
    assert rule_of(policy, service(True, "billing"), signer_name="batch:*") == "source"


def test_unsigned_unknown_key_bad_signature_and_unknown_producer_are_refused(
    policy: Policy,
) -> None:
    # Given a command billing may send
    command = service(True, "billing")
    signature = signer("billing").sign(command)
    # Then without a signature, with a key nobody holds, or with a forged value it fails
    assert policy.check_message(command, None).rule == "unsigned"  # type: ignore[union-attr]
    unknown = signer("stranger").sign(command)
    assert policy.verify(command, unknown).rule == "unknown-key"  # type: ignore[union-attr]
    forged = signature.model_copy(update={"value": signer("stranger").sign(command).value})
    assert policy.verify(command, forged).rule == "bad-signature"  # type: ignore[union-attr]
    assert policy.check_message(command, {"key": 1}).rule == "bad-signature"  # type: ignore[union-attr]
    # and a source no entry governs is an unknown producer, whoever signs
    stray = service(True, "self-care")
    assert rule_of(policy, stray, signer_name="billing") == "unknown-producer"


def test_a_remembered_signature_counts_only_for_the_bytes_it_was_verified_over(
    policy: Policy,
) -> None:
    # Given a command whose signature verified (and is remembered)
    command = service(True, "billing")
    signature = signer("billing").sign(command)
    assert policy.verify(command, signature) is None
    assert policy.verify(command, signature) is None  # again: from memory
    # When the same signature comes with another command
    other = service(False, "billing")
    # Then it does not verify
    assert rule_of_signed(policy, other, signature) == "bad-signature"


def rule_of_signed(policy: Policy, command: AnyCommand, signature: Any) -> str | None:
    refusal = policy.verify(command, signature)
    return refusal.rule if refusal is not None else None


def test_during_a_rotation_both_keys_verify_and_a_removed_key_no_longer_does() -> None:
    # Given billing with its current and its next key
    command = service(True, "billing")
    both = parse_policy(example_text())
    # Then either key's signature passes
    assert both.verify(command, signer("billing").sign(command)) is None
    assert both.verify(command, signer("billing-next").sign(command)) is None
    # When the old key is removed from the file
    document = example_document()
    document["producers"]["billing"]["keys"] = stanza("billing-next")
    rotated = parse_policy(yaml.safe_dump(document))
    # Then only the next key is accepted
    assert rotated.verify(command, signer("billing-next").sign(command)) is None
    assert rule_of(rotated, command, signer_name="billing") == "unknown-key"


def test_a_gateway_signs_only_for_the_producers_it_speaks_for() -> None:
    # Given a gateway that speaks for billing and the batch jobs, not fraud-engine
    document = example_document()
    document["gateways"]["gateway"]["speaks_for"] = ["billing", "batch:*"]
    policy = parse_policy(yaml.safe_dump(document))
    # Then its key passes billing's and batch commands, held to their producers' rules
    assert rule_of(policy, service(True, "billing"), signer_name="gateway") is None
    assert rule_of(policy, service(True, "batch:7", Lane.BULK), signer_name="gateway") is None
    assert rule_of(policy, block(1, False, "billing"), signer_name="gateway") == "not-allowed"
    # and never fraud-engine's
    urgent = block(1, True, "fraud-engine", Lane.URGENT)
    assert rule_of(policy, urgent, signer_name="gateway") == "source"
    assert policy.may_speak_for("gateway", "billing")
    assert not policy.may_speak_for("gateway", "fraud-engine")
    assert policy.may_speak_for("batch:*", "batch:7")
    assert not policy.may_speak_for("billing", "batch:7")


def test_api_keys_are_found_by_their_sha256(policy: Policy) -> None:
    # Given billing holding the SHA-256 of an API key
    document = example_document()
    digest = hashlib.sha256(b"sskey_billing-secret").hexdigest().upper()
    document["producers"]["billing"]["api_keys"] = [digest]
    with_key = parse_policy(yaml.safe_dump(document))
    # Then the key (not its hash) names billing, and anything else nobody
    assert with_key.producer_for_api_key("sskey_billing-secret") == "billing"
    assert with_key.producer_for_api_key(digest) is None
    assert with_key.producer_for_api_key("") is None


def test_an_exact_name_wins_over_a_glob_and_globs_go_in_file_order() -> None:
    # Given batch:* and an exact batch:special with rules of its own
    document = example_document()
    document["producers"]["batch:special"] = {
        "keys": stanza("special"),
        "rules": [{"types": ["block"], "block_ids": [2]}],
    }
    policy = parse_policy(yaml.safe_dump(document, sort_keys=False))
    # Then batch:special is governed by its own entry, other batch sources by the glob
    assert policy.producer_of("batch:special") == "batch:special"
    assert policy.producer_of("batch:other") == "batch:*"
    assert rule_of(policy, block(2, True, "batch:special"), signer_name="special") is None
    assert rule_of(policy, block(2, True, "batch:special"), signer_name="batch:*") == "source"


def test_rule_aliases_implied_types_and_orgs() -> None:
    # Given rules written with aliases, ids without types, and org globs
    document: dict[str, Any] = {
        "producers": {
            "ops": {
                "keys": stanza("ops"),
                "rules": [
                    {"types": ["service"], "orgs": ["acme"]},
                    {"block_ids": [2], "orgs": ["tel*"], "active": False},
                ],
            }
        }
    }
    policy = parse_policy(yaml.safe_dump(document))
    # Then each rule allows exactly what it names
    assert rule_of(policy, block(2, False, "ops"), signer_name="ops") is None
    assert rule_of(policy, block(2, True, "ops"), signer_name="ops") == "not-allowed"
    assert rule_of(policy, service(True, "ops"), signer_name="ops") == "not-allowed"  # telco


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    # Given a policy with many mistakes
    path = tmp_path / "policy.yaml"
    path.write_text(
        "producers:\n"  # 1
        "  billing:\n"  # 2
        "    keys:\n"  # 3
        "      - id: k1\n"  # 4
        "        public_key: AAAA\n"  # 5
        "    rules:\n"  # 6
        "      - types: [service, sms]\n"  # 7
        "      - block_ids: [3]\n"  # 8
        "        lanes: [fast]\n"  # 9
        "        acitve: true\n"  # 10
        "  fraud-engine:\n"  # 11
        "    rules: []\n"  # 12
        "  fraud-engine:\n"  # 13
        "    api_keys: [nothex]\n"  # 14
        "gateways:\n"  # 15
        "  gw:\n"  # 16
        "    keys: []\n"  # 17
        "    speaks_for: [nobody]\n"  # 18
    )
    # When it is loaded
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    # Then each problem is there, with its line and where in the document
    found = [(p.line, p.path) for p in caught.value.problems]
    assert found == [
        (5, "producers.billing.keys[0].public_key"),
        (7, "producers.billing.rules[0].types[1]"),
        (8, "producers.billing.rules[1].block_ids[0]"),
        (9, "producers.billing.rules[1].lanes[0]"),
        (10, "producers.billing.rules[1].acitve"),
        (13, "producers"),
        (14, "producers.fraud-engine.api_keys[0]"),
        (17, "gateways.gw.keys"),
    ]
    messages = {p.path: p.message for p in caught.value.problems}
    assert messages["producers.billing.rules[1].acitve"] == "unknown field 'acitve'"
    assert "duplicate key 'fraud-engine' (first on line 11)" in messages["producers"]
    assert "32" in messages["producers.billing.keys[0].public_key"]
    # and the error is one line, of the tree, naming the file
    assert isinstance(caught.value, ConfigurationError | PermanentError)
    assert str(caught.value).startswith(f"policy {path}: 8 problems: line 5: ")
    assert "\n" not in str(caught.value)


def test_problems_across_entries_are_reported_with_their_lines() -> None:
    # Given a key shared by two producers, a gateway speaking for nobody, and a rule
    # whose block ids contradict its types
    document = example_document()
    document["producers"]["batch:*"]["keys"] = document["producers"]["billing"]["keys"][:1]
    document["producers"]["billing"]["rules"][0]["block_ids"] = [1]
    document["gateways"]["gateway"]["speaks_for"] = ["billing", "self-care"]
    document["producers"]["idle"] = {"rules": []}
    text = yaml.safe_dump(document, sort_keys=False)
    # When it is checked
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    # Then each is named, at the line of what is wrong
    lines = text.splitlines()
    by_path = {p.path: p for p in caught.value.problems}
    assert set(by_path) == {
        "producers.billing.rules[0].block_ids",
        "producers.batch:*.keys[0].id",
        "producers.batch:*.keys[0].public_key",
        "producers.idle",
        "gateways.gateway.speaks_for[1]",
    }
    speaks = by_path["gateways.gateway.speaks_for[1]"]
    assert "self-care" in lines[speaks.line - 1]  # type: ignore[operator]
    assert speaks.message == "'self-care' matches no producer"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("producers: [\n", "not YAML"),
        ("- just a list\n", "Input should be a valid dictionary"),
    ],
)
def test_a_file_that_is_no_policy_is_one_problem(text: str, expected: str) -> None:
    # When text that is no policy document is parsed
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    # Then it says so
    assert expected in str(caught.value)


def test_a_file_that_cannot_be_read_is_a_policy_error(tmp_path: Path) -> None:
    # When a missing file is loaded
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
