"""What the producer refuses before enqueueing: commands out of their time bounds
(contract §2.6) and messages over SUBSWITCH_MAX_MESSAGE_BYTES."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kombu.utils.json import dumps

from producers import CommandProducer
from producers.commands import block_status_command, time_bounds
from producers.errors import InvalidCommandError, MessageTooLargeError
from producers.publisher import CeleryPublisher, InMemoryPublisher
from subswitch.contract import ChangeBlockStatus, Lane, TimeBounds
from subswitch.settings import Settings

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
BOUNDS = TimeBounds(max_skew_s=300, retention_s=86_400)


def producer(publisher: InMemoryPublisher) -> CommandProducer:
    return CommandProducer(publisher=publisher, time_bounds=BOUNDS, clock=lambda: NOW)


def block(producer: CommandProducer, issued_at: datetime) -> str:
    return producer.change_block_status(
        org_id="telco", subscription_id=7, block_id=1, active=False, issued_at=issued_at
    )


@pytest.mark.parametrize(
    ("offset_s", "fragment"),
    [
        (301, "is more than 300 s ahead of now (2026-11-22T10:00:00+00:00; "
              "SUBSWITCH_MAX_CLOCK_SKEW_SECONDS)"),
        (-86_401, "is more than 86400 s old (SUBSWITCH_RETENTION_SECONDS)"),
    ],
)  # fmt: skip
def test_a_command_out_of_its_time_bounds_is_refused_before_enqueueing(
    offset_s: int, fragment: str
) -> None:
    # Given a producer whose clock reads NOW
    publisher = InMemoryPublisher()
    # When an unblock is stamped too far ahead, or too far back
    with pytest.raises(InvalidCommandError) as refused:
        block(producer(publisher), NOW + timedelta(seconds=offset_s))
    # Then it is refused with one line naming the bound, and nothing is enqueued
    message = str(refused.value)
    assert message.startswith("issued_at: ") and fragment in message
    assert "\n" not in message
    assert publisher.sent == []


@pytest.mark.parametrize("offset_s", [300, 0, -86_400])
def test_a_command_inside_its_time_bounds_is_sent(offset_s: int) -> None:
    # Given a producer whose clock reads NOW
    publisher = InMemoryPublisher()
    # When commands stamped at the edges of the bounds are sent / Then they are enqueued
    block(producer(publisher), NOW + timedelta(seconds=offset_s))
    assert len(publisher.sent) == 1


def test_the_bounds_come_from_the_settings() -> None:
    # Given settings with a tight skew and a short retention
    settings = Settings(max_clock_skew_seconds=5, retention_seconds=3600)
    # Then the producer's bounds are those, and the defaults are the contract's
    assert time_bounds(settings) == TimeBounds(max_skew_s=5, retention_s=3600)
    assert time_bounds() == TimeBounds(max_skew_s=300, retention_s=86_400)


def bulk_commands(count: int) -> list[ChangeBlockStatus]:
    return [
        block_status_command(
            org_id="telco", subscription_id=n, block_id=1, active=True, priority=Lane.BULK
        )
        for n in range(1, count + 1)
    ]


def test_a_chunk_over_the_message_cap_is_refused_and_nothing_is_sent() -> None:
    # Given a broker nobody listens on, and a cap of 20 KB per message
    publisher = CeleryPublisher(
        broker_url="redis://127.0.0.1:1/0",
        visibility_timeout=300,
        queue_type="quorum",
        max_message_bytes=20_000,
    )
    # When a chunk of 100 commands (about 35 KB) is sent
    with pytest.raises(MessageTooLargeError) as refused:
        publisher.publish_batch(bulk_commands(100))
    publisher.close()
    # Then it is refused before any connection, naming the size and the setting
    message = str(refused.value)
    assert "over the 20,000 of SUBSWITCH_MAX_MESSAGE_BYTES; nothing enqueued" in message
    assert message.startswith("a chunk of 100 commands")


def test_a_chunk_of_the_default_size_fits_the_default_cap() -> None:
    # Given the default cap / When the default chunk of 100 commands is recorded
    publisher = InMemoryPublisher()
    publisher.publish_batch(bulk_commands(100))
    # Then it went through (and so would the largest possible 100, see publisher.py)
    assert len(publisher.chunks) == 1


def test_the_measured_size_is_what_celery_sends() -> None:
    # Given a cap just below one chunk's measured size
    commands = bulk_commands(40)
    body = [command.model_dump(mode="json") for command in commands]
    size = len(dumps(([body], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                   "chord": None})).encode())  # fmt: skip
    # When that chunk is recorded under caps on either side of it
    InMemoryPublisher(max_message_bytes=size + 256).publish_batch(commands)
    with pytest.raises(MessageTooLargeError):
        InMemoryPublisher(max_message_bytes=size).publish_batch(commands)
