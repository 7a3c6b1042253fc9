"""The policy in force, re-read when its file changes or on SIGHUP, kept when a new
file does not validate or the process's own condition refuses it."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import yaml

from subswitch.contract import ChangeBlockStatus
from subswitch.errors import ConfigurationError
from subswitch.policy import Policy, parse_policy
from subswitch.policy_watch import PolicyWatch
from tests.policies import example_document, example_text, signer


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(example_text())
    return path


def billing_lifts_block_1() -> ChangeBlockStatus:
    return ChangeBlockStatus(
        org_id="telco", subscription_id=7, block_id=1, active=False, source="billing"
    )


def allow_billing_block_1(path: Path) -> None:
    document = example_document()
    document["producers"]["billing"]["rules"].append({"types": ["block"], "block_ids": [1]})
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    stamp = path.stat().st_mtime_ns + 1_000_000_000  # a later second, whatever the fs
    os.utime(path, ns=(stamp, stamp))


def test_a_changed_file_is_in_force_after_the_poll_interval(policy_file: Path) -> None:
    # Given a watch on the example policy, and a command it refuses
    clock = Clock()
    watch = PolicyWatch(
        path=policy_file, policy=parse_policy(policy_file.read_bytes()), poll_s=1.0, monotonic=clock
    )
    command = billing_lifts_block_1()
    signature = signer("billing").sign(command)
    assert watch.check(command, signature.model_dump()) is not None
    # When the file changes to allow it
    allow_billing_block_1(policy_file)
    # Then the old policy holds until the poll interval passed, the new one after
    assert watch.check(command, signature.model_dump()) is not None
    clock.now = 1.0
    assert watch.check(command, signature.model_dump()) is None


def test_a_file_that_does_not_validate_keeps_the_old_policy_and_says_why(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a watch on the example policy
    clock = Clock()
    watch = PolicyWatch(
        path=policy_file, policy=parse_policy(policy_file.read_bytes()), poll_s=1.0, monotonic=clock
    )
    before = watch.policy
    # When the file is broken, then looked at
    policy_file.write_text("producers:\n  billing:\n    rulez: []\n")
    clock.now = 5.0
    with caplog.at_level(logging.ERROR, logger="subswitch.policy_watch"):
        command = billing_lifts_block_1()
        watch.check(command, None)
    # Then the old policy stays in force, and one line says why
    assert watch.policy is before
    [record] = caplog.records
    assert "policy not reloaded" in record.getMessage()
    assert "line 3" in record.getMessage() and "\n" not in record.getMessage()


def test_sighup_reloads_at_once(policy_file: Path) -> None:
    # Given a watch that looks at its file only once a day, taking SIGHUP
    watch = PolicyWatch.load(policy_file, poll_s=86_400.0)
    previous = signal.getsignal(signal.SIGHUP)
    watch.install_sighup()
    try:
        command = billing_lifts_block_1()
        signature = signer("billing").sign(command).model_dump()
        assert watch.check(command, signature) is not None
        # When the file changes and the process gets SIGHUP
        allow_billing_block_1(policy_file)
        os.kill(os.getpid(), signal.SIGHUP)
        # Then the next check goes by the new policy
        assert watch.check(command, signature) is None
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_watch_does_not_start_on_a_broken_file(tmp_path: Path) -> None:
    # Given a policy file with a problem
    path = tmp_path / "policy.yaml"
    path.write_text("producers: {}\ngateways: []\n")
    # Then loading it for a worker raises (the worker refuses to start)
    with pytest.raises(Exception, match="line 2"):
        PolicyWatch.load(path, poll_s=1.0)


def test_a_policy_the_vet_refuses_keeps_the_old_one(policy_file: Path) -> None:
    # Given a watch whose process refuses every new policy (as the gateway refuses one
    # without its key)
    def refuse(_policy: Policy) -> None:
        raise ConfigurationError("the gateway's key is gone")

    clock = Clock()
    watch = PolicyWatch(
        path=policy_file,
        policy=parse_policy(policy_file.read_bytes()),
        poll_s=1.0,
        monotonic=clock,
        vet=refuse,
    )
    before = watch.current()
    # When the file changes to a valid policy
    allow_billing_block_1(policy_file)
    clock.now = 5.0
    # Then the old policy stays in force, and a forced reload says it was not taken
    assert watch.current() is before
    assert watch.reload() is False
    assert watch.current() is before
