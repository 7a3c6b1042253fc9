"""The worker's Redis transport: a consumer killed right after the server handed it a
message never loses that message (contract §2.4), against a real Redis.

The consumer runs in a child process that dies (``os._exit``, as SIGKILL would leave
it: no cleanup, no restore at shutdown) at the first moment kombu holds the message,
before it delivers it to anyone. kombu's plain transport loses the message there: it
has left the list, and its unacked record is written only at delivery.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Exchange, Producer, Queue

from tests.redis_commands import recorded
from worker.redis_transport import ReliableAMQP, ReliableConnection, Transport

pytestmark = pytest.mark.integration

QUEUE = Queue("subswitch.test.claim", Exchange("subswitch.test", type="direct"), "claim")
VISIBILITY_S = 1
_DIED = 17
_DEADLINE_S = 20.0


_CONSUMER_NAME = "subswitch-test-claim"


def _connection(url: str, **options: Any) -> Connection:
    return ReliableConnection(
        url, transport_options={"visibility_timeout": VISIBILITY_S, **options}
    )


def _consume_and_die(url: str) -> None:
    """Child: consume ``QUEUE`` and die as soon as kombu holds a message."""
    connection = _connection(url, client_name=_CONSUMER_NAME)
    with connection.channel() as channel:
        # kombu records the message as unacked inside _deliver: die just before it.
        connection.transport._deliver = lambda *_: os._exit(_DIED)
        Consumer(channel, queues=[QUEUE], accept=["json"]).consume()
        while True:
            connection.drain_events(timeout=_DEADLINE_S)


def _publish(url: str, body: dict[str, Any]) -> None:
    with Connection(url) as connection:  # a producer: kombu's plain transport
        Producer(connection.channel()).publish(
            body, exchange=QUEUE.exchange, routing_key="claim", declare=[QUEUE]
        )


def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {_DEADLINE_S} s")
        time.sleep(0.05)  # polling a condition with a deadline


def _consumer_blocked(client: redis.Redis) -> bool:
    clients = client.client_list()
    return any(c["name"] == _CONSUMER_NAME and c["cmd"] in {"blmove", "brpop"} for c in clients)


def _restored(url: str) -> dict[str, Any] | None:
    """Run kombu's visibility-timeout restore once, then take what the queue holds."""
    with _connection(url) as connection, connection.channel() as channel:
        channel.qos.restore_visible(num=100, interval=1)
        message = channel.basic_get(QUEUE.name, no_ack=True)
        return None if message is None else dict(message.decode())


@pytest.fixture
def url(clean_redis_url: str) -> str:
    with Connection(clean_redis_url) as connection:
        QUEUE(connection.channel()).declare()
    return clean_redis_url


@pytest.mark.parametrize("arrives", ["before", "while_blocked"])
def test_a_consumer_killed_once_the_server_handed_it_a_message_loses_nothing(
    url: str, arrives: str
) -> None:
    # Given a consumer that dies the moment the server has handed it a message, with
    # the message already queued or published while the consumer blocks waiting
    body = {"command_id": "c-1", "arrives": arrives}
    client = redis.Redis.from_url(url)
    if arrives == "before":
        _publish(url, body)
    # A fresh interpreter: a fork of this threaded process could deadlock on a lock.
    child = multiprocessing.get_context("spawn").Process(target=_consume_and_die, args=(url,))
    child.start()
    try:
        if arrives == "while_blocked":
            _wait_until(lambda: _consumer_blocked(client), "the consumer blocked")
            _publish(url, body)

        # When it dies with the message taken off the list
        child.join(_DEADLINE_S)
        assert child.exitcode == _DIED
    finally:
        child.kill()
    assert client.llen(QUEUE.name) == 0

    # Then the visibility-timeout restore brings the message back, whole
    found: list[dict[str, Any] | None] = []
    _wait_until(lambda: found.append(_restored(url)) or found[-1] is not None, "restored")
    assert found[-1] == body
    client.close()


def test_a_queue_consumed_without_acks_is_never_recorded_as_unacked(url: str) -> None:
    # Given a message, and a consumer of its queue that never acks (no_ack)
    _publish(url, {"command_id": "c-2"})
    received: list[Any] = []
    with _connection(url) as connection, connection.channel() as channel:
        consumer = Consumer(channel, queues=[QUEUE], accept=["json"], no_ack=True)
        consumer.register_callback(lambda body, _message: received.append(body))
        consumer.consume()
        # When it receives the message
        connection.drain_events(timeout=_DEADLINE_S)
        # Then nothing waits for an ack that never comes (the restore would resend it)
        assert received == [{"command_id": "c-2"}]
        assert channel.client.hlen(channel.unacked_key) == 0


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/0", "redis+socket:///tmp/r.sock"]
)
def test_a_worker_connection_to_redis_consumes_through_the_reliable_transport(url: str) -> None:
    # Given a worker's connection to Redis over TCP, TLS or a unix socket
    connection = ReliableConnection(url)
    # When kombu picks its transport, here and in a clone
    # Then it is the worker's, with the URL parsed and shown as kombu does
    assert connection.get_transport_cls() is Transport
    assert connection.clone().get_transport_cls() is Transport
    assert connection.as_uri() == Connection(url).as_uri()
    assert bool(connection.ssl) is url.startswith("rediss")


def test_a_worker_connection_to_rabbitmq_keeps_kombus_transport() -> None:
    # Given a worker's connection to RabbitMQ
    connection = ReliableConnection("amqp://guest@127.0.0.1//")
    # When kombu picks its transport
    # Then it is kombu's own
    assert (
        connection.get_transport_cls() is Connection("amqp://guest@127.0.0.1//").get_transport_cls()
    )


def test_the_workers_app_connects_through_the_reliable_transport() -> None:
    # Given the worker's Celery app (no URLs: the embedded broker, a unix socket)
    # When it makes its consuming connection
    # Then that connection uses the worker's transport
    app = Celery("t", set_as_current=False, amqp=ReliableAMQP.PATH)
    app.conf.broker_url = "redis+socket:///tmp/r.sock"
    assert app.connection_for_read().get_transport_cls() is Transport


def test_a_delivered_message_is_recorded_as_unacked_once_by_the_claim(url: str) -> None:
    # Given a message, and a consumer of its queue that acks what it receives
    _publish(url, {"command_id": "c-3"})
    received: list[Any] = []
    with _connection(url) as connection, connection.channel() as channel:
        consumer = Consumer(channel, queues=[QUEUE], accept=["json"])
        consumer.register_callback(lambda body, message: (received.append(body), message.ack()))
        consumer.consume()
        # When it receives the message and acks it
        with recorded(url) as seen:
            connection.drain_events(timeout=_DEADLINE_S)
        # Then the claim's script recorded it, nothing wrote that record again, and the
        # ack removed it (one transaction: the ack's)
        assert received == [{"command_id": "c-3"}]
        names = seen.names()
        assert (names["ZADD"], names["HSET"], names["MULTI"], names["ZREM"]) == (1, 1, 1, 1)
        assert channel.client.hlen(channel.unacked_key) == 0


def _receive_and_die(url: str) -> None:
    """Child: consume ``QUEUE`` and die in the callback, the message received unacked."""
    connection = _connection(url)
    with connection.channel() as channel:
        consumer = Consumer(channel, queues=[QUEUE], accept=["json"])
        consumer.register_callback(lambda *_: os._exit(_DIED))
        consumer.consume()
        while True:
            connection.drain_events(timeout=_DEADLINE_S)


def test_a_consumer_killed_with_a_received_message_unacked_loses_nothing(url: str) -> None:
    # Given a consumer that dies once a message reached its callback, before the ack
    body = {"command_id": "c-4"}
    _publish(url, body)
    child = multiprocessing.get_context("spawn").Process(target=_receive_and_die, args=(url,))
    child.start()
    try:
        # When it dies
        child.join(_DEADLINE_S)
        assert child.exitcode == _DIED
    finally:
        child.kill()
    # Then the claim's record of it is enough: the restore brings the message back
    found: list[dict[str, Any] | None] = []
    _wait_until(lambda: found.append(_restored(url)) or found[-1] is not None, "restored")
    assert found[-1] == body


def test_a_channel_keeps_one_synchronous_client_while_its_pool_lasts(url: str) -> None:
    # Given a channel of the reliable transport
    with _connection(url) as connection, connection.channel() as channel:
        # When it needs a client for two publishes or acks
        first, second = channel._create_client(), channel._create_client()
        # Then both are one, on the channel's pool; a new pool gets a client of its own
        assert first is second and first.connection_pool is channel.pool
        channel._pool = None
        assert channel._create_client().connection_pool is channel.pool is not first.connection_pool


def test_the_workers_pooled_connections_use_the_reliable_transport(url: str) -> None:
    # Given the worker's app on Redis
    app = Celery("t", set_as_current=False, amqp=ReliableAMQP.PATH)
    app.conf.broker_url = url
    # When it publishes through its producer pool (events, dead letters)
    with app.producer_pool.acquire(block=True) as producer:
        # Then the pooled connection's transport is the worker's
        assert producer.connection.get_transport_cls() is Transport
    app.close()
