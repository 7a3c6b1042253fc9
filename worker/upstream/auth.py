"""Bearer tokens for the upstream: none, a static token, or a service account.

Every provider satisfies :class:`TokenProvider`. Secrets (private keys, access
tokens, static tokens) live in ``SecretStr`` or private attributes and never reach
``repr``, logs or exception messages.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import httpx
import jwt
import pydantic
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from subswitch.errors import ConfigurationError
from worker.upstream._validation import http_url
from worker.upstream.deadline import capped_timeout, current_deadline
from worker.upstream.errors import (
    AuthenticationError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    map_transport_errors,
    one_line,
    parse_retry_after,
    safe_url,
)

if TYPE_CHECKING:
    from subswitch.settings import Settings

logger = logging.getLogger(__name__)

JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_EXPIRES_IN: Final = 3600.0
# RFC 6750 b64token: what may follow "Bearer " in a header, so nothing can be injected.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_OAUTH_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@runtime_checkable
class TokenProvider(Protocol):
    """Where the client gets its bearer token."""

    def token(self) -> str | None:
        """The current bearer token, fetched or refreshed as needed; ``None``: send none."""
        ...

    def invalidate(self, token: str) -> None:
        """Report that ``token`` was refused (401).

        The next :meth:`token` fetches a fresh token, but only if ``token`` is still
        the current one: many requests failing with one token cause one refresh.
        """
        ...


class NoAuth:
    """Send no ``Authorization`` header."""

    def token(self) -> str | None:
        """Always ``None``."""
        return None

    def invalidate(self, token: str) -> None:
        """Nothing to refresh."""

    def __repr__(self) -> str:
        return "NoAuth()"


class StaticToken:
    """A fixed bearer token from configuration; it cannot be refreshed."""

    def __init__(self, token: SecretStr) -> None:
        value = token.get_secret_value()
        if not value or not _BEARER_TOKEN.fullmatch(value):
            raise ConfigurationError(
                "the static upstream token is empty or has characters not allowed in a "
                "bearer token (spaces, control characters...)"
            )
        self._token = token

    def token(self) -> str:
        """The configured token."""
        return self._token.get_secret_value()

    def invalidate(self, token: str) -> None:
        """Nothing to refresh: a refused static token stays refused."""

    def __repr__(self) -> str:
        return f"StaticToken(token={self._token!r})"


class ServiceAccount(BaseModel):
    """A MasStack service account file; ``private_key`` never shows in repr or errors."""

    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    private_key_id: str = Field(min_length=1)
    private_key: SecretStr
    client_email: str = Field(min_length=1)

    @classmethod
    def from_file(cls, path: Path | str) -> ServiceAccount:
        """Load and check a service account JSON file.

        Raises :class:`ConfigurationError` with one line (never quoting the key) when
        the file is missing, unreadable, not JSON, lacks a field or holds no RSA key.
        """
        where = f"service account file {str(path)!r}"
        data = _read_json_object(Path(path), where)
        try:
            account = cls.model_validate(data)
        except pydantic.ValidationError as exc:
            problems = ", ".join(
                f"{'.'.join(map(str, e['loc']))} ({e['type']})"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise ConfigurationError(f"{where} has missing or invalid fields: {problems}") from None
        account.load_private_key(where)
        return account

    def load_private_key(self, where: str = "service account") -> RSAPrivateKey:
        """The RSA private key; :class:`ConfigurationError` if it is not an unencrypted PEM."""
        pem = self.private_key.get_secret_value().encode()
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, RSAPrivateKey):
            raise ConfigurationError(
                f"{where}: private_key is not an unencrypted PEM-encoded RSA private key"
            )
        return key


def _read_json_object(path: Path, where: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigurationError(f"{where} cannot be read: {reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: the text around it may be the key.
        raise ConfigurationError(
            f"{where} is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where} is not a JSON object")
    return data


@dataclass(frozen=True, repr=False)
class _CachedToken:
    value: SecretStr
    refresh_at: float


class ServiceAccountTokenProvider:
    """Access tokens from a service account through the JWT-bearer grant (RFC 7523).

    A token is cached until ``expires_in - refresh_margin_s`` (the margin shrinks to
    half the lifetime for short-lived tokens). Thread-safe: however many threads need
    a token at once, one request goes to the token URL, and when it fails every
    thread that waited for it gets its error instead of trying again.
    """

    def __init__(
        self,
        *,
        account: ServiceAccount,
        token_url: str,
        http: httpx.Client,
        audience: str | None = None,
        scopes: str | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin_s: float = 60.0,
        assertion_ttl_s: int = 300,
    ) -> None:
        self._account = account
        self._key = account.load_private_key()
        self._token_url = token_url
        self._http = http
        self._audience = audience or token_url
        self._scopes = scopes or None
        self._clock = clock
        self._refresh_margin_s = refresh_margin_s
        self._assertion_ttl_s = assertion_ttl_s
        self._lock = threading.Lock()
        self._cached: _CachedToken | None = None
        self._completed_fetches = 0
        self._last_failure: UpstreamError | None = None

    def __repr__(self) -> str:
        return (
            f"ServiceAccountTokenProvider(client_email={self._account.client_email!r}, "
            f"token_url={safe_url(self._token_url)!r})"
        )

    def token(self) -> str:
        """A valid access token, fetched when there is none or it is about to expire."""
        now = self._clock()
        cached = self._cached  # one read: the token and its deadline change together
        if cached is not None and now < cached.refresh_at:
            return cached.value.get_secret_value()
        fetches_seen = self._completed_fetches
        # Waiting for another thread's fetch counts against the caller's deadline too.
        deadline = current_deadline()
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            raise UpstreamTimeout("the attempt's deadline passed while waiting for a token")
        try:
            return self._token_locked(fetches_seen)
        finally:
            self._lock.release()

    def invalidate(self, token: str) -> None:
        """Drop the cached token if it is ``token``, so the next :meth:`token` refreshes."""
        with self._lock:
            cached = self._cached
            if cached is not None and cached.value.get_secret_value() == token:
                self._cached = None

    def _token_locked(self, fetches_seen: int) -> str:
        cached = self._cached
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value.get_secret_value()
        if self._completed_fetches != fetches_seen and self._last_failure is not None:
            # A fetch that started after we asked just failed: its answer is ours too.
            raise copy.copy(self._last_failure)
        try:
            self._cached = self._fetch()
            self._last_failure = None
        except UpstreamError as exc:
            self._last_failure = exc
            raise
        finally:
            self._completed_fetches += 1
        return self._cached.value.get_secret_value()

    def _fetch(self) -> _CachedToken:
        issued_at = self._clock()
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self._assertion(issued_at)}
        if self._scopes:
            form["scope"] = self._scopes
        operation = f"POST {safe_url(self._token_url)}"
        with map_transport_errors(operation, write=False):
            response = self._http.post(
                self._token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=capped_timeout(self._http.timeout, current_deadline()),
            )
        if not response.is_success:
            raise self._refusal(response, operation)
        token, expires_in = _parse_token_response(response, operation)
        margin = min(self._refresh_margin_s, expires_in / 2)
        logger.info(
            "fetched an access token for %s from %s, valid for %.0f s",
            self._account.client_email,
            safe_url(self._token_url),
            expires_in,
        )
        return _CachedToken(SecretStr(token), issued_at + expires_in - margin)

    def _assertion(self, now: float) -> str:
        issued = int(now)
        claims: dict[str, Any] = {
            "iss": self._account.client_email,
            "sub": self._account.client_email,
            "aud": self._audience,
            "iat": issued,
            "exp": issued + self._assertion_ttl_s,
            "jti": str(uuid.uuid4()),
        }
        if self._scopes:
            claims["scope"] = self._scopes
        headers = {"kid": self._account.private_key_id, "typ": "JWT"}
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)

    def _refusal(self, response: httpx.Response, operation: str) -> UpstreamError:
        status = response.status_code
        what = f"token endpoint answered {status} to {operation}"
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
            return UpstreamUnavailable(what, status=status, retry_after=retry_after)
        code = _oauth_error_code(response)
        return AuthenticationError(
            f"{what}: the service-account assertion was refused" + (f" ({code})" if code else ""),
            status=status,
        )


def _oauth_error_code(response: httpx.Response) -> str | None:
    """The RFC 6749 ``error`` code, only if it looks like one: descriptions may echo input."""
    try:
        code = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) and _OAUTH_ERROR_CODE.fullmatch(code) else None


def _parse_token_response(response: httpx.Response, operation: str) -> tuple[str, float]:
    what = f"token endpoint answered {response.status_code} to {operation}"
    try:
        data = response.json()
    except ValueError:
        raise AuthenticationError(f"{what} with a non-JSON body") from None
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not _BEARER_TOKEN.fullmatch(token):
        raise AuthenticationError(f"{what} without a usable access_token")
    return token, _expires_in(data.get("expires_in"))


def _expires_in(value: object) -> float:
    if value is None:
        return DEFAULT_EXPIRES_IN
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        logger.warning("token endpoint sent expires_in=%s; assuming 3600 s", one_line(repr(value)))
        return DEFAULT_EXPIRES_IN
    return seconds


def token_provider_from_settings(settings: Settings, *, http: httpx.Client) -> TokenProvider:
    """The provider the settings ask for.

    A service account when ``service_account_file`` is set (then ``token_url`` is
    required), else the static ``upstream_token``, else :class:`NoAuth`. ``http`` is
    used for token requests only.
    """
    if settings.service_account_file is not None:
        if not settings.token_url:
            raise ConfigurationError(
                "token_url (SUBSWITCH_TOKEN_URL) is required when service_account_file "
                "(SUBSWITCH_SERVICE_ACCOUNT_FILE) is set"
            )
        http_url("token_url", settings.token_url)
        return ServiceAccountTokenProvider(
            account=ServiceAccount.from_file(settings.service_account_file),
            token_url=settings.token_url,
            http=http,
            audience=settings.token_audience,
            scopes=settings.token_scopes,
        )
    if settings.upstream_token is not None:
        return StaticToken(settings.upstream_token)
    return NoAuth()
