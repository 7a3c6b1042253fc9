"""Helpers of the simulator tests: a fake clock, bearer headers, assertions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

if TYPE_CHECKING:
    from starlette.testclient import TestClient

AUTH = {"Authorization": "Bearer dev-token"}
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
START = 1_700_000_000.0

#: ``make_client(**config)``: an ASGI client of a simulator built from those settings.
ClientFactory = Callable[..., "TestClient"]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_assertion(
    account_file: Path, *, kid: str | None = None, now: float | None = None, **claims: Any
) -> str:
    """An RS256 assertion signed with the account's key; ``claims`` override the defaults."""
    account = json.loads(account_file.read_text())
    issued = time.time() if now is None else now
    payload = {"iss": account["client_email"], "sub": account["client_email"]}
    payload |= {"iat": int(issued), "exp": int(issued) + 300, **claims}
    payload = {name: value for name, value in payload.items() if value is not None}
    headers = {"kid": kid or account["private_key_id"]}
    return jwt.encode(payload, account["private_key"], algorithm="RS256", headers=headers)


def token_form(assertion: str, **extra: str) -> dict[str, str]:
    """The form body of a JWT-bearer token request."""
    return {"grant_type": JWT_BEARER, "assertion": assertion, **extra}
