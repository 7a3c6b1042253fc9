"""Counting deliveries that die, and dead letters kept once (fakeredis)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fakeredis
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from subswitch import keys
from subswitch.errors import StoreError
from worker.consumer import RequeueBackoff
from worker.deliveries import DeadLetterOnce, Delivery, DeliveryCounter
from worker.sinks import InMemoryDeadLetters
from worker.store import LuaScripts


def unreachable_redis() -> redis.Redis:
    return redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def redis_delivery(task_id: str, tag: str) -> Delivery:
    return Delivery.of({"id": task_id, "properties": {"delivery_tag": tag}})


@pytest.fixture
def counter(redis_client: fakeredis.FakeRedis) -> DeliveryCounter:
    return DeliveryCounter(scripts=LuaScripts(client=redis_client), limit=3)


def test_a_request_names_its_task_and_how_it_is_counted() -> None:
    # Given the request of a RabbitMQ redelivery (whose headers Celery may have copied
    # from an earlier message), a first RabbitMQ delivery and a Redis one
    returned = Delivery.of(
        {"id": "c-1", "delivery_info": {"redelivered": True}, "properties": {"delivery_tag": 7}}
    )
    first = Delivery.of(
        {"id": "c-1", "x-delivery-count": 3, "delivery_info": {"redelivered": False}}
    )
    on_redis = Delivery.of({"id": "c-1", "properties": {"delivery_tag": "9f0c"}})
    # Then the broker's flag, or the message's own tag, is what counts
    assert returned == Delivery("c-1", redelivered=True)
    assert first == Delivery("c-1", redelivered=False)
    assert on_redis == Delivery("c-1", tag="9f0c")


def test_deliveries_that_finish_never_count(counter: DeliveryCounter) -> None:
    # Given a Redis message delivered and finished three times (requeued each time)
    delivery = redis_delivery("c-1", "tag-1")
    for _ in range(3):
        # When it starts again
        died = counter.begin(delivery)
        counter.end(delivery, done=False)
        # Then no death is counted
        assert died == 0


def test_each_redelivery_after_a_death_counts_one_even_across_retries(
    counter: DeliveryCounter,
) -> None:
    # Given a task whose first message dies (begun, never ended)
    counter.begin(redis_delivery("c-1", "tag-1"))
    # When it is redelivered, finds its target busy and is retried as a new message,
    # and that message dies too, then is redelivered
    redelivered = counter.begin(redis_delivery("c-1", "tag-1"))
    counter.end(redis_delivery("c-1", "tag-1"), done=False)
    counter.begin(redis_delivery("c-1", "tag-2"))
    again = counter.begin(redis_delivery("c-1", "tag-2"))
    # Then the two deaths add up for the task, and the limit is near
    assert (redelivered, again) == (1, 2)
    assert not counter.exceeded(again)
    assert counter.exceeded(3)


def test_a_live_duplicate_is_no_death(counter: DeliveryCounter) -> None:
    # Given five copies of one command running at once (five messages, one task id)
    deaths = [counter.begin(redis_delivery("c-1", f"copy-{n}")) for n in range(5)]
    # Then none is counted as a death
    assert deaths == [0] * 5


def test_rabbitmq_redeliveries_count_as_deaths(
    counter: DeliveryCounter, redis_client: fakeredis.FakeRedis
) -> None:
    # Given a first delivery and two redeliveries of a RabbitMQ message
    first = counter.begin(Delivery("c-1", redelivered=False))
    returns = [counter.begin(Delivery("c-1", redelivered=True)) for _ in range(2)]
    # Then the redeliveries count as deaths of the task, and nothing else was written
    assert (first, returns) == (0, [1, 2])
    assert redis_client.keys("*") == [keys.task_deaths("c-1").encode()]


def test_a_task_that_is_done_ends_its_run_of_deaths(
    counter: DeliveryCounter, redis_client: fakeredis.FakeRedis
) -> None:
    # Given a task with one death
    counter.begin(redis_delivery("c-1", "tag-1"))
    delivery = redis_delivery("c-1", "tag-1")
    assert counter.begin(delivery) == 1
    # When that delivery finishes the task
    counter.end(delivery, done=True)
    # Then nothing is left counted, and every key had a lifetime meanwhile
    assert redis_client.keys("*") == []


def test_counts_expire(counter: DeliveryCounter, redis_client: fakeredis.FakeRedis) -> None:
    # Given a delivery that died
    counter.begin(redis_delivery("c-1", "tag-1"))
    counter.begin(redis_delivery("c-1", "tag-1"))
    # Then both of its counts have a TTL
    for key in (keys.deliveries("tag-1"), keys.task_deaths("c-1")):
        assert 0 < redis_client.ttl(key) <= keys.DELIVERY_COUNT_TTL_S


def test_a_store_that_does_not_answer_is_a_store_error() -> None:
    # Given a counter on a Redis nobody listens on
    down = unreachable_redis()
    counter = DeliveryCounter(scripts=LuaScripts(client=down), limit=3)
    # When a delivery starts / Then the failure is the store's
    with pytest.raises(StoreError):
        counter.begin(redis_delivery("c-1", "tag-1"))


class FailingSink:
    def __init__(self) -> None:
        self.calls = 0

    def dead_letter(self, body: bytes, *, reason: str, headers: Mapping[str, Any]) -> None:
        self.calls += 1
        raise ConnectionError("broker away")


def test_a_message_is_dead_lettered_once_however_often_it_comes_back(
    redis_client: fakeredis.FakeRedis,
) -> None:
    # Given a dead-letter sink kept once
    letters = InMemoryDeadLetters()
    once = DeadLetterOnce(inner=letters, scripts=LuaScripts(client=redis_client), retention_s=60)
    # When the same message is dead-lettered three times (its event could not be
    # recorded, so it came back), and another message once
    for _ in range(3):
        once.dead_letter(b"garbage", reason="not JSON", headers={"command_id": "c-1"})
    once.dead_letter(b"garbage", reason="not JSON", headers={"command_id": "c-2"})
    # Then each is in subswitch.dead once
    assert letters.letters == [(b"garbage", "not JSON"), (b"garbage", "not JSON")]


def test_with_the_store_down_nothing_is_dead_lettered() -> None:
    # Given a sink kept once, on a store that does not answer
    letters = InMemoryDeadLetters()
    down = unreachable_redis()
    once = DeadLetterOnce(inner=letters, scripts=LuaScripts(client=down), retention_s=60)
    # When a message is dead-lettered / Then it fails before publishing anything
    with pytest.raises(StoreError):
        once.dead_letter(b"garbage", reason="not JSON", headers={"command_id": None})
    assert letters.letters == []


def test_a_failed_publish_is_tried_again(redis_client: fakeredis.FakeRedis) -> None:
    # Given a broker that refuses the dead letter once
    failing = FailingSink()
    once = DeadLetterOnce(inner=failing, scripts=LuaScripts(client=redis_client), retention_s=60)
    with pytest.raises(ConnectionError):
        once.dead_letter(b"garbage", reason="not JSON", headers={})
    # When it comes back / Then it is published again, nothing marked it done
    letters = InMemoryDeadLetters()
    DeadLetterOnce(
        inner=letters, scripts=LuaScripts(client=redis_client), retention_s=60
    ).dead_letter(b"garbage", reason="not JSON", headers={})
    assert failing.calls == 1 and len(letters.letters) == 1


def test_requeue_delays_grow_to_a_cap_and_restart_after_a_success() -> None:
    # Given a backoff from 1 s to 8 s
    backoff = RequeueBackoff(base_s=1.0, max_s=8.0)
    # When dead-lettering fails six times in a row
    delays = [backoff.next_delay() for _ in range(6)]
    # Then each delay lies in [ceiling/2, ceiling], the ceiling doubling up to the cap
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    # And after a success it starts from the base again
    backoff.succeeded()
    assert backoff.next_delay() <= 1.0
