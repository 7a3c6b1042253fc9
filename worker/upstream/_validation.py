"""Checks on every value that goes into a URL path, a header or a write body.

They run before any request is built, so bad input never leaves the process, and
they raise :class:`InvalidRequestError` with one line naming the field.
"""

from __future__ import annotations

import re
from typing import Final

import httpx

from subswitch.contract import COMMAND_ID_PATTERN, MAX_INT64, ORG_ID_PATTERN
from subswitch.errors import ConfigurationError
from worker.upstream.errors import InvalidRequestError, one_line, safe_url
from worker.upstream.models import MAX_REASON_LENGTH

# The contract's rules: a key is a command id, and org ids are what commands carry.
KEY_PATTERN: Final = COMMAND_ID_PATTERN
_ORG_ID = re.compile(ORG_ID_PATTERN)
_KEY = re.compile(KEY_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shown(value: object) -> str:
    return one_line(repr(value), 80)


def org_id(value: object) -> str:
    """``value`` if it is a valid organisation id (a safe single path segment)."""
    if not isinstance(value, str) or not _ORG_ID.fullmatch(value):
        raise InvalidRequestError(f"org_id {_shown(value)} is invalid: must match {ORG_ID_PATTERN}")
    return value


def int64_id(field: str, value: object) -> int:
    """``value`` as a plain int if it is an int (not a bool) in 1 … 2^63-1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{field} {_shown(value)} is invalid: must be an int")
    if not 1 <= value <= MAX_INT64:
        raise InvalidRequestError(f"{field} {value:d} is out of range 1..2^63-1")
    return int(value)


def block_id(value: object) -> int:
    """``value`` if it is 1 or 2, the only block ids the upstream accepts."""
    number = int64_id("block_id", value)
    if number not in (1, 2):
        raise InvalidRequestError(f"block_id {number:d} is invalid: must be 1 or 2")
    return number


def active(value: object) -> bool:
    """``value`` if it is a real bool (1 or "true" are refused, not guessed)."""
    if not isinstance(value, bool):
        raise InvalidRequestError(f"active {_shown(value)} is invalid: must be a bool")
    return value


def reason(value: object) -> str | None:
    """``value`` if it is ``None`` or text of at most 255 characters without controls."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(f"reason {_shown(value)} is invalid: must be a str or None")
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidRequestError(
            f"reason is {len(value)} characters long: at most {MAX_REASON_LENGTH} allowed"
        )
    control = _CONTROL.search(value)
    if control:
        raise InvalidRequestError(
            f"reason contains control character {control.group()!r} at {control.start()}"
        )
    return value


def header_token(field: str, value: object) -> str:
    """``value`` if it is 1-128 characters of ``[A-Za-z0-9._:-]`` (safe in a header)."""
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise InvalidRequestError(f"{field} {_shown(value)} is invalid: must match {KEY_PATTERN}")
    return value


def http_url(field: str, url: str) -> httpx.URL:
    """``url`` parsed, if it is an absolute http(s) URL; else :class:`ConfigurationError`."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(f"{field} {safe_url(url)!r} is not an absolute http(s) URL")
    return parsed
