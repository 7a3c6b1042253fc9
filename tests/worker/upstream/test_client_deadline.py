"""A write given a deadline is over by then, whatever the server or the name lookup does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tests.worker.upstream.conftest import ClientFactory, answer
from worker.upstream import (
    MasStackClient,
    ServiceAccount,
    ServiceAccountTokenProvider,
    StaticToken,
    UpstreamTimeout,
)
from worker.upstream.deadline import deadline_transport

#: Per-operation timeouts far longer than the deadlines used here.
LONG = httpx.Timeout(10.0)
LIMITS = httpx.Limits(max_connections=2)


@pytest.fixture
def trickling_server() -> Iterator[int]:
    """A server that answers every request with a status line, then one header byte
    every 50 ms for up to 5 s: no single read ever waits long."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(5.0)
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 201 Created\r\nX-Slow: ")
            for _ in range(100):
                if stop.wait(0.05):  # the trickle's pace, not a synchronisation
                    return
                try:
                    conn.sendall(b"a")
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    thread.join(timeout=5)


def client_on(base_url: str, transport: httpx.BaseTransport) -> MasStackClient:
    return MasStackClient(
        base_url=base_url,
        auth=StaticToken(SecretStr("tok")),
        timeout=LONG,
        auth_roles=None,
        transport=transport,
    )


def test_a_trickled_answer_cannot_outlast_the_deadline(trickling_server: int) -> None:
    # Given a server that trickles its answer, and read timeouts of 10 s
    client = client_on(f"http://127.0.0.1:{trickling_server}/v2", deadline_transport(limits=LIMITS))
    started = time.monotonic()
    # When a write is sent with a deadline 0.3 s away
    with pytest.raises(UpstreamTimeout) as caught:
        client.change_block_status(
            "telco", 7, 1, active=True, idempotency_key="k", deadline=started + 0.3
        )
    # Then it gives up at the deadline (the request went out: it may have been applied)
    assert time.monotonic() - started < 3.0
    assert caught.value.maybe_applied is True
    client.close()


def test_a_hanging_name_lookup_cannot_outlast_the_deadline() -> None:
    # Given a name lookup that hangs
    released = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        released.wait(10)
        return ["127.0.0.1"]

    client = client_on(
        "http://upstream.example:8080/v2", deadline_transport(limits=LIMITS, resolve=hanging)
    )
    started = time.monotonic()
    # When a write is sent with a deadline 0.2 s away
    with pytest.raises(UpstreamTimeout) as caught:
        client.change_block_status(
            "telco", 7, 1, active=True, idempotency_key="k", deadline=started + 0.2
        )
    # Then it gives up at the deadline, and nothing can have been sent
    assert time.monotonic() - started < 3.0
    assert caught.value.maybe_applied is False
    released.set()
    client.close()


def test_a_slow_token_fetch_counts_against_the_deadline(
    make_client: ClientFactory, account_file: Path
) -> None:
    # Given a token endpoint that takes 0.3 s to answer
    def slow_token(request: httpx.Request) -> httpx.Response:
        time.sleep(0.3)  # the endpoint's slowness under test
        return httpx.Response(200, json={"access_token": "tok-1", "expires_in": 3600})

    provider = ServiceAccountTokenProvider(
        account=ServiceAccount.from_file(account_file),
        token_url="https://auth.test/token",
        http=httpx.Client(transport=httpx.MockTransport(slow_token)),
    )
    client, recorder = make_client(answer(201), auth=provider)
    # When a write is sent with a deadline 0.1 s away
    with pytest.raises(UpstreamTimeout) as caught:
        client.change_block_status(
            "telco", 7, 1, active=True, idempotency_key="k", deadline=time.monotonic() + 0.1
        )
    # Then the write never left: the token took the whole budget
    assert recorder.requests == []
    assert caught.value.maybe_applied is False


def test_a_write_without_a_deadline_still_works(make_client: ClientFactory) -> None:
    # Given an upstream that answers 201
    client, _ = make_client(answer(201))
    # When a write is sent with a deadline well ahead, and one without any
    statuses = [
        client.change_block_status(
            "telco", 7, 1, active=True, idempotency_key="k", deadline=time.monotonic() + 30
        ),
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="k"),
    ]
    # Then both are applied
    assert statuses == [201, 201]
