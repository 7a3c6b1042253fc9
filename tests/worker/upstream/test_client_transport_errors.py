"""Transport failures (no HTTP answer) map to transient errors with ``maybe_applied``."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.worker.upstream.conftest import ClientFactory, Handler
from worker.upstream import (
    MalformedResponseError,
    PermanentError,
    TransientError,
    UpstreamConnectionError,
    UpstreamTimeout,
)


def raising(exc_type: Callable[..., httpx.HTTPError], text: str = "boom") -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc_type(text, request=request)

    return handle


# (httpx exception, expected error class, may a write have been applied?)
CASES = [
    (httpx.ConnectError, UpstreamConnectionError, False),
    (httpx.ConnectTimeout, UpstreamTimeout, False),
    (httpx.PoolTimeout, UpstreamTimeout, False),
    (httpx.ProxyError, UpstreamConnectionError, False),
    (httpx.ReadTimeout, UpstreamTimeout, True),
    (httpx.WriteTimeout, UpstreamTimeout, True),
    (httpx.ReadError, UpstreamConnectionError, True),
    (httpx.WriteError, UpstreamConnectionError, True),
    (httpx.RemoteProtocolError, UpstreamConnectionError, True),
]


@pytest.mark.parametrize(("exc_type", "error_type", "maybe_applied"), CASES)
def test_transport_failure_on_a_write(
    make_client: ClientFactory,
    exc_type: Callable[..., httpx.HTTPError],
    error_type: type[TransientError],
    maybe_applied: bool,
) -> None:
    # Given a transport that fails the way the network can
    client, _ = make_client(raising(exc_type, "Server disconnected without sending a response."))
    # When a block is changed
    with pytest.raises(error_type) as caught:
        client.change_block_status("telco", 7, 2, active=True, idempotency_key="k")
    # Then it is transient, ambiguous only if the request may have reached the upstream,
    # and the message names the operation and the cause on one line
    error = caught.value
    assert error.maybe_applied is maybe_applied
    assert error.status is None
    assert error.retry_after is None
    assert "PATCH orgs/telco/subscriptions/7/blocks/2 failed" in str(error)
    assert getattr(exc_type, "__name__", "?") in str(error)
    assert isinstance(error.__cause__, httpx.HTTPError)


@pytest.mark.parametrize(("exc_type", "error_type", "maybe_applied"), CASES)
def test_transport_failure_on_a_read_is_never_maybe_applied(
    make_client: ClientFactory,
    exc_type: Callable[..., httpx.HTTPError],
    error_type: type[TransientError],
    maybe_applied: bool,
) -> None:
    # Given a failing transport
    client, _ = make_client(raising(exc_type))
    # When blocks are listed
    with pytest.raises(error_type) as caught:
        client.list_blocks("telco", 7)
    # Then a GET is retryable but never "maybe applied"
    assert caught.value.maybe_applied is False


def test_local_protocol_error_is_permanent_and_does_not_quote_the_request(
    make_client: ClientFactory,
) -> None:
    # Given a transport refusing to send a header (h11 quotes the offending value)
    client, _ = make_client(
        raising(httpx.LocalProtocolError, "Illegal header value b'Bearer s3cr3t'")
    )
    # When a block is changed
    with pytest.raises(PermanentError) as caught:
        client.change_block_status("telco", 7, 2, active=True, idempotency_key="k")
    # Then the error is permanent and does not repeat the header value
    assert "s3cr3t" not in str(caught.value)
    assert "LocalProtocolError" in str(caught.value)


def test_read_failure_after_a_2xx_write_is_success(make_client: ClientFactory) -> None:
    # Given an upstream that answers 201 and then breaks off while sending a body
    class BrokenBody(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b"{"
            raise httpx.ReadError("connection reset")

    client, _ = make_client(lambda request: httpx.Response(201, stream=BrokenBody()))
    # When a block is changed / Then the 201 decides: the change was applied
    assert client.change_block_status("telco", 7, 2, active=True, idempotency_key="k") == 201


def test_read_failure_in_a_list_body_is_transient(make_client: ClientFactory) -> None:
    # Given an upstream that answers 200 and breaks off mid-body
    class BrokenBody(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b'{"items": ['
            raise httpx.ReadError("connection reset")

    client, _ = make_client(lambda request: httpx.Response(200, stream=BrokenBody()))
    # When blocks are listed / Then a retry may help, and nothing was applied
    with pytest.raises(UpstreamConnectionError) as caught:
        client.list_blocks("telco", 7)
    assert caught.value.maybe_applied is False


def test_undecodable_compressed_list_body_is_malformed(make_client: ClientFactory) -> None:
    # Given a 200 that claims gzip but is not
    client, _ = make_client(
        lambda request: httpx.Response(
            200, content=b"not gzip", headers={"Content-Encoding": "gzip"}
        )
    )
    # When blocks are listed / Then the body is reported as malformed
    with pytest.raises(MalformedResponseError):
        client.list_blocks("telco", 7)
