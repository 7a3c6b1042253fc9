"""The producer SDK: enqueue subswitch commands and follow their result events.

from producers import CommandProducer

with CommandProducer.from_env() as producer:
    command_id = producer.change_block_status(
        org_id="telco", subscription_id=214748364, block_id=1, active=True,
        reason="stolen", priority="urgent", source="fraud-engine",
    )
"""

from producers.commands import (
    DEFAULT_SOURCE,
    Envelope,
    block_status_command,
    service_status_command,
)
from producers.errors import BrokerError, InvalidCommandError, PublishError
from producers.events import EventStream
from producers.producer import CommandProducer
from producers.publisher import CeleryPublisher, InMemoryPublisher, Publisher
from subswitch.contract import AnyCommand
from subswitch.status import CommandState, CommandStatus

__all__ = [
    "DEFAULT_SOURCE",
    "AnyCommand",
    "BrokerError",
    "CeleryPublisher",
    "CommandProducer",
    "CommandState",
    "CommandStatus",
    "Envelope",
    "EventStream",
    "InMemoryPublisher",
    "InvalidCommandError",
    "PublishError",
    "Publisher",
    "block_status_command",
    "service_status_command",
]
