"""POST /oauth/token over ASGI, and the tokens it issues used on /v2."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from subswitch.simulator.testing import SimulatorHandle
from tests.subswitch.simulator.helpers import (
    START,
    ClientFactory,
    FakeClock,
    make_assertion,
    token_form,
)

BLOCKS = "/v2/orgs/telco/subscriptions/7/blocks"
BLOCK_ONE = "/orgs/telco/subscriptions/7/blocks/1"  # relative to the /v2 base URL


@pytest.fixture
def trusting(make_client: ClientFactory, account_file: Path) -> TestClient:
    """A simulator trusting ``account_file``, with 120 s access tokens."""
    return make_client(service_account_files=[account_file], token_ttl=120)


def _token(client: TestClient, account_file: Path) -> str:
    response = client.post("/oauth/token", data=token_form(make_assertion(account_file, now=START)))
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def test_assertion_is_exchanged_for_a_working_token(
    trusting: TestClient, account_file: Path
) -> None:
    # When a signed assertion is posted as a form
    response = trusting.post(
        "/oauth/token", data=token_form(make_assertion(account_file, now=START), scope="x y")
    )
    # Then an uncacheable bearer token with its lifetime comes back, and it opens /v2
    assert response.status_code == 200
    body = response.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 120, "x y")
    assert response.headers["cache-control"] == "no-store"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert trusting.get(BLOCKS, headers=headers).status_code == 200


def test_access_token_expires_after_its_ttl(
    trusting: TestClient, account_file: Path, clock: FakeClock
) -> None:
    # Given an access token with a 120 s lifetime
    headers = {"Authorization": f"Bearer {_token(trusting, account_file)}"}
    # When 121 s pass
    clock.advance(121)
    # Then it is refused with 401
    assert trusting.get(BLOCKS, headers=headers).status_code == 401


def test_revoked_tokens_get_401_and_a_new_one_works(
    trusting: TestClient, account_file: Path
) -> None:
    # Given a working access token
    old = {"Authorization": f"Bearer {_token(trusting, account_file)}"}
    assert trusting.patch(f"{BLOCKS}/1", json={"active": True}, headers=old).status_code == 201
    # When the admin revokes every issued token
    assert trusting.post("/admin/tokens/revoke").status_code == 200
    # Then the old token gets 401, and a freshly issued one works
    assert trusting.patch(f"{BLOCKS}/1", json={"active": True}, headers=old).status_code == 401
    new = {"Authorization": f"Bearer {_token(trusting, account_file)}"}
    assert trusting.patch(f"{BLOCKS}/1", json={"active": False}, headers=new).status_code == 201


def test_assertion_from_an_untrusted_account_is_invalid_grant(
    trusting: TestClient, other_account_file: Path
) -> None:
    # When an assertion signed by an account the simulator does not trust is posted
    response = trusting.post(
        "/oauth/token", data=token_form(make_assertion(other_account_file, now=START))
    )
    # Then it is a 400 invalid_grant
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert response.json()["error_description"]


def test_forged_signature_is_invalid_grant(
    trusting: TestClient, account_file: Path, other_account_file: Path
) -> None:
    # Given an assertion naming the trusted key id but signed with another key
    trusted_kid = json.loads(account_file.read_text())["private_key_id"]
    forged = make_assertion(other_account_file, kid=trusted_kid, now=START)
    # When it is posted
    response = trusting.post("/oauth/token", data=token_form(forged))
    # Then it is refused
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize(
    ("form", "error"),
    [({"grant_type": "password", "username": "u"}, "unsupported_grant_type"),
     ({"assertion": "abc"}, "unsupported_grant_type"),
     ({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}, "invalid_request")],
)  # fmt: skip
def test_other_grants_are_refused(trusting: TestClient, form: dict[str, str], error: str) -> None:
    # When a token request is not a JWT-bearer grant with an assertion
    response = trusting.post("/oauth/token", data=form)
    # Then it is a 400 with the OAuth error code
    assert (response.status_code, response.json()["error"]) == (400, error)


def test_token_request_must_be_a_form(trusting: TestClient, account_file: Path) -> None:
    # When the grant is posted as JSON instead of a form
    response = trusting.post(
        "/oauth/token", json=token_form(make_assertion(account_file, now=START))
    )
    # Then it is an invalid request
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_token_endpoint_only_takes_post(trusting: TestClient) -> None:
    # When the token endpoint is fetched with GET
    response = trusting.get("/oauth/token")
    # Then it is 405 with no body
    assert (response.status_code, response.content) == (405, b"")


def test_refresh_after_revocation_over_http(sim: SimulatorHandle, account_file: Path) -> None:
    # Given a client holding an access token from the token endpoint
    def fresh_token(client: httpx.Client) -> dict[str, str]:
        answer = client.post(sim.token_url, data=token_form(make_assertion(account_file)))
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    with httpx.Client(base_url=sim.base_url) as client:
        headers = fresh_token(client)
        assert client.patch(BLOCK_ONE, json={"active": True}, headers=headers).is_success
        # When the tokens are revoked
        sim.admin.revoke_tokens()
        # Then the next write gets 401, and after a refresh it succeeds
        refused = client.patch(BLOCK_ONE, json={"active": False}, headers=headers)
        assert refused.status_code == 401
        headers = fresh_token(client)
        accepted = client.patch(BLOCK_ONE, json={"active": False}, headers=headers)
        assert accepted.status_code == 201
    assert [w["status"] for w in sim.admin.writes()["writes"]] == [201, 401, 201]
