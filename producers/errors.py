"""Errors the producer SDK raises, and the redaction that keeps secrets out of them."""

from __future__ import annotations

from subswitch.contract import InvalidCommand
from subswitch.redact import redact_url, scrub

__all__ = ["BrokerError", "InvalidCommandError", "PublishError", "redact_url", "scrub"]


class InvalidCommandError(InvalidCommand):
    """A command the contract refuses; nothing was enqueued.

    ``str()`` is one line naming each offending field, e.g.
    ``block_id: Input should be less than or equal to 2``. A ``ValueError``.
    """


class BrokerError(RuntimeError):
    """The broker could not be reached or refused an operation (one line, no secrets)."""


class PublishError(BrokerError):
    """A command could not be handed to the broker; it may or may not have been enqueued
    if the connection broke after the broker took it, so re-sending the same command
    (same ``command_id``) is the safe recovery: the worker applies it once."""
