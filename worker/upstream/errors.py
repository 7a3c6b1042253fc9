"""Errors of the upstream client, mapped once at this boundary.

Everything the client raises is an :class:`UpstreamError`, in one of the two families
of the error tree (:mod:`subswitch.errors`):

* :class:`UpstreamTransientError` (a :class:`subswitch.errors.TransientError`: retry may
  help): timeouts, connection failures, 408, 429 and 5xx except 501/505.
  ``maybe_applied`` says whether a write may have reached the upstream and taken
  effect; ``retry_after`` carries a parsed ``Retry-After``.
* :class:`UpstreamPermanentError` (a :class:`subswitch.errors.PermanentError`: never
  retry): every other 4xx, 501/505, redirects, and 2xx answers to reads whose body
  cannot be parsed (:class:`MalformedResponseError`). :class:`AuthenticationError`
  (401/403, token endpoint refusals) and :class:`InvalidRequestError` (bad input
  refused before anything is sent) are permanent too.

:class:`~subswitch.errors.ConfigurationError` is separate: it is raised while building a
client or a token provider from bad settings, never while talking to the upstream.

``TransientError`` and ``PermanentError`` here are the older names of the two upstream
families, kept for their importers; they are the upstream's classes, not the tree's.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
from collections.abc import Iterator
from datetime import UTC
from typing import Any, Final

import httpx
import pydantic

from subswitch import errors
from worker.upstream.models import ErrorMessage

#: Statuses that say the request was refused before being processed, yet may pass later.
_REFUSED_FOR_NOW: Final = frozenset({408, 429, 503})
#: 5xx statuses that will not change on a retry.
_PERMANENT_5XX: Final = frozenset({501, 505})
_MAX_TEXT: Final = 300
_DELTA_SECONDS = re.compile(r"-?\d+(?:\.\d+)?")
_ERROR_MESSAGE_KEYS: Final = frozenset({"code", "status", "message", "detailMsg"})


def one_line(text: str, limit: int = _MAX_TEXT) -> str:
    """``text`` with control characters and runs of whitespace collapsed, cut at ``limit``."""
    flat = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class UpstreamError(errors.SubswitchError):
    """Base of every error the upstream client raises.

    ``status`` is the HTTP status when the upstream answered, else ``None``;
    ``message`` (also ``str(error)``) is one human-readable line without secrets.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = one_line(message, limit=1000)
        self.status = status

    def __str__(self) -> str:
        return self.message


class UpstreamTransientError(UpstreamError, errors.TransientError):
    """A failure a later retry may overcome.

    ``retry_after`` is the upstream's ``Retry-After`` in seconds (never negative) or
    ``None``; ``maybe_applied`` is True when the request may have reached the upstream
    and been applied (only ever for writes), so a retry may repeat an applied change.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.maybe_applied = maybe_applied


class UpstreamTimeout(UpstreamTransientError):
    """Connect, read, write or connection-pool timeout."""


class UpstreamConnectionError(UpstreamTransientError):
    """The connection failed, was reset or closed without a (complete) answer."""


class UpstreamUnavailable(UpstreamTransientError):
    """The upstream answered 408, 429 or a retryable 5xx."""


class UpstreamPermanentError(UpstreamError, errors.PermanentError):
    """A failure a retry will not fix.

    ``error`` holds the upstream's ``ErrorMessage`` when its body carried one.
    """

    def __init__(
        self, message: str, *, status: int | None = None, error: ErrorMessage | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.error = error


class AuthenticationError(UpstreamPermanentError):
    """Credentials refused: 401 after one token refresh, 403, or the token endpoint said no."""


class InvalidRequestError(UpstreamPermanentError, ValueError):
    """Bad input, refused before any request left the process."""


class MalformedResponseError(UpstreamPermanentError):
    """A 2xx answer to a read whose body is not the documented JSON."""


#: The upstream families by their older names (the executor and tests import these).
TransientError = UpstreamTransientError
PermanentError = UpstreamPermanentError


#: httpx errors a retry may overcome: (causes, error class, whether the request may
#: have reached the upstream). Order matters: the first match wins.
_TRANSIENT_TRANSPORT_ERRORS: Final[
    tuple[tuple[tuple[type[httpx.HTTPError], ...], type[UpstreamTransientError], bool], ...]
] = (
    ((httpx.ConnectTimeout, httpx.PoolTimeout), UpstreamTimeout, False),
    ((httpx.TimeoutException,), UpstreamTimeout, True),  # read/write timeout
    ((httpx.ConnectError, httpx.ProxyError), UpstreamConnectionError, False),
    ((httpx.NetworkError, httpx.RemoteProtocolError), UpstreamConnectionError, True),
)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date).

    ``now`` is the current POSIX time for HTTP dates. Negative values and dates in the
    past give 0; anything unparseable gives ``None``.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return max(0.0, float(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means just that
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


@contextlib.contextmanager
def map_transport_errors(operation: str, *, write: bool) -> Iterator[None]:
    """Turn httpx exceptions raised inside the block into :class:`UpstreamError`.

    ``operation`` (e.g. ``"PATCH orgs/telco/..."``) names the request in messages.
    ``write`` decides ``maybe_applied``: only a write that may have been sent can
    have been applied. Exception texts are only quoted for network failures: a
    protocol error on our side can quote header values, and headers carry tokens.
    """
    try:
        yield
    except httpx.HTTPError as exc:
        raise transport_error(exc, operation, write=write) from exc


def transport_error(exc: httpx.HTTPError, operation: str, *, write: bool) -> UpstreamError:
    """The :class:`UpstreamError` that stands for the httpx exception ``exc``."""
    kind = type(exc).__name__
    for causes, error_class, may_be_upstream in _TRANSIENT_TRANSPORT_ERRORS:
        if isinstance(exc, causes):
            detail = one_line(str(exc), 200) or "no detail"
            return error_class(
                f"{operation} failed: {kind}: {detail}", maybe_applied=write and may_be_upstream
            )
    if isinstance(exc, httpx.DecodingError):
        return MalformedResponseError(f"{operation}: the response body could not be decoded")
    if isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol):
        return UpstreamPermanentError(f"{operation}: the request could not be sent ({kind})")
    # Unknown transport trouble: assume the worst for writes and let the worker retry.
    return UpstreamConnectionError(f"{operation} failed: {kind}", maybe_applied=write)


def error_message_from(body: bytes) -> ErrorMessage | None:
    """The upstream ``ErrorMessage`` in ``body``, or ``None`` when it holds none."""
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not _ERROR_MESSAGE_KEYS & data.keys():
        return None
    try:
        return ErrorMessage.model_validate(data)
    except pydantic.ValidationError:
        return None


def error_for_status(
    status: int,
    headers: httpx.Headers,
    body: bytes,
    *,
    operation: str,
    write: bool,
    now: float,
    note: str = "",
) -> UpstreamError:
    """The error for a non-2xx answer; ``note`` is appended to the message."""
    error = error_message_from(body)
    message = f"upstream answered {_status_text(status)} to {operation}{_body_summary(body, error)}"
    message += f"; {note}" if note else ""
    if status in _REFUSED_FOR_NOW or (500 <= status < 600 and status not in _PERMANENT_5XX):
        return UpstreamUnavailable(
            message,
            status=status,
            retry_after=parse_retry_after(headers.get("Retry-After"), now=now),
            maybe_applied=write and status not in _REFUSED_FOR_NOW,
        )
    if status in (401, 403):
        return AuthenticationError(message, status=status, error=error)
    if 300 <= status < 400:
        message += " (redirects are not followed)"
    return UpstreamPermanentError(message, status=status, error=error)


def _status_text(status: int) -> str:
    reason = httpx.codes.get_reason_phrase(status)
    return f"{status} {reason}" if reason else str(status)


def _body_summary(body: bytes, error: ErrorMessage | None) -> str:
    if error is not None:
        return f": {error.summary()}"
    if not body.strip():
        return " with no body"
    try:
        json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return " with a non-JSON body"
    return " with a JSON body that is not an ErrorMessage"


def safe_url(url: str | httpx.URL) -> str:
    """``url`` without user info, query or fragment: fit for messages and logs."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))
