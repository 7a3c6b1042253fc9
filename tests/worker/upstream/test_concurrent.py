"""ConcurrentSender: many requests in flight from one loop thread, each bounded by its
deadline, with aiohttp's failures mapped to the upstream errors."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import pytest

from tests.worker.upstream.conftest import TIMEOUT
from tests.worker.upstream.scripted import (
    ARRIVAL_LIMIT_S,
    Reply,
    ScriptedUpstream,
    all_at_once,
    closed_port_url,
    unaccepting_url,
)
from worker.upstream import (
    UpstreamConnectionError,
    UpstreamError,
    UpstreamPermanentError,
    UpstreamTimeout,
    UpstreamTransientError,
)
from worker.upstream.concurrent import Answer, ConcurrentSender, Exchange, transport_error

BLOCK_PATH = "orgs/telco/subscriptions/7/blocks/1"
SenderFactory = Callable[..., ConcurrentSender]


@pytest.fixture
def make_sender() -> Iterator[SenderFactory]:
    made: list[ConcurrentSender] = []

    def make(base_url: str, **kwargs: Any) -> ConcurrentSender:
        sender = ConcurrentSender(
            base_url=httpx.URL(base_url),
            timeout=kwargs.pop("timeout", TIMEOUT),
            headers={"User-Agent": "sender-test"},
            **kwargs,
        )
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()


def write(body_limit: int = 1024) -> Exchange:
    headers = {"Content-Type": "application/json", "Idempotency-Key": "k-1"}
    return Exchange("PATCH", BLOCK_PATH, headers, b'{"active":true}', True, body_limit)


def read(body_limit: int = 1024) -> Exchange:
    return Exchange("GET", "orgs/telco/subscriptions/7/blocks", {}, None, False, body_limit)


def far() -> float:
    """A deadline no passing test reaches."""
    return time.monotonic() + ARRIVAL_LIMIT_S


def soon() -> float:
    """A deadline a held request does reach."""
    return time.monotonic() + 0.3


def answered(future: Future[Answer]) -> Answer:
    return future.result(timeout=ARRIVAL_LIMIT_S)


def failed(future: Future[Answer]) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        future.result(timeout=ARRIVAL_LIMIT_S)
    return caught.value


def sender_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "upstream-sender"}


def test_a_read_is_answered_with_status_headers_and_body(
    upstream: ScriptedUpstream, make_sender: SenderFactory
) -> None:
    # Given an upstream answering 200 with a header and a JSON body
    upstream.script = lambda _: Reply(200, {"X-Page": "1"}, b'{"items":[]}')
    sender = make_sender(upstream.base_url + "/")
    # When a read is submitted
    answer = answered(sender.submit(read(), timeout=TIMEOUT, deadline=far()))
    # Then the answer carries all three, and the path was joined to the base URL once
    assert (answer.status, answer.headers["x-page"], answer.body) == (200, "1", b'{"items":[]}')
    (seen,) = upstream.seen
    assert (seen.method, seen.path) == ("GET", "/v2/orgs/telco/subscriptions/7/blocks")
    assert seen.headers["user-agent"] == "sender-test"


def test_a_write_is_sent_with_its_headers_and_body(
    upstream: ScriptedUpstream, make_sender: SenderFactory
) -> None:
    # Given an upstream that accepts writes with a body of its own
    upstream.script = lambda _: Reply(201, body=b"<html>created</html>")
    sender = make_sender(upstream.base_url)
    # When a write is submitted
    answer = answered(sender.submit(write(), timeout=TIMEOUT, deadline=None))
    # Then the request carried the exchange's body and headers; the 2xx body is ignored
    assert (answer.status, answer.body) == (201, b"")
    (seen,) = upstream.seen
    assert (seen.method, seen.path, seen.body) == (
        "PATCH",
        f"/v2/{BLOCK_PATH}",
        b'{"active":true}',
    )
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["idempotency-key"] == "k-1"


@pytest.mark.parametrize("exchange", [write(body_limit=10), read(body_limit=10)])
def test_an_error_body_is_read_up_to_the_limit(
    upstream: ScriptedUpstream, make_sender: SenderFactory, exchange: Exchange
) -> None:
    # Given an upstream answering 500 with a body longer than the exchange's limit
    upstream.script = lambda _: Reply(500, body=b"0123456789" * 10)
    sender = make_sender(upstream.base_url)
    # When the exchange is submitted
    answer = answered(sender.submit(exchange, timeout=TIMEOUT, deadline=far()))
    # Then the status comes back with the body cut at the limit (no error raised here)
    assert (answer.status, answer.body) == (500, b"0123456789")


def test_a_redirect_is_answered_not_followed(
    upstream: ScriptedUpstream, make_sender: SenderFactory
) -> None:
    # Given an upstream that redirects elsewhere
    upstream.script = lambda _: Reply(307, {"Location": "/v2/elsewhere"})
    sender = make_sender(upstream.base_url)
    # When a write is submitted
    answer = answered(sender.submit(write(), timeout=TIMEOUT, deadline=far()))
    # Then the redirect is the answer and no second request was made
    assert answer.status == 307
    assert [seen.path for seen in upstream.seen] == [f"/v2/{BLOCK_PATH}"]


def test_submitted_requests_are_in_flight_together(
    upstream: ScriptedUpstream, make_sender: SenderFactory
) -> None:
    # Given an upstream that answers 201 only once four requests are open at once
    upstream.script = all_at_once(4)
    sender = make_sender(upstream.base_url, in_flight=4)
    # When four writes are submitted from this one thread
    futures = [sender.submit(write(), timeout=TIMEOUT, deadline=far()) for _ in range(4)]
    # Then all four are answered 201 (made one by one, they would get 500)
    assert [answered(f).status for f in futures] == [201] * 4


def test_requests_beyond_in_flight_wait_for_a_slot_within_their_deadline(
    upstream: ScriptedUpstream, make_sender: SenderFactory
) -> None:
    # Given a sender of one slot, taken by a request the upstream holds
    upstream.script = upstream.held()
    sender = make_sender(upstream.base_url, in_flight=1)
    first = sender.submit(write(), timeout=TIMEOUT, deadline=far())
    assert upstream.wait_for_requests(1)
    # When a second write is submitted with a short deadline
    error = failed(sender.submit(write(), timeout=TIMEOUT, deadline=soon()))
    # Then it timed out waiting for the slot: never sent, so surely not applied
    assert isinstance(error, UpstreamTimeout)
    assert error.maybe_applied is False
    assert "before sending" in str(error)
    # ...and once the first is answered, it alone reached the upstream
    upstream.release.set()
    assert answered(first).status == 201
    assert len(upstream.seen) == 1


@pytest.mark.parametrize("first_reply", [None, Reply(503)], ids=["hung-up", "answered-503"])
def test_a_slot_is_given_back_whatever_the_outcome(
    upstream: ScriptedUpstream, make_sender: SenderFactory, first_reply: Reply | None
) -> None:
    # Given a sender of one slot whose first request fails or is refused
    upstream.script = lambda seen: first_reply if len(upstream.seen) == 1 else Reply(201)
    sender = make_sender(upstream.base_url, in_flight=1)
    first = sender.submit(write(), timeout=TIMEOUT, deadline=far())
    first.exception(timeout=ARRIVAL_LIMIT_S)
    # When a second write is submitted
    second = sender.submit(write(), timeout=TIMEOUT, deadline=far())
    # Then it gets the slot and its answer (a leaked slot would make it time out)
    assert answered(second).status == 201


def test_a_slot_is_given_back_after_a_deadline_in_flight(
    upstream: ScriptedUpstream, make_sender: SenderFactory
) -> None:
    # Given a sender of one slot whose first request is held past its deadline
    upstream.script = upstream.held()
    sender = make_sender(upstream.base_url, in_flight=1)
    assert isinstance(
        failed(sender.submit(write(), timeout=TIMEOUT, deadline=soon())), UpstreamTimeout
    )
    # When the upstream answers again and a second write is submitted
    upstream.script = lambda _: Reply(201)
    second = sender.submit(write(), timeout=TIMEOUT, deadline=far())
    # Then it gets the slot and its answer
    assert answered(second).status == 201


@pytest.mark.parametrize(("exchange", "maybe_applied"), [(write(), True), (read(), False)])
def test_a_deadline_passing_in_flight_is_a_timeout(
    upstream: ScriptedUpstream,
    make_sender: SenderFactory,
    exchange: Exchange,
    maybe_applied: bool,
) -> None:
    # Given an upstream that holds every request
    upstream.script = upstream.held()
    sender = make_sender(upstream.base_url)
    # When an exchange is submitted with a short deadline
    error = failed(sender.submit(exchange, timeout=TIMEOUT, deadline=soon()))
    # Then it is a timeout, maybe applied only if it is a write (it was sent)
    assert upstream.wait_for_requests(1)
    assert isinstance(error, UpstreamTimeout)
    assert error.maybe_applied is maybe_applied
    assert "deadline passed" in str(error)


def test_a_deadline_already_passed_sends_nothing(
    upstream: ScriptedUpstream, make_sender: SenderFactory
) -> None:
    # Given a sender whose loop is running
    sender = make_sender(upstream.base_url)
    assert answered(sender.submit(write(), timeout=TIMEOUT, deadline=far())).status == 201
    # When a write is submitted with a deadline in the past
    error = failed(sender.submit(write(), timeout=TIMEOUT, deadline=time.monotonic() - 1))
    # Then it is a timeout that surely was not applied
    assert isinstance(error, UpstreamTimeout)
    assert error.maybe_applied is False
    assert "before sending" in str(error)
    # ...and indeed only the first write and a later one reached the upstream
    assert answered(sender.submit(write(), timeout=TIMEOUT, deadline=far())).status == 201
    assert len(upstream.seen) == 2


@pytest.mark.parametrize(("exchange", "maybe_applied"), [(write(), True), (read(), False)])
def test_a_read_timeout_is_a_timeout_maybe_applied_for_writes(
    upstream: ScriptedUpstream,
    make_sender: SenderFactory,
    exchange: Exchange,
    maybe_applied: bool,
) -> None:
    # Given an upstream that holds requests and a read timeout shorter than the deadline
    upstream.script = upstream.held()
    short_read = httpx.Timeout(connect=3.0, read=0.2, write=3.0, pool=3.0)
    sender = make_sender(upstream.base_url)
    # When an exchange is submitted
    error = failed(sender.submit(exchange, timeout=short_read, deadline=far()))
    # Then the read timeout is a timeout; a write was sent, so it may have been applied
    assert isinstance(error, UpstreamTimeout)
    assert error.maybe_applied is maybe_applied
    assert "deadline" not in str(error)


def test_a_refused_connection_was_surely_not_applied(make_sender: SenderFactory) -> None:
    # Given a base URL on which nothing listens
    sender = make_sender(closed_port_url())
    # When a write is submitted
    error = failed(sender.submit(write(), timeout=TIMEOUT, deadline=far()))
    # Then it is a connection error that was never sent
    assert isinstance(error, UpstreamConnectionError)
    assert error.maybe_applied is False
    assert f"PATCH {BLOCK_PATH} failed" in str(error)


def test_a_connect_timeout_was_surely_not_applied(make_sender: SenderFactory) -> None:
    # Given an upstream that does not accept connections, and a short connect timeout
    short_connect = httpx.Timeout(connect=0.2, read=3.0, write=3.0, pool=3.0)
    with unaccepting_url() as url:
        sender = make_sender(url, timeout=short_connect)
        # When a write is submitted
        error = failed(sender.submit(write(), timeout=short_connect, deadline=far()))
    # Then it is a connect timeout (not the deadline's), never sent so never applied
    assert isinstance(error, UpstreamTimeout)
    assert error.maybe_applied is False
    assert "ConnectionTimeoutError" in str(error)


@pytest.mark.parametrize(("exchange", "maybe_applied"), [(write(), True), (read(), False)])
def test_a_hang_up_without_an_answer_is_maybe_applied_for_writes(
    upstream: ScriptedUpstream,
    make_sender: SenderFactory,
    exchange: Exchange,
    maybe_applied: bool,
) -> None:
    # Given an upstream that reads the request and closes the connection unanswered
    upstream.script = lambda _: None
    sender = make_sender(upstream.base_url)
    # When an exchange is submitted
    error = failed(sender.submit(exchange, timeout=TIMEOUT, deadline=far()))
    # Then it is a connection error; a write may have been applied
    assert isinstance(error, UpstreamConnectionError)
    assert error.maybe_applied is maybe_applied


CONNECTION_KEY = SimpleNamespace(host="upstream.test", port=443, ssl=True)


@pytest.mark.parametrize(
    ("exc", "kind", "sent"),
    [
        (aiohttp.ConnectionTimeoutError("connect timed out"), UpstreamTimeout, False),
        (aiohttp.SocketTimeoutError("read timed out"), UpstreamTimeout, True),
        (aiohttp.ServerTimeoutError("timed out"), UpstreamTimeout, True),
        (
            aiohttp.ClientConnectorError(CONNECTION_KEY, OSError(111, "refused")),  # type: ignore[arg-type]
            UpstreamConnectionError,
            False,
        ),
        (aiohttp.ServerDisconnectedError(), UpstreamConnectionError, True),
        (aiohttp.ClientPayloadError("payload not completed"), UpstreamConnectionError, True),
        (aiohttp.ClientOSError(104, "reset by peer"), UpstreamConnectionError, True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
@pytest.mark.parametrize("exchange", [write(), read()], ids=["write", "read"])
def test_transport_errors_map_to_transient_errors(
    exc: aiohttp.ClientError, kind: type[UpstreamTransientError], sent: bool, exchange: Exchange
) -> None:
    # Given an aiohttp error met during an exchange
    # When it is mapped
    error = transport_error(exc, exchange)
    # Then it is the transient error of its kind, maybe applied only for a sent write
    assert type(error) is kind
    assert isinstance(error, UpstreamTransientError)
    assert error.maybe_applied is (sent and exchange.write)
    assert str(error).startswith(f"{exchange.operation} failed: {type(exc).__name__}")


def test_an_invalid_url_is_permanent_and_not_quoted() -> None:
    # Given aiohttp refusing a URL (it could carry anything)
    exc = aiohttp.InvalidURL("http://user:secret@upstream.test/v2")
    # When it is mapped
    error = transport_error(exc, write())
    # Then it is permanent and its message does not repeat the URL
    assert isinstance(error, UpstreamPermanentError)
    assert "secret" not in str(error)


def test_a_sender_needs_a_slot() -> None:
    # Given / When a sender is made with no room for a request / Then it is refused
    with pytest.raises(ValueError, match="at least one"):
        ConcurrentSender(
            base_url=httpx.URL("http://u.test"), timeout=TIMEOUT, headers={}, in_flight=0
        )


def test_closing_stops_the_loop_thread(
    upstream: ScriptedUpstream, make_sender: SenderFactory
) -> None:
    # Given a sender that has made a request (so its loop thread runs)
    before = sender_threads()
    sender = make_sender(upstream.base_url)
    assert answered(sender.submit(write(), timeout=TIMEOUT, deadline=far())).status == 201
    (thread,) = sender_threads() - before
    # When it is closed
    sender.close()
    # Then its loop thread has ended
    assert not thread.is_alive()


def test_a_forked_child_starts_a_loop_of_its_own(
    upstream: ScriptedUpstream, make_sender: SenderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sender whose loop thread runs in this process
    before = sender_threads()
    sender = make_sender(upstream.base_url)
    assert answered(sender.submit(write(), timeout=TIMEOUT, deadline=far())).status == 201
    (parents,) = sender_threads() - before
    parents_loop = sender._loop  # a real child would never see it: closed by hand below
    # When it is used from a process of another pid (a forked child has no such thread)
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    assert answered(sender.submit(write(), timeout=TIMEOUT, deadline=far())).status == 201
    # Then the request went through a loop thread of its own, which its close ends
    (childs,) = sender_threads() - before - {parents}
    sender.close()
    assert not childs.is_alive()
    assert parents.is_alive()
    monkeypatch.undo()
    assert parents_loop is not None
    parents_loop.close()
    assert not parents.is_alive()


def test_closing_in_a_forked_child_leaves_the_parents_loop_alone(
    upstream: ScriptedUpstream, make_sender: SenderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sender whose loop thread runs in this process
    before = sender_threads()
    sender = make_sender(upstream.base_url)
    assert answered(sender.submit(write(), timeout=TIMEOUT, deadline=far())).status == 201
    (parents,) = sender_threads() - before
    parents_loop = sender._loop
    # When it is closed from a process of another pid
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    sender.close()
    # Then the parent's loop was not touched (in a real child it does not run at all)
    assert parents.is_alive()
    monkeypatch.undo()
    assert parents_loop is not None
    parents_loop.close()
