"""CommandProducer with the in-memory publisher: validation, defaults, routing, envelope."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from producers import (
    CeleryPublisher,
    CommandProducer,
    InMemoryPublisher,
    InvalidCommandError,
    PublishError,
)
from subswitch.contract import ChangeBlockStatus, ChangeServiceStatus, Lane, parse_command
from subswitch.settings import Settings

BLOCK = {"org_id": "telco", "subscription_id": 214748364, "block_id": 1, "active": True}
SERVICE = {"org_id": "telco", "subscription_id": 214748364, "service_id": 77, "active": False}


@pytest.fixture
def publisher() -> InMemoryPublisher:
    return InMemoryPublisher()


@pytest.fixture
def producer(publisher: InMemoryPublisher) -> CommandProducer:
    return CommandProducer(publisher=publisher, default_source="fraud-engine")


def test_defaults_are_filled_in(producer: CommandProducer, publisher: InMemoryPublisher) -> None:
    # Given a producer with a default source
    before = datetime.now(UTC)
    # When a block is sent with no envelope at all
    command_id = producer.change_block_status(**BLOCK)
    # Then the command carries a UUID4 id, now (UTC) as issued_at, the default source
    # and the normal lane, and the returned id is the enqueued one
    after = datetime.now(UTC)
    [(queue, body)] = publisher.sent
    assert body["command_id"] == command_id
    assert uuid.UUID(command_id).version == 4
    issued_at = datetime.fromisoformat(body["issued_at"])
    assert issued_at.utcoffset() == timedelta(0)
    assert before <= issued_at <= after
    assert body["source"] == "fraud-engine"
    assert body["priority"] == "normal"
    assert queue == "subswitch.normal"
    assert body["not_after"] is None
    assert body["correlation_id"] is None


def test_each_send_gets_its_own_command_id(producer: CommandProducer) -> None:
    # Given / When two identical calls
    first = producer.change_block_status(**BLOCK)
    second = producer.change_block_status(**BLOCK)
    # Then they are two commands
    assert first != second


@pytest.mark.parametrize("priority", ["urgent", "normal", "bulk", Lane.URGENT, Lane.BULK])
def test_priority_selects_the_lane_queue(
    producer: CommandProducer, publisher: InMemoryPublisher, priority: str
) -> None:
    # Given a priority as a string or a Lane
    # When a command is sent with it
    producer.change_service_status(**SERVICE, priority=priority)
    # Then it goes to that lane's queue
    [(queue, body)] = publisher.sent
    assert queue == f"subswitch.{Lane(priority).value}"
    assert body["priority"] == Lane(priority).value


def test_envelope_options_are_honoured(publisher: InMemoryPublisher) -> None:
    # Given every envelope field, on a producer whose clock reads 10:00 that day
    producer = CommandProducer(
        publisher=publisher, clock=lambda: datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    )
    envelope: dict[str, Any] = {
        "command_id": "fraud-case-8812-block",
        "issued_at": "2026-11-22T10:00:00+01:00",
        "not_after": datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
        "priority": "urgent",
        "source": "billing",
        "correlation_id": "case-8812",
    }
    # When a block is sent with them and a reason
    command_id = producer.change_block_status(**BLOCK, reason="stolen", **envelope)
    # Then each lands in the command as given
    assert command_id == "fraud-case-8812-block"
    [command] = publisher.commands
    assert isinstance(command, ChangeBlockStatus)
    assert command.command_id == "fraud-case-8812-block"
    assert command.issued_at == datetime(2026, 11, 22, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    assert command.not_after == envelope["not_after"]
    assert command.priority is Lane.URGENT
    assert command.source == "billing"
    assert command.correlation_id == "case-8812"
    assert command.reason == "stolen"
    assert (command.block_id, command.active) == (1, True)


def test_none_envelope_values_mean_default(
    producer: CommandProducer, publisher: InMemoryPublisher
) -> None:
    # Given envelope arguments explicitly None (as a CLI passes unset options)
    # When the command is sent
    producer.change_service_status(
        **SERVICE, command_id=None, issued_at=None, priority=None, source=None
    )
    # Then the defaults apply
    [command] = publisher.commands
    assert isinstance(command, ChangeServiceStatus)
    assert uuid.UUID(command.command_id).version == 4
    assert command.priority is Lane.NORMAL
    assert command.source == "fraud-engine"
    assert (command.service_id, command.active) == (77, False)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"block_id": 3}, "block_id: Input should be less than or equal to 2"),
        ({"block_id": 0}, "block_id: Input should be greater than or equal to 1"),
        ({"org_id": "te/lco"}, "org_id: String should match pattern"),
        ({"org_id": ""}, "org_id: String should match pattern"),
        ({"subscription_id": 0}, "subscription_id: Input should be greater than or equal to 1"),
        ({"subscription_id": 2**63}, "subscription_id: Input should be less than or equal to"),
        ({"subscription_id": "5"}, "subscription_id: Input should be a valid integer"),
        ({"active": "yes"}, "active: Input should be a valid boolean"),
        ({"reason": "stolen\nphone"}, "reason: must not contain control, bidi or invisible"),
        ({"reason": "x" * 256}, "reason: String should have at most 255 characters"),
        ({"command_id": "has space"}, "command_id: String should match pattern"),
        ({"issued_at": "2026-11-22T10:00:00"}, "issued_at: Input should have timezone info"),
        ({"issued_at": "yesterday"}, "issued_at: Input should be a valid datetime"),
        ({"priority": "high"}, "priority: Input should be 'urgent', 'normal' or 'bulk'"),
        ({"source": "s" * 65}, "source: String should have at most 64 characters"),
        ({"correlation_id": "c" * 129}, "correlation_id: String should have at most 128"),
    ],
)
def test_invalid_command_names_the_field_and_publishes_nothing(
    producer: CommandProducer,
    publisher: InMemoryPublisher,
    change: dict[str, Any],
    expected: str,
) -> None:
    # Given a block with one bad field
    # When it is sent
    with pytest.raises(InvalidCommandError) as caught:
        producer.change_block_status(**{**BLOCK, **change})
    # Then the error is a one-line ValueError naming the field, and nothing was enqueued
    assert isinstance(caught.value, ValueError)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
    assert publisher.sent == []


def test_every_offending_field_is_named(
    producer: CommandProducer, publisher: InMemoryPublisher
) -> None:
    # Given two bad fields / When sent
    with pytest.raises(InvalidCommandError) as caught:
        producer.change_block_status(**{**BLOCK, "block_id": 3, "subscription_id": 0})
    # Then both are named, on one line
    assert "block_id:" in str(caught.value)
    assert "subscription_id:" in str(caught.value)
    assert publisher.sent == []


def test_unknown_envelope_argument_is_a_type_error(
    producer: CommandProducer, publisher: InMemoryPublisher
) -> None:
    # Given a misspelt envelope argument / When sent
    with pytest.raises(TypeError, match="priorty"):
        producer.change_block_status(**BLOCK, priorty="urgent")  # type: ignore[call-arg]
    # Then nothing was enqueued
    assert publisher.sent == []


def test_send_enqueues_a_command_model(
    producer: CommandProducer, publisher: InMemoryPublisher
) -> None:
    # Given a command model built by the caller
    command = ChangeServiceStatus(**SERVICE, source="billing", priority=Lane.BULK)
    # When it is sent
    command_id = producer.send(command)
    # Then it is enqueued unchanged on its lane
    assert command_id == command.command_id
    assert publisher.sent == [("subswitch.bulk", command.model_dump(mode="json"))]
    assert parse_command(publisher.sent[0][1]) == command


def test_send_refuses_a_model_that_skipped_validation(
    producer: CommandProducer, publisher: InMemoryPublisher
) -> None:
    # Given a model built without validation, with a block id the contract refuses
    valid = ChangeBlockStatus(**BLOCK, source="billing")
    broken = ChangeBlockStatus.model_construct(**{**valid.model_dump(), "block_id": 9})
    # When it is sent
    with pytest.raises(InvalidCommandError, match="block_id"):
        producer.send(broken)
    # Then nothing was enqueued
    assert publisher.sent == []


def test_send_refuses_something_else_than_a_command(producer: CommandProducer) -> None:
    # Given / When a dict is sent / Then TypeError
    with pytest.raises(TypeError, match="dict"):
        producer.send({"type": "ChangeBlockStatus"})  # type: ignore[arg-type]


def test_publish_failure_surfaces_as_publish_error(publisher: InMemoryPublisher) -> None:
    # Given a publisher that fails
    publisher.fail = True
    producer = CommandProducer(publisher=publisher)
    # When a valid command is sent / Then PublishError names the command
    with pytest.raises(PublishError, match="could not enqueue command fraud-1"):
        producer.change_block_status(**BLOCK, command_id="fraud-1")


def test_context_manager_closes_the_publisher(publisher: InMemoryPublisher) -> None:
    # Given / When a producer is used as a context manager
    with CommandProducer(publisher=publisher) as producer:
        producer.change_block_status(**BLOCK)
    # Then its publisher is closed at the end, and the default source was "subswitch"
    assert publisher.closed
    assert publisher.commands[0].source == "subswitch"


def test_from_env_reads_settings_and_connects_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a broker URL nobody listens on, with a password, and a source
    monkeypatch.setenv("SUBSWITCH_BROKER_URL", "amqp://user:s3cret@127.0.0.1:1//")
    monkeypatch.setenv("SUBSWITCH_SOURCE", "batch:dunning-2026-11")
    # When a producer is made from the environment
    with CommandProducer.from_env() as producer:
        # Then nothing connected yet, the source is the configured one, and the
        # publisher's repr hides the password
        assert producer.default_source == "batch:dunning-2026-11"
        assert repr(producer._publisher) == (
            "CeleryPublisher(broker_url='amqp://user:***@127.0.0.1:1//')"
        )


def test_celery_publisher_failure_is_one_line_without_the_password() -> None:
    # Given a publisher for a broker that refuses connections, with a password in its URL
    publisher = CeleryPublisher.from_settings(Settings(broker_url="redis://:s3cret@127.0.0.1:1/0"))
    producer = CommandProducer(publisher=publisher)
    # When a command is sent
    with pytest.raises(PublishError) as caught:
        producer.change_block_status(**BLOCK, command_id="fraud-2")
    producer.close()
    # Then the error is one line naming the command and the broker, without the secret
    message = str(caught.value)
    assert message.startswith("could not enqueue command fraud-2 on subswitch.normal at ")
    assert "redis://:***@127.0.0.1:1/0" in message
    assert "s3cret" not in message
    assert "\n" not in message
