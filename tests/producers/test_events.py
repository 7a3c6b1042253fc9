"""EventStream against real brokers: binding, parsing, filtering, clean-up."""

from __future__ import annotations

import time

import amqp.exceptions
import kombu
import pytest
import redis

from producers import BrokerError, EventStream
from subswitch.contract import ChangeBlockStatus, ChangeServiceStatus, EventError, Lane, Outcome
from tests.producers.helpers import event_for, publish_event

pytestmark = pytest.mark.integration

BLOCK = ChangeBlockStatus(
    org_id="telco", subscription_id=7, block_id=1, active=True, source="fraud-engine"
)
SERVICE = ChangeServiceStatus(
    org_id="telco", subscription_id=7, service_id=9, active=False, source="billing",
    priority=Lane.BULK,
)  # fmt: skip


def test_receives_an_event_published_to_the_events_exchange(broker_url: str) -> None:
    # Given a stream bound before anything is published
    with EventStream(broker_url=broker_url) as stream:
        # When a worker-like publisher sends an applied event for a command
        sent = event_for(BLOCK, Outcome.APPLIED, upstream_status=201)
        publish_event(broker_url, sent, "command.applied")
        # Then the stream yields it, parsed back to the same ResultEvent
        received = stream.wait_for({BLOCK.command_id}, timeout=10)
    assert received == {BLOCK.command_id: sent}


def test_filters_by_outcome(broker_url: str) -> None:
    # Given a stream that follows failed commands only
    with EventStream(broker_url=broker_url, outcomes={"failed"}) as stream:
        assert stream.routing_keys == ("command.failed",)
        # When an applied event and then a failed one are published
        publish_event(broker_url, event_for(BLOCK, Outcome.APPLIED), "command.applied")
        failed = event_for(
            SERVICE,
            Outcome.FAILED,
            upstream_status=422,
            error=EventError(code=1042, status="UNPROCESSABLE", message="no such service"),
        )
        publish_event(broker_url, failed, "command.failed")
        # Then the first (and only) event it yields is the failed one
        first = next(stream.iter(timeout=10))
    assert first == failed
    assert first.data.error is not None
    assert first.data.error.detail_msg is None


def test_skips_a_body_that_is_not_a_result_event(broker_url: str) -> None:
    # Given a stream
    with EventStream(broker_url=broker_url) as stream:
        # When garbage and then a real event are published
        publish_event(broker_url, b"{not json", "command.applied")
        real = event_for(BLOCK, Outcome.SUPERSEDED)
        publish_event(broker_url, real, "command.superseded")
        # Then the garbage is dropped (and acked) and the real event comes through
        assert next(stream.iter(timeout=10)) == real


def test_wait_for_returns_what_came_in_time(clean_redis_url: str) -> None:
    # Given a stream and one of two awaited commands answered
    with EventStream(broker_url=clean_redis_url) as stream:
        publish_event(clean_redis_url, event_for(BLOCK, Outcome.EXPIRED), "command.expired")
        # When waiting briefly for both
        started = time.monotonic()
        found = stream.wait_for({BLOCK.command_id, SERVICE.command_id}, timeout=0.5)
        # Then the answered one is returned once the time is up
        assert time.monotonic() - started >= 0.5
    assert set(found) == {BLOCK.command_id}


def test_iter_ends_at_its_timeout(clean_redis_url: str) -> None:
    # Given a stream nobody publishes to
    with EventStream(broker_url=clean_redis_url) as stream:
        # When iterating with a short timeout
        started = time.monotonic()
        events = list(stream.iter(timeout=0.3))
    # Then it ends empty, soon after the timeout
    assert events == []
    assert 0.3 <= time.monotonic() - started < 3


def test_redis_stream_leaves_no_queue_nor_binding_behind(clean_redis_url: str) -> None:
    # Given a stream on Redis, bound to the events exchange, with an unread event
    client = redis.Redis.from_url(clean_redis_url)
    stream = EventStream(broker_url=clean_redis_url)
    with stream:
        publish_event(clean_redis_url, event_for(BLOCK, Outcome.APPLIED), "command.applied")
        bindings = client.smembers("_kombu.binding.subswitch.events")
        assert any(stream.queue_name.encode() in member for member in bindings)
    # When it is closed
    # Then neither its binding nor its list remains
    bindings = client.smembers("_kombu.binding.subswitch.events")
    assert not any(stream.queue_name.encode() in member for member in bindings)
    assert client.keys(f"{stream.queue_name}*") == []


def test_rabbitmq_stream_queue_is_exclusive_and_gone_after_close(clean_amqp_url: str) -> None:
    # Given a stream on RabbitMQ: its queue exists, locked to the stream's connection
    stream = EventStream(broker_url=clean_amqp_url)
    with stream:
        assert _declare_passively(clean_amqp_url, stream.queue_name) == "locked"
    # When it is closed / Then its queue is deleted
    assert _declare_passively(clean_amqp_url, stream.queue_name) == "missing"


def _declare_passively(url: str, name: str) -> str:
    with kombu.Connection(url) as connection:
        try:
            connection.channel().queue_declare(name, passive=True)
        except amqp.exceptions.ResourceLocked:
            return "locked"
        except amqp.exceptions.NotFound:
            return "missing"
    return "exists"


def test_unreachable_broker_is_a_one_line_broker_error() -> None:
    # Given a broker URL nobody listens on, with a password
    stream = EventStream(broker_url="amqp://user:s3cret@127.0.0.1:1//")
    # When the stream is opened
    with pytest.raises(BrokerError) as caught, stream:
        pass
    # Then the error is one line, names the (redacted) broker, and hides the password
    message = str(caught.value)
    assert message.startswith("could not follow events at amqp://user:***@127.0.0.1:1//: ")
    assert "s3cret" not in message
    assert "\n" not in message
    assert "s3cret" not in repr(stream)


def test_iter_needs_an_open_stream() -> None:
    # Given a stream never opened / When iterated / Then a clear RuntimeError
    with pytest.raises(RuntimeError, match="not open"):
        next(EventStream(broker_url="redis://127.0.0.1:1/0").iter(timeout=0))
