"""Fixtures for the upstream client tests: recorded mock transports and an RSA key."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pydantic import SecretStr

from subswitch.settings import Settings
from tests.worker.upstream.scripted import ScriptedUpstream
from worker.upstream import MasStackClient, StaticToken, TokenProvider, timeout_from_settings

BASE_URL = "https://customers.test/v2"
TOKEN = "static-secret-token-123"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport that records every request it sees (thread-safe)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._lock = threading.Lock()
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        with self._lock:
            self.requests.append(request)
        return self._handler(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    """A handler that always answers ``status`` with ``body`` (JSON unless bytes)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handle


#: Client settings every test starts from: the defaults of Settings, not the environment.
DEFAULTS: Final = Settings.model_construct()
TIMEOUT: Final = timeout_from_settings(DEFAULTS)


def new_client(**kwargs: Any) -> MasStackClient:
    """A client with the default timeouts and roles, unless ``kwargs`` say otherwise."""
    return MasStackClient(**{"timeout": TIMEOUT, "auth_roles": DEFAULTS.auth_roles, **kwargs})


@dataclass
class ClientFactory:
    """Builds a client whose requests all go to a Recorder."""

    def __call__(
        self,
        handler: Handler,
        *,
        auth: TokenProvider | None = None,
        base_url: str = BASE_URL,
        clock: Callable[[], float] | None = None,
        auth_roles: str | None = DEFAULTS.auth_roles,
    ) -> tuple[MasStackClient, Recorder]:
        recorder = Recorder(handler)
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        client = MasStackClient(
            timeout=TIMEOUT,
            base_url=base_url,
            auth=auth if auth is not None else StaticToken(SecretStr(TOKEN)),
            transport=recorder.transport,
            auth_roles=auth_roles,
            **kwargs,
        )
        return client, recorder


@pytest.fixture
def make_client() -> ClientFactory:
    return ClientFactory()


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    """A loopback server whose answers the test scripts (201 unless told otherwise)."""
    server = ScriptedUpstream()
    yield server
    server.close()


@dataclass(frozen=True)
class RsaKey:
    private_pem: str
    public_key: RSAPublicKey


@pytest.fixture(scope="session")
def rsa_key() -> RsaKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return RsaKey(private_pem=pem, public_key=key.public_key())


@pytest.fixture
def account_file(tmp_path: Path, rsa_key: RsaKey) -> Path:
    path = tmp_path / "service-account.json"
    account = {
        "private_key_id": "kid-42",
        "private_key": rsa_key.private_pem,
        "client_email": "worker@telco.example",
        "type": "service_account",
    }
    path.write_text(json.dumps(account))
    return path
