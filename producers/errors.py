"""Errors the producer SDK raises, and the redaction that keeps secrets out of them.

``BrokerError`` and ``PublishError`` are the error tree's (:mod:`subswitch.errors`),
named here too because the SDK raises them.
"""

from __future__ import annotations

from subswitch.contract import InvalidCommand
from subswitch.errors import BrokerError, PublishError
from subswitch.redact import redact_url, scrub

__all__ = [
    "BrokerError",
    "InvalidCommandError",
    "MessageTooLargeError",
    "PublishError",
    "redact_url",
    "scrub",
]


class InvalidCommandError(InvalidCommand):
    """A command the contract refuses; nothing was enqueued.

    ``str()`` is one line naming each offending field, e.g.
    ``block_id: Input should be less than or equal to 2``. A ``ValueError``.
    """


class MessageTooLargeError(InvalidCommandError):
    """The message would exceed ``SUBSWITCH_MAX_MESSAGE_BYTES``; nothing was enqueued."""
