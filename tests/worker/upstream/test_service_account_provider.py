"""The service-account token provider: assertion, caching, refresh and concurrency."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import httpx
import jwt
import pytest

from tests.worker.upstream.conftest import RsaKey
from worker.upstream import (
    AuthenticationError,
    ServiceAccount,
    ServiceAccountTokenProvider,
    TransientError,
    UpstreamConnectionError,
    UpstreamUnavailable,
)

TOKEN_URL = "https://auth.test/oauth/token"
T0 = 1_700_000_000.0


class FakeClock:
    """A settable clock; ``on_call`` lets a test observe who asks for the time."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.on_call: Callable[[], None] = lambda: None

    def __call__(self) -> float:
        self.on_call()
        return self.now


class TokenEndpoint:
    """A mock token endpoint that counts calls and issues tok-1, tok-2..."""

    def __init__(self, expires_in: float | None = 3600, status: int = 200) -> None:
        self.expires_in = expires_in
        self.status = status
        self.forms: list[dict[str, list[str]]] = []
        self.before_answer: Callable[[], None] = lambda: None
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.forms)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.forms.append(parse_qs(request.content.decode()))
            number = len(self.forms)
        self.before_answer()
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "invalid_grant"})
        body: dict[str, object] = {"access_token": f"tok-{number}", "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)


@pytest.fixture
def account(rsa_key: RsaKey) -> ServiceAccount:
    return ServiceAccount(
        private_key_id="kid-42",
        private_key=rsa_key.private_pem,
        client_email="worker@telco.example",
    )


def provider_for(
    endpoint: TokenEndpoint,
    account: ServiceAccount,
    clock: FakeClock,
    **kwargs: object,
) -> ServiceAccountTokenProvider:
    http = httpx.Client(transport=httpx.MockTransport(endpoint))
    return ServiceAccountTokenProvider(
        account=account,
        token_url=TOKEN_URL,
        http=http,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


def test_assertion_is_a_signed_jwt_bearer_grant(account: ServiceAccount, rsa_key: RsaKey) -> None:
    # Given a provider with an audience and scopes
    endpoint = TokenEndpoint()
    provider = provider_for(
        endpoint, account, FakeClock(), audience="https://customers.test", scopes="blocks services"
    )
    # When it fetches a token
    assert provider.token() == "tok-1"
    # Then it posted a JWT-bearer grant whose assertion verifies with the public key
    (form,) = endpoint.forms
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert form["scope"] == ["blocks services"]
    (assertion,) = form["assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "kid-42"}
    claims = jwt.decode(
        assertion,
        rsa_key.public_key,
        algorithms=["RS256"],
        audience="https://customers.test",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iss"] == claims["sub"] == "worker@telco.example"
    assert claims["iat"] == int(T0)
    assert claims["exp"] == int(T0) + 300
    assert claims["scope"] == "blocks services"
    assert uuid.UUID(claims["jti"]).version == 4


def test_assertion_defaults_audience_to_token_url_and_omits_scope(
    account: ServiceAccount, rsa_key: RsaKey
) -> None:
    # Given a provider without audience or scopes
    endpoint = TokenEndpoint()
    provider = provider_for(endpoint, account, FakeClock(), assertion_ttl_s=60)
    # When it fetches a token
    provider.token()
    # Then the audience is the token URL and no scope is sent or claimed
    (form,) = endpoint.forms
    assert "scope" not in form
    claims = jwt.decode(
        form["assertion"][0],
        rsa_key.public_key,
        algorithms=["RS256"],
        audience=TOKEN_URL,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert "scope" not in claims
    assert claims["exp"] - claims["iat"] == 60


def test_token_is_cached_until_the_refresh_margin(account: ServiceAccount) -> None:
    # Given a token valid for one hour and a 60 s margin
    endpoint = TokenEndpoint(expires_in=3600)
    clock = FakeClock()
    provider = provider_for(endpoint, account, clock)
    assert provider.token() == "tok-1"
    # When time passes up to just before expiry minus the margin
    clock.now = T0 + 3539
    # Then the cached token is reused
    assert provider.token() == "tok-1"
    assert endpoint.calls == 1
    # When the margin is reached / Then exactly one more fetch happens
    clock.now = T0 + 3540
    assert provider.token() == "tok-2"
    assert provider.token() == "tok-2"
    assert endpoint.calls == 2


def test_missing_expires_in_means_one_hour(account: ServiceAccount) -> None:
    # Given a token endpoint that sends no expires_in
    endpoint = TokenEndpoint(expires_in=None)
    clock = FakeClock()
    provider = provider_for(endpoint, account, clock)
    provider.token()
    # When 59 minutes pass / Then the token is still used; at the margin it is renewed
    clock.now = T0 + 3539
    provider.token()
    assert endpoint.calls == 1
    clock.now = T0 + 3540
    provider.token()
    assert endpoint.calls == 2


def test_short_lived_tokens_are_not_refetched_on_every_call(account: ServiceAccount) -> None:
    # Given tokens that live 30 s, shorter than the 60 s margin
    endpoint = TokenEndpoint(expires_in=30)
    clock = FakeClock()
    provider = provider_for(endpoint, account, clock)
    # When the token is asked for twice within its first half-life
    provider.token()
    clock.now = T0 + 14
    provider.token()
    # Then it was fetched once (the margin shrinks to half the lifetime)
    assert endpoint.calls == 1


def test_invalidate_with_the_current_token_forces_a_refresh(account: ServiceAccount) -> None:
    # Given a cached token
    endpoint = TokenEndpoint()
    provider = provider_for(endpoint, account, FakeClock())
    assert provider.token() == "tok-1"
    # When the upstream refused it
    provider.invalidate("tok-1")
    # Then the next call fetches a new one
    assert provider.token() == "tok-2"
    assert endpoint.calls == 2


def test_invalidate_with_a_stale_token_does_not_refresh(account: ServiceAccount) -> None:
    # Given tok-2 is current after tok-1 was refreshed
    endpoint = TokenEndpoint()
    provider = provider_for(endpoint, account, FakeClock())
    provider.token()
    provider.invalidate("tok-1")
    assert provider.token() == "tok-2"
    # When a late request reports that tok-1 failed
    provider.invalidate("tok-1")
    # Then tok-2 stays and no request goes out
    assert provider.token() == "tok-2"
    assert endpoint.calls == 2


def gate_answer_on_all_threads_checking(
    endpoint: TokenEndpoint, clock: FakeClock, threads: int
) -> threading.Event:
    """Hold the token endpoint's answer until ``threads`` distinct threads read the clock.

    token() reads the clock before it takes the lock, so once every thread has read
    it, all of them found no usable token and are racing for the fetch: a provider
    without its lock and double check would send one request per thread.
    """
    readers: set[int] = set()
    lock = threading.Lock()
    all_checked = threading.Event()

    def note_reader() -> None:
        with lock:
            readers.add(threading.get_ident())
            if len(readers) >= threads:
                all_checked.set()

    clock.on_call = note_reader

    def hold_answer() -> None:
        all_checked.wait(timeout=10)

    endpoint.before_answer = hold_answer
    return all_checked


def test_64_threads_needing_a_token_cause_one_fetch(account: ServiceAccount) -> None:
    # Given a token endpoint that answers only once all 64 threads found no token
    threads = 64
    endpoint = TokenEndpoint()
    clock = FakeClock()
    all_checked = gate_answer_on_all_threads_checking(endpoint, clock, threads)
    provider = provider_for(endpoint, account, clock)
    barrier = threading.Barrier(threads)

    def get_token() -> str:
        barrier.wait(timeout=10)
        return provider.token()

    # When 64 threads ask for a token at the same moment
    with ThreadPoolExecutor(max_workers=threads) as pool:
        tokens = list(pool.map(lambda _: get_token(), range(threads)))
    # Then exactly one request reached the token endpoint and all got its token
    assert all_checked.is_set()
    assert endpoint.calls == 1
    assert set(tokens) == {"tok-1"}
    # When the token expires (injected clock) / Then exactly one more fetch happens
    clock.on_call = lambda: None
    endpoint.before_answer = lambda: None
    clock.now = T0 + 3600
    with ThreadPoolExecutor(max_workers=threads) as pool:
        tokens = list(pool.map(lambda _: provider.token(), range(threads)))
    assert endpoint.calls == 2
    assert set(tokens) == {"tok-2"}


def test_64_threads_invalidating_the_same_token_cause_one_refresh(
    account: ServiceAccount,
) -> None:
    # Given a cached tok-1 that 64 in-flight requests are about to report as refused
    threads = 64
    endpoint = TokenEndpoint()
    provider = provider_for(endpoint, account, FakeClock())
    assert provider.token() == "tok-1"
    barrier = threading.Barrier(threads)

    def after_401() -> str:
        barrier.wait(timeout=10)
        provider.invalidate("tok-1")
        return provider.token()

    # When they all invalidate tok-1 and ask for a fresh token
    with ThreadPoolExecutor(max_workers=threads) as pool:
        tokens = list(pool.map(lambda _: after_401(), range(threads)))
    # Then one refresh happened and everyone got its token
    assert endpoint.calls == 2
    assert set(tokens) == {"tok-2"}


def test_waiting_threads_share_a_failed_fetch(account: ServiceAccount) -> None:
    # Given a token endpoint that is down and answers once all threads are waiting
    threads = 16
    endpoint = TokenEndpoint(status=503)
    clock = FakeClock()
    all_checked = gate_answer_on_all_threads_checking(endpoint, clock, threads)
    provider = provider_for(endpoint, account, clock)
    barrier = threading.Barrier(threads)

    def get_token() -> BaseException | None:
        barrier.wait(timeout=10)
        try:
            provider.token()
        except TransientError as exc:
            return exc
        return None

    # When they all need a token at once
    with ThreadPoolExecutor(max_workers=threads) as pool:
        errors = list(pool.map(lambda _: get_token(), range(threads)))
    # Then one request went out and every thread got its own copy of the same error
    assert all_checked.is_set()
    assert endpoint.calls == 1
    assert all(isinstance(e, UpstreamUnavailable) and e.status == 503 for e in errors)
    assert len({id(e) for e in errors}) == threads
    # When a later call comes / Then it tries again rather than replaying the old error
    endpoint.status = 200
    assert provider.token() == "tok-2"


@pytest.mark.parametrize("status", [400, 401, 403])
def test_token_endpoint_refusal_is_an_authentication_error(
    account: ServiceAccount, status: int
) -> None:
    # Given a token endpoint that refuses the assertion
    provider = provider_for(TokenEndpoint(status=status), account, FakeClock())
    # When a token is needed
    with pytest.raises(AuthenticationError) as caught:
        provider.token()
    # Then the error is permanent and names the OAuth error code
    assert caught.value.status == status
    assert "invalid_grant" in str(caught.value)
    assert TOKEN_URL in str(caught.value)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_token_endpoint_trouble_is_transient(account: ServiceAccount, status: int) -> None:
    provider = provider_for(TokenEndpoint(status=status), account, FakeClock())
    with pytest.raises(UpstreamUnavailable) as caught:
        provider.token()
    assert caught.value.status == status
    assert caught.value.maybe_applied is False


def test_token_endpoint_connection_error_is_transient(account: ServiceAccount) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    provider = ServiceAccountTokenProvider(account=account, token_url=TOKEN_URL, http=http)
    with pytest.raises(UpstreamConnectionError) as caught:
        provider.token()
    assert caught.value.maybe_applied is False


@pytest.mark.parametrize(
    "body",
    [
        b"<html>login</html>",
        b'{"token": "x"}',
        b'{"access_token": ""}',
        b'{"access_token": "has space"}',
        b'{"access_token": 12}',
        b"[]",
    ],
)
def test_unusable_token_answer_is_an_authentication_error(
    account: ServiceAccount, body: bytes
) -> None:
    # Given a token endpoint answering 200 without a usable token
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body)))
    provider = ServiceAccountTokenProvider(account=account, token_url=TOKEN_URL, http=http)
    # When a token is needed / Then it fails permanently with a one-line error
    with pytest.raises(AuthenticationError) as caught:
        provider.token()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("expires_in", ["600", 600.5, "soon", -5, 0])
def test_odd_expires_in_values(account: ServiceAccount, expires_in: object) -> None:
    # Given a token endpoint sending an odd expires_in
    answer = {"access_token": "abc", "expires_in": expires_in}
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=answer)))
    clock = FakeClock()
    provider = ServiceAccountTokenProvider(
        account=account, token_url=TOKEN_URL, http=http, clock=clock
    )
    # When a token is fetched / Then it is usable (numbers honoured, junk means one hour)
    assert provider.token() == "abc"
