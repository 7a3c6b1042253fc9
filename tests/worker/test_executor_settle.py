"""Lost answers (contract §2.5) and unresolved attempts, through the executor."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import fakeredis
import pytest

from subswitch import keys
from subswitch.contract import ChangeBlockStatus, Outcome
from tests.worker.conftest import Harness, HarnessFactory
from worker.executor import Ack, RetryLater
from worker.upstream import PermanentError, UpstreamTimeout

BlockFactory = Callable[..., ChangeBlockStatus]
SETTLE_S = 30.0  # longer than the harness policy's longest delay (10 s)


def wire(command: ChangeBlockStatus) -> dict[str, Any]:
    return command.model_dump(mode="json")


@pytest.fixture
def settling(harness_factory: HarnessFactory) -> Harness:
    return harness_factory(settle_s=SETTLE_S)


def lost() -> UpstreamTimeout:
    return UpstreamTimeout("read timeout", maybe_applied=True)


def settle_passes(redis_client: fakeredis.FakeRedis, command: ChangeBlockStatus) -> None:
    assert redis_client.get(keys.target_lock(command.target)) == b"settling"
    redis_client.delete(keys.target_lock(command.target))


def test_a_lost_answer_holds_the_target_and_the_retry_comes_back_within_the_window(
    settling: Harness,
    block: BlockFactory,
    redis_client: fakeredis.FakeRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an attempt whose answer is lost
    command = block(command_id="stale-unblock", active=False)
    newer = block(command_id="fraud-block", issued_at=command.issued_at + timedelta(minutes=1))
    settling.upstream.script = [lost()]
    # When it fails, then its retry and a newer command come back during the settle time
    with caplog.at_level(logging.INFO, logger="worker.executor"):
        first = settling.executor.handle(wire(command), token="t1")
        retry = settling.executor.handle(wire(command), token="t2")
        other = settling.executor.handle(wire(newer), token="t3")
    # Then nothing more was sent; every delay stays within the policy's bound (10 s) and
    # asks to come back, and the logs say the target is settling
    assert len(settling.upstream.writes) == 1
    for decision in (first, retry, other):
        assert isinstance(decision, RetryLater) and 0 < decision.delay_s <= 10.0
    assert isinstance(first, RetryLater) and first.delay_s == 10.0
    assert "settling" in caplog.text
    # ...and once the write settled, the newer command goes, and the stale one is superseded
    settle_passes(redis_client, command)
    assert settling.executor.handle(wire(newer), token="t4") == Ack(Outcome.APPLIED)
    assert settling.executor.handle(wire(command), token="t5") == Ack(Outcome.SUPERSEDED)


def test_an_answer_lost_on_the_last_attempt_keeps_the_target_settling(
    harness_factory: HarnessFactory, block: BlockFactory, redis_client: fakeredis.FakeRedis
) -> None:
    # Given a command on its last attempt (the policy allows 4), with no settle before it
    harness = harness_factory(settle_s=SETTLE_S)
    command = block(command_id="last", active=False)
    older = block(command_id="older", issued_at=command.issued_at - timedelta(minutes=1))
    redis_client.hset(keys.command("last"), mapping={"fp": command.fingerprint(), "attempts": 3})
    harness.upstream.script = [lost()]
    # When that attempt's answer is lost, and an older command arrives
    final = harness.executor.handle(wire(command), token="t1")
    waiting = harness.executor.handle(wire(older), token="t2")
    # Then the command failed, but the older one waits until the lost write settled
    assert final == Ack(Outcome.FAILED)
    assert isinstance(waiting, RetryLater)
    settle_passes(redis_client, command)
    assert harness.executor.handle(wire(older), token="t3") == Ack(Outcome.APPLIED)


def test_an_older_command_never_overtakes_a_newer_one_whose_answer_was_lost(
    settling: Harness, block: BlockFactory, redis_client: fakeredis.FakeRedis
) -> None:
    # Given a newer unblock whose answer was lost, and whose write settled
    newer = block(command_id="unblock", active=False)
    older = block(command_id="block", active=True, issued_at=newer.issued_at - timedelta(minutes=1))
    settling.upstream.script = [lost()]
    settling.executor.handle(wire(newer), token="n1")
    settle_passes(redis_client, newer)
    # When the older block arrives before the newer one's retry, then after it
    before = settling.executor.handle(wire(older), token="o1")
    assert settling.executor.handle(wire(newer), token="n2") == Ack(Outcome.APPLIED)
    after = settling.executor.handle(wire(older), token="o2")
    # Then the older one waited, never reached the upstream, and is superseded
    assert isinstance(before, RetryLater)
    assert after == Ack(Outcome.SUPERSEDED)
    assert [write["key"] for write in settling.upstream.writes] == ["unblock", "unblock"]


def test_an_older_command_goes_once_the_newer_unresolved_one_failed(
    settling: Harness, block: BlockFactory, redis_client: fakeredis.FakeRedis
) -> None:
    # Given a newer command whose answer was lost, then whose retry was refused (404)
    newer = block(command_id="unblock", active=False)
    older = block(command_id="block", active=True, issued_at=newer.issued_at - timedelta(minutes=1))
    settling.upstream.script = [lost(), PermanentError("404", status=404)]
    settling.executor.handle(wire(newer), token="n1")
    settle_passes(redis_client, newer)
    before = settling.executor.handle(wire(older), token="o1")
    assert settling.executor.handle(wire(newer), token="n2") == Ack(Outcome.FAILED)
    # When the older command comes back
    after = settling.executor.handle(wire(older), token="o2")
    # Then it waited while the newer was unknown, and is applied now
    assert isinstance(before, RetryLater)
    assert after == Ack(Outcome.APPLIED)


def test_an_older_command_never_overtakes_a_newer_one_whose_delivery_died(
    settling: Harness, block: BlockFactory, redis_client: fakeredis.FakeRedis
) -> None:
    # Given a newer unblock whose delivery died after its write (the lease then ran out)
    newer = block(command_id="unblock", active=False)
    older = block(command_id="block", active=True, issued_at=newer.issued_at - timedelta(minutes=1))
    settling.store.begin(
        newer,
        fingerprint=newer.fingerprint(),
        token="dead",
        lease_ms=30_000,
        max_attempts=4,
        expired=False,
        settle_ms=int(SETTLE_S * 1000),
    )
    redis_client.delete(keys.target_lock(newer.target))
    # When the older block arrives, then the newer one is redelivered
    before = settling.executor.handle(wire(older), token="o1")
    assert settling.executor.handle(wire(newer), token="n2") == Ack(Outcome.APPLIED)
    after = settling.executor.handle(wire(older), token="o2")
    # Then the older one never reached the upstream, and is superseded
    assert isinstance(before, RetryLater)
    assert after == Ack(Outcome.SUPERSEDED)
    assert [write["key"] for write in settling.upstream.writes] == ["unblock"]
