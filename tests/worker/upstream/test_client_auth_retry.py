"""A 401 refreshes the token once and repeats the request; nothing else is retried."""

from __future__ import annotations

import threading
from urllib.parse import parse_qs

import httpx
import pytest

from tests.worker.upstream.conftest import ClientFactory, Handler, RsaKey, answer, new_client
from worker.upstream import (
    AuthenticationError,
    NoAuth,
    ServiceAccount,
    ServiceAccountTokenProvider,
    TransientError,
)


class RotatingTokens:
    """A TokenProvider handing out tok-1, tok-2... and recording invalidations."""

    def __init__(self) -> None:
        self.generation = 1
        self.invalidated: list[str] = []
        self._lock = threading.Lock()

    def token(self) -> str:
        return f"tok-{self.generation}"

    def invalidate(self, token: str) -> None:
        with self._lock:
            self.invalidated.append(token)
            if token == self.token():
                self.generation += 1


def refuse_token(*refused: str, then: int = 201) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return httpx.Response(401 if bearer in refused else then)

    return handle


def test_401_then_success_after_one_refresh(make_client: ClientFactory) -> None:
    # Given an upstream that refuses tok-1 and accepts tok-2
    tokens = RotatingTokens()
    client, recorder = make_client(refuse_token("tok-1"), auth=tokens)
    # When a block is changed
    status = client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    # Then the failed token was invalidated and the same request repeated with the new one
    assert status == 201
    assert tokens.invalidated == ["tok-1"]
    first, second = recorder.requests
    assert first.headers["Authorization"] == "Bearer tok-1"
    assert second.headers["Authorization"] == "Bearer tok-2"
    assert second.headers["Idempotency-Key"] == first.headers["Idempotency-Key"] == "k"
    assert second.headers["X-Request-ID"] == first.headers["X-Request-ID"]
    assert second.content == first.content
    assert second.url == first.url


def test_401_twice_is_an_authentication_error(make_client: ClientFactory) -> None:
    # Given an upstream that refuses every token
    tokens = RotatingTokens()
    client, recorder = make_client(
        refuse_token("tok-1", "tok-2", "tok-3"),
        auth=tokens,
    )
    # When a block is changed
    with pytest.raises(AuthenticationError) as caught:
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    # Then exactly two requests went out (one refresh) and the error says so
    assert len(recorder.requests) == 2
    assert tokens.invalidated == ["tok-1"]
    assert caught.value.status == 401
    assert "after one token refresh" in str(caught.value)


def test_401_on_a_read_is_also_refreshed(make_client: ClientFactory) -> None:
    # Given an upstream that refuses tok-1 on a list
    tokens = RotatingTokens()

    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer tok-1":
            return httpx.Response(401)
        return httpx.Response(200, json={"items": []})

    client, recorder = make_client(handle, auth=tokens)
    # When blocks are listed / Then the second attempt answers
    assert client.list_blocks("telco", 7).items == ()
    assert len(recorder.requests) == 2


def test_401_with_a_static_token_is_not_repeated(make_client: ClientFactory) -> None:
    # Given the default static token, which a refresh cannot change
    client, recorder = make_client(answer(401))
    # When a block is changed
    with pytest.raises(AuthenticationError) as caught:
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    # Then the same request is not sent again with the same token
    assert len(recorder.requests) == 1
    assert "cannot be refreshed" in str(caught.value)


def test_401_without_a_token_says_none_is_configured(make_client: ClientFactory) -> None:
    # Given a client that sends no token
    client, recorder = make_client(answer(401), auth=NoAuth())
    # When a block is changed / Then it fails once, pointing at the missing token
    with pytest.raises(AuthenticationError) as caught:
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    assert len(recorder.requests) == 1
    assert "no bearer token is configured" in str(caught.value)


def test_service_account_refresh_end_to_end(rsa_key: RsaKey) -> None:
    # Given one mock server that issues tokens and accepts only the newest one
    issued: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            form = parse_qs(request.content.decode())
            assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
            issued.append(f"access-{len(issued) + 1}")
            return httpx.Response(200, json={"access_token": issued[-1], "expires_in": 3600})
        bearer = request.headers["Authorization"].removeprefix("Bearer ")
        return httpx.Response(201 if bearer == issued[-1] and len(issued) > 1 else 401)

    transport = httpx.MockTransport(handle)
    account = ServiceAccount(
        private_key_id="kid", private_key=rsa_key.private_pem, client_email="w@x.example"
    )
    with httpx.Client(transport=transport) as http:
        provider = ServiceAccountTokenProvider(
            account=account, token_url="https://auth.test/oauth/token", http=http
        )
        client = new_client(base_url="https://api.test/v2", auth=provider, transport=transport)
        # When a write meets a 401 for the first token
        status = client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    # Then the provider fetched exactly one fresh token and the write succeeded
    assert status == 201
    assert issued == ["access-1", "access-2"]


def test_token_endpoint_outage_during_refresh_is_transient(rsa_key: RsaKey) -> None:
    # Given a token endpoint that works once and then is down, and an API that says 401
    calls = {"token": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            calls["token"] += 1
            if calls["token"] > 1:
                return httpx.Response(503)
            return httpx.Response(200, json={"access_token": "a1"})
        return httpx.Response(401)

    transport = httpx.MockTransport(handle)
    account = ServiceAccount(
        private_key_id="kid", private_key=rsa_key.private_pem, client_email="w@x.example"
    )
    with httpx.Client(transport=transport) as http:
        provider = ServiceAccountTokenProvider(
            account=account, token_url="https://auth.test/oauth/token", http=http
        )
        client = new_client(base_url="https://api.test/v2", auth=provider, transport=transport)
        # When a write needs a refresh / Then the outage is transient and nothing applied
        with pytest.raises(TransientError) as caught:
            client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    assert caught.value.maybe_applied is False
    assert caught.value.status == 503
