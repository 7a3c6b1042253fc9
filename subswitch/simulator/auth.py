"""Bearer-token checks and the OAuth JWT-bearer grant, as the real AuthN does them.

Accepted bearer tokens are the configured static ones and access tokens this simulator
issued (HS256 JWTs under a per-process secret unless one is configured). Revoking bumps
a generation number carried in every issued token, so older tokens stop working at
once and clients must refresh. Verified tokens are cached, which keeps the hot path to
a dictionary lookup and a clock comparison.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jwt
from jwt.types import Options

from subswitch.errors import PermanentError
from subswitch.simulator.accounts import TrustedAccount

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ISSUER = "subswitch-simulator"
_CACHE_CAP = 10_000


class GrantError(PermanentError):
    """A token request refused with an OAuth error code (RFC 6749 section 5.2)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


class Authenticator:
    """Checks ``Authorization`` headers and issues access tokens for trusted assertions."""

    def __init__(
        self,
        *,
        enabled: bool,
        static_tokens: Iterable[str],
        accounts: Iterable[TrustedAccount],
        token_ttl: int,
        audience: str | None,
        secret: bytes | None,
        clock: Callable[[], float],
    ) -> None:
        self.enabled = enabled
        self._static = frozenset(static_tokens)
        self._accounts = {account.key_id: account for account in accounts}
        self.token_ttl = token_ttl
        self._audience = audience
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock
        self._generation = 0
        self._verified: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"Authenticator(enabled={self.enabled}, accounts={sorted(self._accounts)})"

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value carries an acceptable bearer token."""
        if not self.enabled:
            return True
        if header is None or header[:7].lower() != "bearer ":
            return False
        token = header[7:].strip()
        if token in self._static:
            return True
        expires = self._verified.get(token)
        if expires is None:
            expires = self._verify_access_token(token)
        return expires is not None and self._clock() < expires

    def _verify_access_token(self, token: str) -> float | None:
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"verify_exp": False}
            )
        except jwt.PyJWTError:
            return None
        expires = claims.get("exp")
        if claims.get("gen") != self._generation or not isinstance(expires, int | float):
            return None
        if len(self._verified) >= _CACHE_CAP:
            self._verified.clear()
        self._verified[token] = float(expires)
        return float(expires)

    def revoke_all(self) -> int:
        """Invalidate every access token issued so far; returns the new generation."""
        self._generation += 1
        self._verified.clear()
        return self._generation

    def grant(self, form: Mapping[str, str]) -> dict[str, object]:
        """Answer a token request: an access token for a valid JWT-bearer assertion."""
        if form.get("grant_type") != JWT_BEARER_GRANT:
            raise GrantError("unsupported_grant_type", f"grant_type must be {JWT_BEARER_GRANT}")
        assertion = form.get("assertion")
        if not assertion:
            raise GrantError("invalid_request", "assertion is required")
        claims = self._verify_assertion(assertion)
        now = self._clock()
        access: dict[str, Any] = {
            "iss": ISSUER,
            "sub": claims.get("sub") or claims["iss"],
            "iat": int(now),
            "exp": now + self.token_ttl,
            "jti": secrets.token_hex(8),
            "gen": self._generation,
        }
        answer: dict[str, object] = {"token_type": "Bearer", "expires_in": self.token_ttl}
        if form.get("scope"):
            access["scope"] = answer["scope"] = form["scope"]
        answer["access_token"] = jwt.encode(access, self._secret, algorithm="HS256")
        return answer

    def _verify_assertion(self, assertion: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(assertion).get("kid")
        except jwt.PyJWTError:
            raise GrantError("invalid_grant", "assertion is not a JWT") from None
        account = self._accounts.get(kid) if isinstance(kid, str) else None
        if account is None:
            raise GrantError("invalid_grant", "assertion kid names no trusted service account")
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                audience=self._audience,
                options=self._assertion_checks(),
            )
        except jwt.PyJWTError as exc:
            raise GrantError("invalid_grant", f"assertion rejected: {exc}") from None
        expires = claims["exp"]
        if not isinstance(expires, int | float) or expires <= self._clock():
            raise GrantError("invalid_grant", "assertion has expired")
        return claims

    def _assertion_checks(self) -> Options:
        # Time claims are checked against the simulator's clock, not PyJWT's.
        return {
            "require": ["exp", "iss"],
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "verify_aud": self._audience is not None,
        }
