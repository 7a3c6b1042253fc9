"""Secrets never show in repr/str of any object, in logs, or in error messages."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tests.worker.upstream.conftest import RsaKey, new_client
from worker.upstream import (
    AuthenticationError,
    ConfigurationError,
    ServiceAccount,
    ServiceAccountTokenProvider,
    StaticToken,
    UpstreamError,
)

ACCESS_TOKEN = "eyJhbGciOiJIUzI1NiJ9.access-token-secret.c2ln"
STATIC = "static-token-secret-xyz"


def key_fragments(rsa_key: RsaKey) -> list[str]:
    """Pieces of the private key that must never appear anywhere."""
    body = rsa_key.private_pem.splitlines()[1:-1]
    return [body[0], body[len(body) // 2], body[-1]]


def assert_clean(text: str, rsa_key: RsaKey) -> None:
    for secret in [ACCESS_TOKEN, STATIC, *key_fragments(rsa_key)]:
        assert secret not in text


def test_reprs_hide_every_secret(rsa_key: RsaKey, account_file: Path) -> None:
    # Given every object that holds a secret, with a token already fetched
    account = ServiceAccount.from_file(account_file)
    token_answer = {"access_token": ACCESS_TOKEN, "expires_in": 3600}
    http = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=token_answer))
    )
    provider = ServiceAccountTokenProvider(
        account=account, token_url="https://auth.test/t", http=http
    )
    assert provider.token() == ACCESS_TOKEN
    static = StaticToken(SecretStr(STATIC))
    client = new_client(base_url="https://api.test/v2", auth=provider)
    # When they are shown / Then no secret appears
    for thing in (account, provider, static, client, provider._cached):
        assert_clean(repr(thing), rsa_key)
        assert_clean(str(thing), rsa_key)
    assert_clean(repr(account.model_dump()), rsa_key)
    assert_clean(account.model_dump_json(), rsa_key)
    client.close()


def test_auth_failures_and_logs_hide_every_secret(
    rsa_key: RsaKey, account_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a token endpoint that issues a token, then refuses with a description
    # echoing the assertion, and an API that refuses every token
    caplog.set_level(logging.DEBUG)
    state = {"token_calls": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            state["token_calls"] += 1
            if state["token_calls"] == 1:
                return httpx.Response(200, json={"access_token": ACCESS_TOKEN})
            echo = request.content.decode()
            return httpx.Response(400, json={"error": "invalid_grant", "error_description": echo})
        return httpx.Response(401, json={"message": "bad token"})

    transport = httpx.MockTransport(handle)
    provider = ServiceAccountTokenProvider(
        account=ServiceAccount.from_file(account_file),
        token_url="https://auth.test/token",
        http=httpx.Client(transport=transport),
    )
    client = new_client(base_url="https://api.test/v2", auth=provider, transport=transport)
    # When a write fails authentication after the refresh was refused
    with pytest.raises(AuthenticationError) as caught:
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    # Then neither the error, its cause chain, nor any log line holds a secret or the assertion
    texts = [str(caught.value), repr(caught.value), caplog.text]
    cause = caught.value.__cause__
    while cause is not None:
        texts.append(str(cause))
        cause = cause.__cause__
    for text in texts:
        assert_clean(text, rsa_key)
        assert "assertion=" not in text
    assert "invalid_grant" in str(caught.value)


def test_static_token_with_whitespace_is_refused_without_echo() -> None:
    # Given a static token with a trailing newline (as read from a file)
    # When a provider is built / Then it is refused without quoting the token
    with pytest.raises(ConfigurationError) as caught:
        StaticToken(SecretStr(STATIC + "\n"))
    assert STATIC not in str(caught.value)


def test_request_failures_do_not_quote_the_token(caplog: pytest.LogCaptureFixture) -> None:
    # Given a transport that fails and echoes the Authorization header in its text
    caplog.set_level(logging.DEBUG)

    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"bad header {request.headers['Authorization']}")

    client = new_client(
        base_url="https://api.test/v2",
        auth=StaticToken(SecretStr(STATIC)),
        transport=httpx.MockTransport(handle),
    )
    # When a write fails
    with pytest.raises(UpstreamError) as caught:
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    # Then the error text and the logs do not hold the token
    assert STATIC not in str(caught.value)
    assert STATIC not in caplog.text
