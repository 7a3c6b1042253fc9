"""How every class of upstream answer maps to a return value or an error."""

from __future__ import annotations

import pytest

from tests.worker.upstream.conftest import ClientFactory, answer
from worker.upstream import (
    AuthenticationError,
    MasStackClient,
    PermanentError,
    TransientError,
    UpstreamUnavailable,
)

ERROR_BODY = {
    "code": 1002,
    "status": "Bad Request",
    "message": "Service not changeable",
    "detailMsg": "service 4 of subscription 7 cannot be switched",
}
NOW = 1_700_000_000.0


def block_on(client: MasStackClient) -> int:
    return client.change_block_status("telco", 7, 1, active=True, idempotency_key="cmd-1")


def service_off(client: MasStackClient) -> int:
    return client.change_service_status("telco", 7, 4, active=False, idempotency_key="cmd-2")


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_write_returns_the_2xx_status(make_client: ClientFactory, status: int) -> None:
    # Given an upstream that accepts the change
    client, recorder = make_client(answer(status))
    # When a block and a service are changed
    # Then each call returns the upstream's status, after exactly one request each
    assert block_on(client) == status
    assert service_off(client) == status
    assert len(recorder.requests) == 2


def test_201_with_a_body_is_still_success(make_client: ClientFactory) -> None:
    # Given an upstream that answers 201 with an unexpected, non-JSON body
    client, _ = make_client(answer(201, b"<html>created</html>"))
    # When a block is changed / Then the status is the outcome; the body is ignored
    assert block_on(client) == 201


def test_400_with_error_message_is_permanent_and_carries_its_fields(
    make_client: ClientFactory,
) -> None:
    # Given an upstream that refuses the body with an ErrorMessage
    client, _ = make_client(answer(400, ERROR_BODY))
    # When a service is switched
    with pytest.raises(PermanentError) as caught:
        service_off(client)
    # Then the error is permanent, carries the parsed ErrorMessage and a one-line text
    error = caught.value
    assert type(error) is PermanentError
    assert error.status == 400
    assert error.error is not None
    assert error.error.code == 1002
    assert error.error.status == "Bad Request"
    assert error.error.message == "Service not changeable"
    assert error.error.detail_msg == "service 4 of subscription 7 cannot be switched"
    assert error.error.model_dump(by_alias=True)["detailMsg"] == ERROR_BODY["detailMsg"]
    text = str(error)
    assert "\n" not in text
    assert "400 Bad Request" in text
    assert "PATCH orgs/telco/subscriptions/7/services/4" in text
    assert "Service not changeable" in text


@pytest.mark.parametrize(
    ("body", "expected_text"),
    [
        (None, "with no body"),
        (b"<html>oops</html>", "with a non-JSON body"),
        ({"unexpected": True}, "with a JSON body that is not an ErrorMessage"),
        ([1, 2], "with a JSON body that is not an ErrorMessage"),
    ],
)
def test_400_without_error_message_says_what_the_body_was(
    make_client: ClientFactory, body: object, expected_text: str
) -> None:
    # Given a 400 whose body is not an ErrorMessage
    client, _ = make_client(answer(400, body))
    # When a block is changed
    with pytest.raises(PermanentError) as caught:
        block_on(client)
    # Then the error has no ErrorMessage and says what came instead
    assert caught.value.error is None
    assert expected_text in str(caught.value)


def test_error_message_with_odd_field_types_is_still_parsed(make_client: ClientFactory) -> None:
    # Given an ErrorMessage whose code is not a number and whose status is one
    client, _ = make_client(answer(404, {"code": "E-17", "status": 404, "message": "gone"}))
    # When a block is changed
    with pytest.raises(PermanentError) as caught:
        block_on(client)
    # Then the usable fields survive and the odd ones are normalised
    assert caught.value.error is not None
    assert caught.value.error.code is None
    assert caught.value.error.status == "404"
    assert caught.value.error.message == "gone"


@pytest.mark.parametrize("status", [400, 404, 405, 409, 410, 413, 415, 422, 451])
def test_client_errors_are_permanent(make_client: ClientFactory, status: int) -> None:
    # Given an upstream that answers a 4xx (405 without a body, the others with one)
    body = None if status == 405 else {"code": status, "message": "no"}
    client, recorder = make_client(answer(status, body))
    # When a block is changed
    with pytest.raises(PermanentError) as caught:
        block_on(client)
    # Then the error is permanent (not an auth error), with the status, after one request
    assert type(caught.value) is PermanentError
    assert caught.value.status == status
    assert len(recorder.requests) == 1


def test_405_without_body_says_so(make_client: ClientFactory) -> None:
    # Given the documented 405 without a body
    client, _ = make_client(answer(405))
    # When a block is changed
    with pytest.raises(PermanentError) as caught:
        block_on(client)
    # Then the message names the status and the missing body
    assert caught.value.error is None
    assert "405 Method Not Allowed" in str(caught.value)
    assert "with no body" in str(caught.value)


def test_403_is_an_authentication_error_without_refresh(make_client: ClientFactory) -> None:
    # Given an upstream that forbids the call
    client, recorder = make_client(answer(403, {"code": 403, "message": "missing scope"}))
    # When a block is changed
    with pytest.raises(AuthenticationError) as caught:
        block_on(client)
    # Then it is a permanent auth error with the body, and the request was not repeated
    assert isinstance(caught.value, PermanentError)
    assert caught.value.status == 403
    assert caught.value.error is not None
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "Tue, 14 Nov 2023 22:15:00 GMT"}, 100.0),
        ({"Retry-After": "Tue, 14 Nov 2023 22:00:00 GMT"}, 0.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_429_is_transient_with_parsed_retry_after(
    make_client: ClientFactory, headers: dict[str, str], expected: float | None
) -> None:
    # Given a rate-limited upstream and a clock at 2023-11-14 22:13:20 UTC
    client, _ = make_client(answer(429, None, headers), clock=lambda: NOW)
    # When a block is changed
    with pytest.raises(UpstreamUnavailable) as caught:
        block_on(client)
    # Then the error is transient, not applied, and carries Retry-After in seconds
    assert caught.value.status == 429
    if expected is None:
        assert caught.value.retry_after is None
    else:
        assert caught.value.retry_after == pytest.approx(expected)
    assert caught.value.maybe_applied is False


@pytest.mark.parametrize(
    ("status", "maybe_applied"), [(408, False), (500, True), (502, True), (503, False), (504, True)]
)
def test_server_errors_are_transient(
    make_client: ClientFactory, status: int, maybe_applied: bool
) -> None:
    # Given an upstream answering a retryable status
    client, recorder = make_client(answer(status, None, {"Retry-After": "2"}))
    # When a block is changed
    with pytest.raises(TransientError) as caught:
        block_on(client)
    # Then the error is transient; a write may have been applied unless the upstream
    # said it refused the request (408/429/503); no retry happened inside the client
    assert isinstance(caught.value, UpstreamUnavailable)
    assert caught.value.status == status
    assert caught.value.maybe_applied is maybe_applied
    assert caught.value.retry_after == 2.0
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_on_reads_are_never_maybe_applied(
    make_client: ClientFactory, status: int
) -> None:
    # Given an upstream failing a read
    client, _ = make_client(answer(status))
    # When blocks are listed
    with pytest.raises(TransientError) as caught:
        client.list_blocks("telco", 7)
    # Then nothing can have been applied by a GET
    assert caught.value.maybe_applied is False


@pytest.mark.parametrize("status", [501, 505])
def test_not_implemented_is_permanent(make_client: ClientFactory, status: int) -> None:
    # Given an upstream that will never support the request
    client, _ = make_client(answer(status))
    # When a block is changed / Then a retry is pointless
    with pytest.raises(PermanentError):
        block_on(client)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(make_client: ClientFactory, status: int) -> None:
    # Given an upstream that redirects elsewhere
    client, recorder = make_client(answer(status, None, {"Location": "https://evil.test/x"}))
    # When a block is changed
    with pytest.raises(PermanentError) as caught:
        block_on(client)
    # Then the redirect was not followed (the token stays home) and the error says why
    assert len(recorder.requests) == 1
    assert "redirects are not followed" in str(caught.value)
