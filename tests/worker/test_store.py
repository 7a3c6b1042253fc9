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

from subswitch.contract import ChangeBlockStatus
from worker import keys
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
    Superseded,
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
    return RedisStore(client=raw)


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
    older = block(command_id="older", active=False, issued_at=command.issued_at - timedelta(1))
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
    older = block(command_id="older", active=False, issued_at=command.issued_at - timedelta(1))
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
