"""The error hierarchy and the helpers that build errors."""

from __future__ import annotations

import copy
import pickle

import httpx
import pytest

from worker.upstream import (
    AuthenticationError,
    ErrorMessage,
    InvalidRequestError,
    MalformedResponseError,
    PermanentError,
    TransientError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    parse_retry_after,
)
from worker.upstream.errors import error_for_status, error_message_from

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("Tue, 14 Nov 2023 22:15:00 GMT", 100.0),
        ("Tuesday, 14-Nov-23 22:15:00 GMT", 100.0),
        ("Tue Nov 14 22:15:00 2023", 100.0),
        ("Mon, 13 Nov 2023 00:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("12abc", None),
        ("inf", None),
        ("Tue, 99 Nov 2023 22:15:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_hierarchy() -> None:
    assert issubclass(TransientError, UpstreamError)
    assert issubclass(PermanentError, UpstreamError)
    for transient in (UpstreamTimeout, UpstreamConnectionError, UpstreamUnavailable):
        assert issubclass(transient, TransientError)
    for permanent in (AuthenticationError, InvalidRequestError, MalformedResponseError):
        assert issubclass(permanent, PermanentError)
        assert not issubclass(permanent, TransientError)
    assert issubclass(InvalidRequestError, ValueError)


def test_str_is_one_line() -> None:
    error = PermanentError("first\nsecond\r\n\tthird", status=400)
    assert str(error) == "first second third"
    assert error.message == str(error)


@pytest.mark.parametrize(
    "error",
    [
        UpstreamUnavailable("busy", status=429, retry_after=3.0, maybe_applied=False),
        UpstreamTimeout("slow", maybe_applied=True),
        PermanentError("no", status=400, error=ErrorMessage(code=1, detailMsg="d")),
        AuthenticationError("denied", status=401),
        InvalidRequestError("bad org_id"),
    ],
)
def test_errors_survive_copy_and_pickle(error: UpstreamError) -> None:
    # Given an error with attributes (Celery may pickle it; the token provider copies it)
    # When it is copied and round-tripped through pickle
    for clone in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        # Then type, text and attributes are kept
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert vars(clone) == vars(error)


def test_error_message_from_requires_a_known_field() -> None:
    assert error_message_from(b'{"detailMsg": "x"}') == ErrorMessage(detailMsg="x")
    assert error_message_from(b'{"error": "x"}') is None
    assert error_message_from(b"null") is None
    assert error_message_from(b"\xff") is None


def test_error_message_dumps_with_the_upstream_names() -> None:
    error = ErrorMessage.model_validate({"code": 7, "detailMsg": "why", "trace": "ignored"})
    assert error.model_dump(by_alias=True) == {
        "code": 7,
        "status": None,
        "message": None,
        "detailMsg": "why",
    }
    assert error.summary() == "[code 7] (why)"
    assert ErrorMessage().summary() == "empty ErrorMessage"


def test_error_for_status_cuts_huge_messages_to_one_line() -> None:
    # Given an ErrorMessage with a very long, multi-line detail
    body = b'{"message": "bad", "detailMsg": "' + b"x\\n" * 5000 + b'"}'
    # When it becomes an error
    error = error_for_status(
        400, httpx.Headers(), body, operation="PATCH orgs/a", write=True, now=NOW
    )
    # Then its text stays one bounded line while the full detail stays in .error
    assert "\n" not in str(error)
    assert len(str(error)) <= 1000
    assert isinstance(error, PermanentError)
    assert error.error is not None
    assert error.error.detail_msg is not None
    assert len(error.error.detail_msg) == 10000
