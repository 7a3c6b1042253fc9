"""The worker under a policy: verification before the store, refusals that leave the
command id free (reloading: tests/subswitch/test_policy_watch.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from subswitch import keys
from subswitch.contract import AnyCommand, ChangeBlockStatus, Lane, Outcome
from subswitch.policy_watch import PolicyWatch
from subswitch.settings import Settings
from subswitch.signing import message_body
from tests.policies import example_text, signer
from tests.worker.conftest import Harness, HarnessFactory
from worker.bootstrap import policy_watch
from worker.executor import Ack
from worker.tasks import apply_chunk

BlockFactory = Callable[..., ChangeBlockStatus]


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(example_text())
    return path


@pytest.fixture
def guarded(harness_factory: HarnessFactory, policy_file: Path) -> Harness:
    watch = PolicyWatch.load(policy_file, poll_s=1.0)
    return harness_factory(authority=watch)


def signed(command: AnyCommand, by: str) -> dict[str, Any]:
    return message_body(command, signer(by))


def fraud_block(block: BlockFactory, **overrides: Any) -> ChangeBlockStatus:
    fields = {"command_id": "fraud-case-1", "source": "fraud-engine", "priority": Lane.URGENT}
    return block(**{**fields, **overrides})


def test_a_billing_key_lifting_block_1_is_rejected_dead_lettered_and_never_sent(
    guarded: Harness, block: BlockFactory, redis_client: fakeredis.FakeRedis
) -> None:
    # Given billing's key on a command lifting the theft block
    command = block(command_id="bill-1", source="billing", active=False)
    # When the worker handles it
    decision = guarded.executor.handle(signed(command, "billing"), token="t1")
    # Then it is rejected naming the rule, dead-lettered with that reason, never sent
    assert decision == Ack(Outcome.REJECTED)
    assert guarded.upstream.writes == []
    [event] = guarded.events_of("bill-1")
    assert event.data.error is not None
    assert event.data.error.message.startswith("policy: not allowed: no rule of producer 'billing'")
    [(_, reason)] = guarded.dead_letters.letters
    assert reason == event.data.error.message
    # and nothing about the command id was recorded
    assert not redis_client.exists(keys.command("bill-1"))


def test_the_same_block_from_fraud_engine_is_applied(guarded: Harness, block: BlockFactory) -> None:
    # When fraud-engine's key puts block 1 on, urgent
    decision = guarded.executor.handle(signed(fraud_block(block), "fraud-engine"), token="t1")
    # Then it is applied
    assert decision == Ack(Outcome.APPLIED)
    assert [w["key"] for w in guarded.upstream.writes] == ["fraud-case-1"]


@pytest.mark.parametrize(
    ("tamper", "rule"),
    [
        (lambda body: body.pop("signature"), "unsigned"),
        (lambda body: body.update(source="billing"), "bad-signature"),
        (lambda body: body["signature"].update(key_id="nobody"), "unknown-key"),
        (lambda body: body.update(signature="zz"), "bad-signature"),
    ],
)
def test_unsigned_tampered_and_unknown_key_commands_are_rejected(
    guarded: Harness, block: BlockFactory, tamper: Callable[[dict[str, Any]], Any], rule: str
) -> None:
    # Given a fraud block whose message was tampered with
    body = signed(fraud_block(block), "fraud-engine")
    tamper(body)
    # When it is handled
    decision = guarded.executor.handle(body, token="t1")
    # Then it is rejected by the named check and never sent
    assert decision == Ack(Outcome.REJECTED)
    assert guarded.upstream.writes == []
    [event] = guarded.events_of("fraud-case-1")
    assert event.data.error is not None and event.data.error.message.startswith(
        f"policy: {rule.replace('-', ' ')}"
    )


def test_a_forged_source_is_rejected(guarded: Harness, block: BlockFactory) -> None:
    # Given billing's key on a command that claims fraud-engine sent it
    forged = signed(fraud_block(block), "billing")
    # When it is handled
    decision = guarded.executor.handle(forged, token="t1")
    # Then the source check rejects it
    assert decision == Ack(Outcome.REJECTED)
    [event] = guarded.events_of("fraud-case-1")
    assert event.data.error is not None and event.data.error.message.startswith("policy: source")


def test_a_forged_command_does_not_pre_empt_the_real_ones_id(
    guarded: Harness, block: BlockFactory
) -> None:
    # Given a forged unblock under the fraud block's predictable id, delivered twice
    forged = fraud_block(block, active=False, source="billing", priority=Lane.NORMAL)
    assert guarded.executor.handle(signed(forged, "billing"), token="t1") == Ack(Outcome.REJECTED)
    assert guarded.executor.handle(signed(forged, "billing"), token="t2") == Ack(Outcome.REJECTED)
    # When the real fraud block arrives under that id
    real = fraud_block(block)
    decision = guarded.executor.handle(signed(real, "fraud-engine"), token="t3")
    # Then it is applied, and its event's id is not the forged one's
    assert decision == Ack(Outcome.APPLIED)
    assert [w["active"] for w in guarded.upstream.writes] == [True]
    rejected, applied = guarded.events_of("fraud-case-1")  # one rejected event, not two
    assert (rejected.data.outcome, applied.data.outcome) == (Outcome.REJECTED, Outcome.APPLIED)
    assert rejected.id != applied.id
    # even when the forgery copies the real command field for field, unsigned
    copy = real.model_dump(mode="json")
    assert guarded.executor.handle(copy, token="t4") == Ack(Outcome.REJECTED)
    assert guarded.events_of("fraud-case-1")[-1].id != applied.id


def test_the_commands_of_a_chunk_are_verified_one_by_one(
    guarded: Harness, service: Callable[..., Any]
) -> None:
    # Given a bulk chunk of batch commands, one of them a block the batch may not send
    good = [service(command_id=f"b-{n}", source="batch:7", priority=Lane.BULK) for n in range(3)]
    chunk = [signed(c, "batch:*") for c in good]
    bad = signed(
        ChangeBlockStatus(
            command_id="b-x",
            org_id="telco",
            subscription_id=7,
            block_id=2,
            active=True,
            source="batch:7",
            priority=Lane.BULK,
            issued_at=good[0].issued_at,
        ),
        "batch:*",
    )
    chunk.insert(1, bad)
    # When the chunk runs
    finished = apply_chunk(guarded.executor, chunk, budget_s=60.0, bulk=_NoBulk())
    # Then the three services are applied and the block rejected
    assert finished == 4
    assert [w["key"] for w in guarded.upstream.writes] == ["b-0", "b-1", "b-2"]
    assert guarded.events_of("b-x")[0].data.outcome == Outcome.REJECTED


def test_a_chunk_whose_signature_verifies_is_not_verified_command_by_command(
    guarded: Harness, service: Callable[..., Any]
) -> None:
    # Given a batch chunk signed as a whole, its commands' own signatures garbage
    commands = [
        service(command_id=f"b-{n}", source="batch:7", priority=Lane.BULK) for n in range(3)
    ]
    bodies = [{**c.model_dump(mode="json"), "signature": "garbage"} for c in commands]
    header = signer("batch:*").sign_chunk(commands)
    # When the worker asks who signed it, and runs it so
    chunk_signer = guarded.executor.chunk_signer(bodies, header)
    finished = apply_chunk(
        guarded.executor, bodies, budget_s=60.0, bulk=_NoBulk(), vouched_by=chunk_signer
    )
    # Then the chunk's signer is the batch producer, and its rules still apply
    assert chunk_signer == "batch:*"
    assert finished == 3
    assert len(guarded.upstream.writes) == 3
    # while a chunk header over other commands, or from a key nobody holds, vouches for none
    assert guarded.executor.chunk_signer(bodies, signer("batch:*").sign_chunk(commands[:2])) is None
    assert guarded.executor.chunk_signer(bodies, signer("stranger").sign_chunk(commands)) is None
    assert guarded.executor.chunk_signer([*bodies, "junk"], header) is None


def test_a_chunk_signer_is_held_to_the_rules_of_each_command(
    guarded: Harness, service: Callable[..., Any]
) -> None:
    # Given billing's key signing a chunk of commands claiming a batch source
    commands = [service(command_id="b-1", source="batch:7", priority=Lane.BULK)]
    bodies = [c.model_dump(mode="json") for c in commands]
    chunk_signer = guarded.executor.chunk_signer(bodies, signer("billing").sign_chunk(commands))
    # When it runs
    apply_chunk(guarded.executor, bodies, budget_s=60.0, bulk=_NoBulk(), vouched_by=chunk_signer)
    # Then the source check refuses it
    [event] = guarded.events_of("b-1")
    assert event.data.outcome == Outcome.REJECTED
    assert event.data.error is not None and event.data.error.message.startswith("policy: source")


def test_without_a_policy_signed_and_unsigned_commands_are_accepted(
    harness: Harness, block: BlockFactory
) -> None:
    # When a signed and an unsigned command arrive at a worker with no policy
    first = harness.executor.handle(signed(block(command_id="a"), "tests"), token="t1")
    second = harness.executor.handle(block(command_id="b").model_dump(mode="json"), token="t2")
    # Then both are applied
    assert (first, second) == (Ack(Outcome.APPLIED), Ack(Outcome.APPLIED))


class _NoBulk:
    def send_alone(self, command: Any, delay_s: float) -> None:
        raise AssertionError("nothing leaves the chunk")

    def send_rest(self, commands: list[Any]) -> None:
        raise AssertionError("nothing leaves the chunk")


def test_without_a_policy_file_the_worker_says_every_command_is_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # When a worker's runtime is built without SUBSWITCH_POLICY_FILE
    with caplog.at_level(logging.INFO, logger="worker.bootstrap"):
        watch = policy_watch(Settings(policy_file=None))
    # Then there is no policy, and one line says what that means
    assert watch is None
    [record] = caplog.records
    assert record.getMessage().startswith(
        "no policy (SUBSWITCH_POLICY_FILE is unset): every well-formed command is accepted"
    )
