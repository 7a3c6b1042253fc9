"""The store's scripts, each race reproduced step by step, on fakeredis and on real Redis.

Every test runs twice: on fakeredis, and on the Redis test DB (which skips locally
when Redis is down, and fails under CI=true). A lease that runs out is played by
deleting the lock key: the same state Redis reaches when the PX lease ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
import redis

from subswitch import keys
from subswitch.contract import ChangeBlockStatus
from tests.worker.conftest import new_store
from worker.store import (
    AlreadyApplied,
    Busy,
    Claim,
    Finished,
    Go,
    Lost,
    OutOfTime,
    OutOfTimeReason,
    RedisStore,
    Settling,
    Superseded,
    Unresolved,
)

BlockFactory = Callable[..., ChangeBlockStatus]
MAX_ATTEMPTS = 3


@pytest.fixture(
    params=[
        pytest.param("fakeredis"),
        pytest.param("redis", marks=pytest.mark.integration),
    ]
)
def raw(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A Redis client: fakeredis, or the real test DB (flushed, held for this test)."""
    if request.param == "fakeredis":
        client: redis.Redis = fakeredis.FakeRedis()
    else:
        client = redis.Redis.from_url(request.getfixturevalue("clean_redis_url"))
    yield client
    client.close()


@pytest.fixture
def store(raw: redis.Redis) -> RedisStore:
    return new_store(raw)


def begin(store: RedisStore, command: ChangeBlockStatus, token: str, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "fingerprint": command.fingerprint(),
        "token": token,
        "lease_ms": 30_000,
        "max_attempts": MAX_ATTEMPTS,
        "expired": False,
    }
    options.update(overrides)
    return store.begin(command, **options)


def finish(
    store: RedisStore, command: ChangeBlockStatus, token: str, *, applied: bool, event: bytes
) -> Finished | Lost:
    return store.finish(
        command,
        fingerprint=command.fingerprint(),
        token=token,
        event=event,
        applied=applied,
        upstream_status=201 if applied else None,
    )


def lease_runs_out(raw: redis.Redis, command: ChangeBlockStatus) -> None:
    raw.delete(keys.target_lock(command.target))


def test_a_stale_release_leaves_a_finished_record_finished(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given delivery A whose lease ran out mid-attempt, and delivery B that then
    # applied the command and finished it
    command = block()
    assert begin(store, command, "A") == Go(1)
    lease_runs_out(raw, command)
    assert begin(store, command, "B") == Go(2)
    assert finish(store, command, "B", applied=True, event=b"applied-by-B") == Finished(
        Claim.PUBLISH, b"applied-by-B"
    )
    store.mark_published(keys.command(command.command_id))
    # When A, late, releases the target after its (lost) attempt
    released = store.release(command.command_id, command.target, token="A", last_error="{}")
    # Then nothing changed: the next delivery finds the command finished and published
    assert released is False
    assert raw.hget(keys.command(command.command_id), "state") == b"done"
    assert begin(store, command, "C") == Finished(Claim.SKIP, b"applied-by-B")


def test_a_duplicate_during_the_last_attempt_is_busy_not_exhausted(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given a command whose last allowed attempt is in flight
    command = block()
    for n in range(1, MAX_ATTEMPTS):
        assert begin(store, command, f"t{n}") == Go(n)
        store.release(command.command_id, command.target, token=f"t{n}", last_error="")
    assert begin(store, command, "last") == Go(MAX_ATTEMPTS)
    # When a duplicate delivery arrives meanwhile
    duplicate = begin(store, command, "dup")
    # Then it waits; the attempt's 201 closes the command as applied and moves the watermark
    assert duplicate == Busy()
    assert finish(store, command, "last", applied=True, event=b"applied") == Finished(
        Claim.PUBLISH, b"applied"
    )
    older = block(
        command_id="older", active=False, issued_at=command.issued_at - timedelta(minutes=1)
    )
    assert begin(store, older, "o1") == Superseded(0)


def test_out_of_time_is_only_answered_once_the_target_is_free(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given a command whose attempts ran out, and another delivery holding the target
    command = block()
    for n in range(1, MAX_ATTEMPTS + 1):
        begin(store, command, f"t{n}")
        store.release(command.command_id, command.target, token=f"t{n}", last_error="e")
    other = block(command_id="other", block_id=1)
    assert begin(store, other, "holder") == Go(1)
    # When the exhausted command is delivered while the target is held, then after
    held, free = begin(store, command, "d1"), None
    finish(store, other, "holder", applied=False, event=b"failed")
    free = begin(store, command, "d2")
    # Then it waits first, and is exhausted once it holds the target
    assert held == Busy()
    assert free == OutOfTime(OutOfTimeReason.EXHAUSTED, MAX_ATTEMPTS, "e")


def test_an_applied_finish_moves_the_watermark_even_when_the_record_is_done(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given delivery A in flight, whose lease ran out; delivery B then failed the
    # command for good
    command = block()
    assert begin(store, command, "A") == Go(1)
    lease_runs_out(raw, command)
    assert begin(store, command, "B") == Go(2)
    finish(store, command, "B", applied=False, event=b"failed-by-B")
    # When A's write turns out to have been applied
    late = finish(store, command, "A", applied=True, event=b"applied-by-A")
    # Then the first outcome stands, but the watermark moved: an older command is superseded
    assert late == Finished(Claim.BUSY, b"failed-by-B")
    assert raw.hget(keys.target(command.target), "id") == command.command_id.encode()
    older = block(
        command_id="older", active=False, issued_at=command.issued_at - timedelta(minutes=1)
    )
    assert begin(store, older, "o1") == Superseded(0)


def test_a_delivery_that_lost_its_lease_cannot_finish_the_record(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given delivery A whose lease ran out while its write was being applied
    command = block()
    assert begin(store, command, "A") == Go(1)
    lease_runs_out(raw, command)
    # When A finishes with the upstream's 201
    late = finish(store, command, "A", applied=True, event=b"applied-by-A")
    # Then the record is untouched (no event stored) but the watermark moved, so the
    # next delivery closes the command as applied without sending it again
    assert late == Lost()
    assert raw.hget(keys.command(command.command_id), "event") is None
    assert begin(store, command, "B") == AlreadyApplied(attempts=1, upstream_status=201)


def test_a_delivery_that_lost_its_lease_cannot_fail_the_record(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given delivery A whose lease ran out, and delivery B now holding the target
    command = block()
    begin(store, command, "A")
    lease_runs_out(raw, command)
    assert begin(store, command, "B") == Go(2)
    # When A finishes with a permanent failure, or gives the target back
    late = finish(store, command, "A", applied=False, event=b"failed-by-A")
    store.give_back(command.command_id, command.target, token="A")
    # Then B still holds the target and decides: the record is B's
    assert late == Lost()
    assert raw.get(keys.target_lock(command.target)) == b"B"
    assert raw.hget(keys.command(command.command_id), "attempts") == b"2"
    assert finish(store, command, "B", applied=True, event=b"applied-by-B") == Finished(
        Claim.PUBLISH, b"applied-by-B"
    )


SETTLE_MS = 60_000


def settle_passes(raw: redis.Redis, command: ChangeBlockStatus) -> None:
    """The settle hold runs out (the state Redis reaches when its PX ends)."""
    assert raw.get(keys.target_lock(command.target)) == b"settling"
    raw.delete(keys.target_lock(command.target))


def test_after_a_lost_answer_the_target_settles_for_every_command_its_retry_included(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given an attempt whose answer was lost
    command = block()
    begin(store, command, "A", settle_ms=SETTLE_MS)
    store.release(
        command.command_id,
        command.target,
        token="A",
        last_error="{}",
        ambiguous=True,
        settle_ms=SETTLE_MS,
    )
    # When another command on the target, and the same command's retry, are delivered
    other = begin(
        store, block(command_id="newer", issued_at=command.issued_at + timedelta(minutes=1)), "B"
    )
    retry = begin(store, command, "C")
    # Then both wait out the settle time; the record says settling; after it, the retry goes
    assert isinstance(other, Settling) and SETTLE_MS - 5_000 < other.remaining_ms <= SETTLE_MS
    assert isinstance(retry, Settling)
    assert raw.hget(keys.command(command.command_id), "state") == b"settling"
    settle_passes(raw, command)
    assert begin(store, command, "D") == Go(2)


def test_an_attempt_holds_its_target_for_its_lease_plus_the_settle_time(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given the settle time
    command = block()
    # When an attempt begins (its delivery may die with the write on its way)
    assert begin(store, command, "A", lease_ms=30_000, settle_ms=SETTLE_MS) == Go(1)
    # Then nobody may take the target before the lease and the settle time are both over
    ttl = raw.pttl(keys.target_lock(command.target))
    assert 30_000 + SETTLE_MS - 5_000 < ttl <= 30_000 + SETTLE_MS


def test_a_failure_after_a_lost_answer_keeps_the_target_settling(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given a last attempt whose answer was lost, closing the command as failed
    command = block()
    begin(store, command, "A")
    store.finish(
        command,
        fingerprint=command.fingerprint(),
        token="A",
        event=b"failed",
        applied=False,
        settle_ms=SETTLE_MS,
    )
    # When an older command on the target arrives
    older = block(command_id="older", issued_at=command.issued_at - timedelta(minutes=1))
    # Then it waits for the lost write to settle, then goes (the newer one failed)
    assert isinstance(begin(store, older, "B"), Settling)
    settle_passes(raw, command)
    assert begin(store, older, "C") == Go(1)


def lost_answer(store: RedisStore, raw: redis.Redis, command: ChangeBlockStatus) -> None:
    """``command`` has an attempt whose answer was lost, and the settle time passed."""
    assert begin(store, command, "lost", settle_ms=SETTLE_MS) == Go(1)
    store.release(
        command.command_id,
        command.target,
        token="lost",
        last_error="{}",
        ambiguous=True,
        settle_ms=SETTLE_MS,
    )
    settle_passes(raw, command)


def test_an_older_command_waits_for_a_newer_unresolved_one_then_is_superseded(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given a newer command whose answer was lost
    newer = block(command_id="newer", active=False)
    lost_answer(store, raw, newer)
    older = block(command_id="older", issued_at=newer.issued_at - timedelta(minutes=1))
    # When the older command arrives, then the newer one's retry is applied
    waiting = begin(store, older, "o1")
    assert begin(store, newer, "n2") == Go(2)
    finish(store, newer, "n2", applied=True, event=b"applied")
    # Then the older one waited (it was neither sent nor superseded), and is superseded now
    assert waiting == Unresolved(newer="newer")
    assert begin(store, older, "o2") == Superseded(0)


def test_an_older_command_goes_once_the_newer_unresolved_one_failed(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given a newer command whose answer was lost, then whose retry failed for good
    newer = block(command_id="newer", active=False)
    lost_answer(store, raw, newer)
    older = block(command_id="older", issued_at=newer.issued_at - timedelta(minutes=1))
    assert begin(store, older, "o1") == Unresolved(newer="newer")
    begin(store, newer, "n2")
    store.release(newer.command_id, newer.target, token="n2", last_error="{}")  # a sure 503
    assert begin(store, older, "o2") == Unresolved(newer="newer")  # attempt 1 still unknown
    begin(store, newer, "n3")
    finish(store, newer, "n3", applied=False, event=b"failed")
    # When the older command comes back
    step = begin(store, older, "o3")
    # Then it may go
    assert step == Go(1)


def test_an_older_command_waits_for_a_newer_one_whose_delivery_died(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given a newer command whose delivery died mid-attempt, and whose lease ran out
    newer = block(command_id="newer", active=False)
    assert begin(store, newer, "dead") == Go(1)
    lease_runs_out(raw, newer)
    older = block(command_id="older", issued_at=newer.issued_at - timedelta(minutes=1))
    # When the older command arrives, then the newer one is redelivered and applied
    waiting = begin(store, older, "o1")
    assert begin(store, newer, "n2") == Go(2)
    finish(store, newer, "n2", applied=True, event=b"applied")
    # Then the older one waited, and is superseded
    assert waiting == Unresolved(newer="newer")
    assert begin(store, older, "o2") == Superseded(0)


def test_a_newer_command_surely_not_applied_does_not_hold_older_ones(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given a newer command that failed surely unapplied (503), and one not sent at all
    newer = block(command_id="newer", active=False)
    begin(store, newer, "n1")
    store.release(newer.command_id, newer.target, token="n1", last_error="{}")
    unsent = block(
        command_id="unsent", active=False, issued_at=newer.issued_at + timedelta(minutes=1)
    )
    begin(store, unsent, "u1")
    store.give_back(unsent.command_id, unsent.target, token="u1")
    # When an older command arrives
    older = block(command_id="older", issued_at=newer.issued_at - timedelta(minutes=1))
    # Then it goes: nothing of the newer ones can have reached the upstream
    assert begin(store, older, "o1") == Go(1)


def test_a_holder_past_its_lease_is_waited_out_as_settling_not_polled(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given an attempt whose lease (30 s) is over but whose lock still covers the settle
    # time: its worker died or stalled with the write on its way
    command = block()
    assert begin(store, command, "A", lease_ms=30_000, settle_ms=SETTLE_MS) == Go(1)
    raw.pexpire(keys.target_lock(command.target), SETTLE_MS - 10_000)
    # When another command on the target arrives
    step = begin(store, block(command_id="other"), "B", settle_ms=SETTLE_MS)
    # Then it is told how long the hold lasts, instead of polling a busy target
    assert isinstance(step, Settling) and step.remaining_ms <= SETTLE_MS - 10_000


def test_a_lost_answer_counts_for_ordering_even_without_a_settle_time(
    store: RedisStore, raw: redis.Redis, block: BlockFactory
) -> None:
    # Given a newer command whose answer was lost, on a store told not to settle
    newer = block(command_id="newer", active=False)
    begin(store, newer, "n1")
    store.release(newer.command_id, newer.target, token="n1", last_error="{}", ambiguous=True)
    # When an older command arrives
    older = block(command_id="older", issued_at=newer.issued_at - timedelta(minutes=1))
    # Then it still waits for the newer one's result
    assert begin(store, older, "o1") == Unresolved(newer="newer")
