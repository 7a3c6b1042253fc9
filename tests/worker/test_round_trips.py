"""What one delivery of ``subswitch.apply`` asks of a real Redis store: its round trips
and the commands its scripts run, counted through ``MONITOR`` (deterministic: exactly
the commands between two markers on the test database)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from subswitch import keys
from subswitch.contract import ChangeBlockStatus, Outcome
from tests.redis_commands import recorded
from tests.worker.conftest import Harness
from worker import tasks
from worker.deliveries import DeliveryCounter

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_client(clean_redis_url: str) -> Iterator[redis.Redis]:
    """The harness's store on the real Redis test DB (instead of fakeredis)."""
    client = redis.Redis.from_url(clean_redis_url)
    yield client
    client.close()


class DeliveredTask:
    """What ``run_apply`` reads of a task delivered by the Redis broker."""

    def __init__(self, task_id: str, tag: str) -> None:
        self.request = SimpleNamespace(id=task_id, retries=0, properties={"delivery_tag": tag})

    def retry(self, *, countdown: int) -> Exception:
        raise AssertionError(f"not retried here (countdown {countdown})")


def _deliver(harness: Harness, command: ChangeBlockStatus, tag: str) -> str:
    counter = DeliveryCounter(scripts=harness.store.scripts, limit=5)
    return tasks.run_apply(
        DeliveredTask(command.command_id, tag),  # type: ignore[arg-type]
        (command.model_dump(mode="json"),),
        {},
        executor=lambda: harness.executor,
        deliveries=lambda: counter,
    )


def test_an_applied_command_costs_four_script_calls_and_leaves_no_delivery_count(
    harness: Harness,
    block: Callable[..., ChangeBlockStatus],
    clean_redis_url: str,
    redis_client: redis.Redis,
) -> None:
    # Given a worker whose scripts are loaded (one delivery before), on the Redis broker
    assert _deliver(harness, block(command_id="warm-up", subscription_id=8), "tag-0") == "applied"
    command = block(command_id="cmd-1")

    # When a new command is delivered, applied and its event published
    with recorded(clean_redis_url) as seen:
        outcome = _deliver(harness, command, "tag-1")

    # Then the store saw four calls: the delivery count, begin, finish, and the
    # published mark that also clears the delivery's count
    assert outcome == Outcome.APPLIED.value
    assert seen.round_trips() == Counter({"EVALSHA": 4})
    assert len(harness.events_of("cmd-1")) == 1
    assert not redis_client.exists(keys.deliveries("tag-1"), keys.task_deaths("cmd-1"))
    # ...whose scripts write the record, the target and the lock once each
    names = seen.names()
    assert (names["HSET"], names["EXPIRE"], names["PEXPIRE"], names["SET"]) == (5, 5, 0, 1)
    assert sum(names.values()) == 31


def test_a_redelivered_published_command_is_not_published_again_and_ends_its_count(
    harness: Harness,
    block: Callable[..., ChangeBlockStatus],
    clean_redis_url: str,
    redis_client: redis.Redis,
) -> None:
    # Given a command applied and published by an earlier delivery
    command = block(command_id="cmd-2")
    assert _deliver(harness, command, "tag-2") == "applied"

    # When another message of it is delivered
    with recorded(clean_redis_url) as seen:
        outcome = _deliver(harness, command, "tag-3")

    # Then nothing is published again; the delivery count ends in a call of its own
    assert outcome == Outcome.APPLIED.value
    assert len(harness.events_of("cmd-2")) == 1
    assert seen.round_trips() == Counter({"EVALSHA": 3})
    assert not redis_client.exists(keys.deliveries("tag-3"), keys.task_deaths("cmd-2"))


def test_the_published_mark_deletes_the_keys_it_is_given_with_it(
    harness: Harness, block: Callable[..., ChangeBlockStatus], redis_client: redis.Redis
) -> None:
    # Given a finished record with an unpublished event, and two keys of its delivery
    command = block(command_id="cmd-3")
    record = keys.command(command.command_id)
    redis_client.hset(record, mapping={"state": "done", "published": "0", "claim": "t"})
    redis_client.set("left-1", "1")
    redis_client.set("left-2", "1")

    # When its event is marked published with them
    harness.store.mark_published(record, ended=["left-1", "left-2"])

    # Then the record says so, its claim is gone, and so are the keys
    fields: dict[Any, Any] = redis_client.hgetall(record)
    assert fields == {b"state": b"done", b"published": b"1"}
    assert not redis_client.exists("left-1", "left-2")
