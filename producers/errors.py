"""Errors the producer SDK raises, and the redaction that keeps secrets out of them.

``BrokerError`` and ``PublishError`` are the error tree's (:mod:`subswitch.errors`),
named here too because the SDK raises them.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

from subswitch.contract import InvalidCommand
from subswitch.errors import BrokerError, PublishError

__all__ = [
    "BrokerError",
    "InvalidCommandError",
    "MessageTooLargeError",
    "PublishError",
    "redact_url",
    "scrub",
]

_WHITESPACE = re.compile(r"\s+")


class InvalidCommandError(InvalidCommand):
    """A command the contract refuses; nothing was enqueued.

    ``str()`` is one line naming each offending field, e.g.
    ``block_id: Input should be less than or equal to 2``. A ``ValueError``.
    """


class MessageTooLargeError(InvalidCommandError):
    """The message would exceed ``SUBSWITCH_MAX_MESSAGE_BYTES``; nothing was enqueued."""


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (at and colon and password):
        return url
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def scrub(text: str, url: str) -> str:
    """``text`` on one line, with ``url``'s password (if any) replaced by ``***``."""
    password = urlsplit(url).password
    if password:
        for spelling in {password, unquote(password)}:
            text = text.replace(spelling, "***")
    return _WHITESPACE.sub(" ", text).strip()
