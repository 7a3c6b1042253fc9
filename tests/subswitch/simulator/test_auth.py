"""Bearer checks and the JWT-bearer grant (no HTTP: the Authenticator alone)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from subswitch.simulator.accounts import load_trusted_account
from subswitch.simulator.auth import Authenticator, GrantError
from tests.subswitch.simulator.helpers import START, FakeClock, make_assertion, token_form


def _authenticator(account_file: Path, clock: FakeClock, **overrides: Any) -> Authenticator:
    options: dict[str, Any] = {
        "enabled": True,
        "static_tokens": ["dev-token"],
        "accounts": [load_trusted_account(account_file)],
        "token_ttl": 60,
        "audience": None,
        "secret": None,
        "clock": clock,
    }
    return Authenticator(**(options | overrides))


@pytest.mark.parametrize(
    ("header", "accepted"),
    [("Bearer dev-token", True), ("bearer dev-token", True), (None, False), ("dev-token", False),
     ("Basic dev-token", False), ("Bearer other", False), ("Bearer ", False)],
)  # fmt: skip
def test_static_tokens(
    account_file: Path, clock: FakeClock, header: str | None, accepted: bool
) -> None:
    # Given an authenticator with static token dev-token
    auth = _authenticator(account_file, clock)
    # Then only a bearer header with that token is accepted
    assert auth.authorized(header) is accepted


def test_disabled_auth_accepts_anything(account_file: Path, clock: FakeClock) -> None:
    # Given authentication switched off
    auth = _authenticator(account_file, clock, enabled=False)
    # Then a missing header is fine
    assert auth.authorized(None) is True


def test_issued_token_works_until_it_expires(account_file: Path, clock: FakeClock) -> None:
    # Given an access token granted for a valid assertion, with a 60 s lifetime
    auth = _authenticator(account_file, clock)
    answer = auth.grant(token_form(make_assertion(account_file, now=START), scope="customers"))
    header = f"Bearer {answer['access_token']}"
    # Then the answer has the OAuth shape and the token works
    assert (answer["token_type"], answer["expires_in"], answer["scope"]) == (
        "Bearer",
        60,
        "customers",
    )
    assert auth.authorized(header) is True
    # When 59 s pass, it still works; when 61 s have passed it does not
    clock.advance(59)
    assert auth.authorized(header) is True
    clock.advance(2)
    assert auth.authorized(header) is False


def test_revoking_invalidates_issued_tokens_only(account_file: Path, clock: FakeClock) -> None:
    # Given an issued token in use
    auth = _authenticator(account_file, clock)
    old = (
        f"Bearer {auth.grant(token_form(make_assertion(account_file, now=START)))['access_token']}"
    )
    assert auth.authorized(old)
    # When every issued token is revoked
    auth.revoke_all()
    # Then the old token fails, static tokens and newly issued ones work
    new = (
        f"Bearer {auth.grant(token_form(make_assertion(account_file, now=START)))['access_token']}"
    )
    assert auth.authorized(old) is False
    assert auth.authorized("Bearer dev-token") is True
    assert auth.authorized(new) is True


def test_tokens_from_another_issuer_are_refused(account_file: Path, clock: FakeClock) -> None:
    # Given a well-formed HS256 token signed with some other secret
    forged = jwt.encode({"exp": START + 600, "gen": 0}, "x" * 32, algorithm="HS256")
    # Then it is refused
    assert _authenticator(account_file, clock).authorized(f"Bearer {forged}") is False


def _refusal(auth: Authenticator, form: dict[str, str]) -> GrantError:
    with pytest.raises(GrantError) as caught:
        auth.grant(form)
    return caught.value


def test_unsupported_grant_and_missing_assertion(account_file: Path, clock: FakeClock) -> None:
    # Given an authenticator
    auth = _authenticator(account_file, clock)
    # Then other grant types and an empty assertion are refused with their OAuth codes
    assert _refusal(auth, {"grant_type": "client_credentials"}).error == "unsupported_grant_type"
    assert _refusal(auth, token_form("")).error == "invalid_request"


@pytest.mark.parametrize(
    "case", ["not-a-jwt", "unknown-kid", "wrong-key", "expired", "no-iss", "no-exp"]
)
def test_bad_assertions_are_invalid_grants(
    account_file: Path, other_account_file: Path, clock: FakeClock, case: str
) -> None:
    # Given an assertion that is broken in one way
    trusted_kid = load_trusted_account(account_file).key_id
    makers: dict[str, Callable[[], str]] = {
        "not-a-jwt": lambda: "abc.def",
        "unknown-kid": lambda: make_assertion(other_account_file, now=START),
        "wrong-key": lambda: make_assertion(other_account_file, kid=trusted_kid, now=START),
        "expired": lambda: make_assertion(account_file, now=START - 600),
        "no-iss": lambda: make_assertion(account_file, now=START, iss=None),
        "no-exp": lambda: make_assertion(account_file, now=START, exp=None),
    }
    assertion = makers[case]()
    # When it is presented
    refusal = _refusal(_authenticator(account_file, clock), token_form(assertion))
    # Then it is an invalid grant, and the description never quotes a key
    assert refusal.error == "invalid_grant"
    assert "PRIVATE KEY" not in refusal.description


def test_audience_is_checked_only_when_configured(account_file: Path, clock: FakeClock) -> None:
    # Given assertions for some audience
    for_other = make_assertion(account_file, now=START, aud="https://other.example")
    for_us = make_assertion(account_file, now=START, aud="https://auth.sim.local")
    # Then without a configured audience any is accepted
    assert "access_token" in _authenticator(account_file, clock).grant(token_form(for_other))
    # And with one, only the right one is
    strict = _authenticator(account_file, clock, audience="https://auth.sim.local")
    assert "access_token" in strict.grant(token_form(for_us))
    assert _refusal(strict, token_form(for_other)).error == "invalid_grant"


def test_configured_secret_signs_the_tokens(account_file: Path, clock: FakeClock) -> None:
    # Given two authenticators sharing a configured secret
    secret = b"s" * 32
    first = _authenticator(account_file, clock, secret=secret)
    second = _authenticator(account_file, clock, secret=secret)
    # When one issues a token
    token = first.grant(token_form(make_assertion(account_file, now=START)))["access_token"]
    # Then the other accepts it (a restarted simulator keeps honouring its tokens)
    assert second.authorized(f"Bearer {token}") is True


def test_repr_shows_no_secrets(account_file: Path, clock: FakeClock) -> None:
    # Given an authenticator with a configured secret and static token
    auth = _authenticator(account_file, clock, secret=b"q" * 32)
    # Then its repr mentions neither
    assert "qqqq" not in repr(auth)
    assert "dev-token" not in repr(auth)
