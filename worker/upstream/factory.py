"""Build a :class:`MasStackClient` from :class:`subswitch.settings.Settings`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from worker.upstream.auth import token_provider_from_settings
from worker.upstream.client import MasStackClient, pooled_transport

if TYPE_CHECKING:
    from subswitch.settings import Settings


#: Token requests are rare (one per token lifetime, shared by every thread).
_TOKEN_CONNECTIONS = 2


def timeout_from_settings(settings: Settings) -> httpx.Timeout:
    """The connect/read/write/pool timeouts the settings ask for."""
    return httpx.Timeout(
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        write=settings.write_timeout,
        pool=settings.pool_timeout,
    )


def from_settings(
    settings: Settings, *, transport: httpx.BaseTransport | None = None
) -> MasStackClient:
    """A client for ``settings.upstream_url`` with the configured auth and timeouts.

    Token requests (service-account auth) go through their own small HTTP client,
    closed with the returned client. The bulk lane's writes go through the client's
    concurrent sender (``start_*``); ``transport`` replaces both clients' transport
    (tests), and then the ``start_*`` writes are made synchronously through it.
    Raises :class:`~worker.upstream.errors.ConfigurationError` on bad settings.
    """
    timeout = timeout_from_settings(settings)
    token_http = httpx.Client(
        timeout=timeout,
        transport=transport or pooled_transport(_TOKEN_CONNECTIONS),
        follow_redirects=False,
        trust_env=False,
    )
    try:
        client = MasStackClient(
            base_url=settings.upstream_url,
            auth=token_provider_from_settings(settings, http=token_http),
            timeout=timeout,
            auth_roles=settings.auth_roles,
            transport=transport,
            concurrent=transport is None,
        )
    except BaseException:
        token_http.close()
        raise
    client._close_also(token_http.close)  # the factory is part of the client module
    return client
