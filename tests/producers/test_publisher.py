"""CeleryPublisher against real brokers: message format, routing, connections, confirms."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu.connection
import pytest

from producers import CeleryPublisher, CommandProducer, InMemoryPublisher
from producers.publisher import chunk_task_id
from subswitch.contract import APPLY_BATCH_TASK, APPLY_TASK, ChangeBlockStatus, Lane
from tests.producers.helpers import publisher_for, queue_depth, receive

pytestmark = pytest.mark.integration

BLOCK = {"org_id": "telco", "subscription_id": 214748364, "block_id": 1, "active": True}


@pytest.fixture
def producer(broker_url: str) -> Iterator[CommandProducer]:
    with CommandProducer(publisher=publisher_for(broker_url)) as producer:
        yield producer


def test_command_is_a_celery_protocol_2_json_task_message(
    broker_url: str, producer: CommandProducer
) -> None:
    # Given a block command with a reason and a correlation id
    # When it is sent
    command_id = producer.change_block_status(
        **BLOCK, reason="stolen", correlation_id="case-8812", source="fraud-engine"
    )
    # Then the normal lane holds one Celery protocol-2 JSON message: task subswitch.apply,
    # task id = command_id, body [args, kwargs, embed] with args[0] the command
    [message] = receive(broker_url, Lane.NORMAL)
    assert message.content_type == "application/json"
    assert message.headers["task"] == APPLY_TASK
    assert message.headers["id"] == command_id
    assert message.headers["lang"] == "py"
    assert message.properties["correlation_id"] == command_id
    args, kwargs, embed = message.body
    assert len(args) == 1
    assert kwargs == {}
    assert set(embed) >= {"callbacks", "errbacks", "chain", "chord"}
    command = message.command
    assert isinstance(command, ChangeBlockStatus)
    assert command.command_id == command_id
    assert (command.reason, command.correlation_id, command.source) == (
        "stolen",
        "case-8812",
        "fraud-engine",
    )


def test_urgent_lands_in_the_urgent_queue_only(broker_url: str, producer: CommandProducer) -> None:
    # Given an empty broker
    # When one urgent and one bulk command are sent
    urgent_id = producer.change_block_status(**BLOCK, priority="urgent")
    bulk_id = producer.change_block_status(**BLOCK, priority="bulk")
    # Then each is in its own lane's queue and the normal lane is empty
    assert [m.headers["id"] for m in receive(broker_url, Lane.URGENT)] == [urgent_id]
    assert [m.headers["id"] for m in receive(broker_url, Lane.BULK)] == [bulk_id]
    assert not queue_depth(broker_url, Lane.NORMAL.queue)
    assert not queue_depth(broker_url, Lane.URGENT.queue)


def test_one_connection_carries_100_sends(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given every broker connection being counted as it is established
    opened: list[str] = []
    establish = kombu.connection.Connection._establish_connection

    def counting(self: kombu.connection.Connection) -> Any:
        opened.append(self.transport_cls)
        return establish(self)

    monkeypatch.setattr(kombu.connection.Connection, "_establish_connection", counting)
    # When 100 commands are sent through one producer
    with CommandProducer(publisher=publisher_for(broker_url)) as producer:
        ids = [producer.change_block_status(**BLOCK, priority="bulk") for _ in range(100)]
    # Then one connection was opened, and all 100 arrived, in order
    assert len(opened) == 1
    assert [m.headers["id"] for m in receive(broker_url, Lane.BULK, count=100)] == ids


def test_a_command_sent_before_any_worker_declared_the_queue_is_kept(broker_url: str) -> None:
    # Given a broker where no lane queue (nor, on Redis, any binding) exists yet
    assert queue_depth(broker_url, Lane.URGENT.queue) is None
    # When a producer sends a command and goes away
    with CommandProducer(publisher=publisher_for(broker_url)) as producer:
        command_id = producer.change_block_status(**BLOCK, priority="urgent")
    # Then the queue exists, holds it, and accepts the worker's own declaration
    # (receive declares it with the worker's arguments; a mismatch would be refused)
    assert queue_depth(broker_url, Lane.URGENT.queue) == 1
    assert [m.headers["id"] for m in receive(broker_url, Lane.URGENT)] == [command_id]


def test_publisher_confirms_are_on_with_rabbitmq(clean_amqp_url: str) -> None:
    # Given a publisher on RabbitMQ that has sent a command
    publisher = publisher_for(clean_amqp_url)
    CommandProducer(publisher=publisher).change_block_status(**BLOCK)
    # When its pooled producer's channel is inspected
    with publisher.producer_pool.acquire(block=True) as pooled:
        confirmed = pooled.channel._confirm_selected
    publisher.close()
    # Then the channel is in confirm mode: a publish returns once RabbitMQ took it
    assert confirmed is True


def test_in_memory_and_celery_publishers_agree_on_queue_and_body(
    broker_url: str, producer: CommandProducer
) -> None:
    # Given the same command sent through both publishers
    memory = InMemoryPublisher()
    command = ChangeBlockStatus(**BLOCK, source="billing", priority=Lane.URGENT)
    CommandProducer(publisher=memory).send(command)
    producer.send(command)
    # When the broker's message is read
    [message] = receive(broker_url, Lane.URGENT)
    # Then queue and args[0] are what the in-memory double recorded
    assert memory.sent == [(Lane.URGENT.queue, message.body[0][0])]


# --- chunks of bulk commands ----------------------------------------------------------


@contextmanager
def _publisher(broker_url: str) -> Iterator[CeleryPublisher]:
    publisher = publisher_for(broker_url)
    try:
        yield publisher
    finally:
        publisher.close()


def bulk(count: int, *, first: int = 1) -> list[ChangeBlockStatus]:
    return [
        ChangeBlockStatus(**{**BLOCK, "subscription_id": n}, source="batch", priority=Lane.BULK)
        for n in range(first, first + count)
    ]


def test_a_chunk_is_one_apply_batch_message_on_the_bulk_queue(broker_url: str) -> None:
    # Given a publisher and a chunk of 3 bulk commands
    commands = bulk(3)
    # When the chunk is published
    with _publisher(broker_url) as publisher:
        publisher.publish_batch(commands)
    # Then the bulk queue holds one subswitch.apply_batch message: task id from the
    # chunk, one argument (the commands as JSON, in order), a short argsrepr
    [message] = receive(broker_url, Lane.BULK)
    assert message.headers["task"] == APPLY_BATCH_TASK
    assert message.headers["id"] == chunk_task_id(commands)
    assert message.body[0] == [[command.model_dump(mode="json") for command in commands]]
    assert message.body[1] == {}
    first, last = commands[0].command_id, commands[-1].command_id
    assert message.headers["argsrepr"] == f"[<3 commands: {first} .. {last}>]"
    assert not queue_depth(broker_url, Lane.NORMAL.queue)


def test_a_chunk_with_a_command_of_another_lane_is_refused(broker_url: str) -> None:
    # Given a chunk with one normal-lane command among bulk ones
    commands = [*bulk(2), ChangeBlockStatus(**BLOCK, source="batch")]
    memory = InMemoryPublisher()
    # When either publisher is asked to send it, or an empty chunk
    with _publisher(broker_url) as publisher:
        for target in (publisher, memory):
            with pytest.raises(ValueError, match="only bulk commands travel in chunks"):
                target.publish_batch(commands)
            with pytest.raises(ValueError, match="at least one command"):
                target.publish_batch([])
    # Then nothing was sent anywhere
    assert not queue_depth(broker_url, Lane.BULK.queue)
    assert memory.chunks == []


def test_in_memory_and_celery_publishers_agree_on_chunks(broker_url: str) -> None:
    # Given the same chunk sent through both publishers
    commands = bulk(2, first=10)
    memory = InMemoryPublisher()
    memory.publish_batch(commands)
    with _publisher(broker_url) as publisher:
        publisher.publish_batch(commands)
    # When the broker's message is read / Then queue, task id and argument match
    [message] = receive(broker_url, Lane.BULK)
    [chunk] = memory.chunks
    assert (chunk.queue, chunk.task_id, chunk.commands) == (
        Lane.BULK.queue,
        message.headers["id"],
        message.body[0][0],
    )
    assert memory.chunked_commands == commands
