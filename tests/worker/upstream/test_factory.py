"""Building clients and token providers from Settings."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from subswitch.settings import Settings
from worker.upstream import (
    ConfigurationError,
    MasStackClient,
    NoAuth,
    ServiceAccountTokenProvider,
    StaticToken,
    from_settings,
    token_provider_from_settings,
)


@pytest.fixture
def http() -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))


def settings(**values: object) -> Settings:
    # Explicit values only: the test must not depend on SUBSWITCH_* in the environment.
    base: dict[str, object] = {
        "upstream_url": "http://127.0.0.1:8080/v2",
        "upstream_token": None,
        "service_account_file": None,
        "token_url": None,
        "auth_roles": "API_KEY",
    }
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def test_nothing_configured_means_no_auth(http: httpx.Client) -> None:
    assert isinstance(token_provider_from_settings(settings(), http=http), NoAuth)


def test_static_token(http: httpx.Client) -> None:
    provider = token_provider_from_settings(settings(upstream_token=SecretStr("tok")), http=http)
    assert isinstance(provider, StaticToken)
    assert provider.token() == "tok"


def test_service_account_wins_over_static_token(http: httpx.Client, account_file: Path) -> None:
    # Given both a service account and a static token
    provider = token_provider_from_settings(
        settings(
            service_account_file=account_file,
            token_url="https://auth.test/token",
            upstream_token=SecretStr("tok"),
        ),
        http=http,
    )
    # Then the service account is used
    assert isinstance(provider, ServiceAccountTokenProvider)


def test_service_account_without_token_url_is_refused(
    http: httpx.Client, account_file: Path
) -> None:
    with pytest.raises(ConfigurationError, match="token_url"):
        token_provider_from_settings(settings(service_account_file=account_file), http=http)


def test_service_account_with_relative_token_url_is_refused(
    http: httpx.Client, account_file: Path
) -> None:
    with pytest.raises(ConfigurationError, match="not an absolute http"):
        token_provider_from_settings(
            settings(service_account_file=account_file, token_url="/oauth/token"), http=http
        )


def test_missing_service_account_file_is_refused(http: httpx.Client, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        token_provider_from_settings(
            settings(service_account_file=tmp_path / "x.json", token_url="https://a.test/t"),
            http=http,
        )


def test_from_settings_applies_timeouts_roles_and_token() -> None:
    # Given settings with explicit timeouts, roles and a static token
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201)

    config = settings(
        upstream_url="https://customers.test/v2/",
        upstream_token=SecretStr("tok"),
        auth_roles="ADMIN",
        connect_timeout=1.5,
        read_timeout=2.5,
        write_timeout=3.5,
        pool_timeout=4.5,
    )
    # When a client is built and writes
    with from_settings(config, transport=httpx.MockTransport(handle)) as client:
        assert isinstance(client, MasStackClient)
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
        timeout = client._http.timeout
    # Then the request carries the configured token, roles and timeouts
    (request,) = seen
    assert str(request.url) == "https://customers.test/v2/orgs/telco/subscriptions/7/blocks/1"
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.headers["x-auth-roles"] == "ADMIN"
    assert timeout == httpx.Timeout(connect=1.5, read=2.5, write=3.5, pool=4.5)
    assert request.extensions["timeout"] == {"connect": 1.5, "read": 2.5, "write": 3.5, "pool": 4.5}


def test_from_settings_closes_the_token_client_with_the_client(account_file: Path) -> None:
    # Given a service-account client built from settings
    client = from_settings(
        settings(service_account_file=account_file, token_url="https://auth.test/t")
    )
    provider = client._auth
    assert isinstance(provider, ServiceAccountTokenProvider)
    # When the client is closed / Then the token endpoint's HTTP client is closed too
    client.close()
    assert provider._http.is_closed


@pytest.mark.parametrize(
    "url", ["customers.test/v2", "ftp://customers.test/v2", "https://customers.test/v2?x=1"]
)
def test_bad_upstream_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        from_settings(settings(upstream_url=url))


def test_bad_auth_roles_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="auth_roles"):
        from_settings(settings(auth_roles="API_KEY\r\nX-Evil: 1"))
