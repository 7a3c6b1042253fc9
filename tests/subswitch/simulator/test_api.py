"""The /v2 customers API through ASGI: shapes, status codes, validation, auth."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.subswitch.simulator.helpers import AUTH, START, ClientFactory

SUB = "/v2/orgs/telco/subscriptions/7"
ERROR_FIELDS = {"code", "status", "message", "detailMsg"}


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_FIELDS
    assert body["code"] == status
    return body


def test_list_services_shape(client: TestClient) -> None:
    # When the services of a subscription are listed
    response = client.get(f"{SUB}/services", headers=AUTH)
    # Then the SubscriptionServices shape comes back with the seed services
    assert response.status_code == 200
    body = response.json()
    assert body["subscription_id"] == 7
    assert [(s["id"], s["value"], s["changeable"], s["active"]) for s in body["items"]] == [
        (1, "VOZ", True, True),
        (2, "DATOS", True, True),
        (3, "ROAMING", True, False),
        (4, "SMS_PREMIUM", False, False),
    ]
    assert all(set(s) == {"id", "value", "changeable", "date_last_modified", "active"}
               for s in body["items"])  # fmt: skip


@pytest.mark.parametrize(
    ("query", "ids"),
    [({"filter": ["active"]}, [1, 2]), ({"filter": ["inactive"]}, [3, 4]),
     ({"filter": ["active", "inactive"]}, [1, 2, 3, 4]), ({"filter": []}, [1, 2, 3, 4]),
     ({"include": ["anything"]}, [1, 2, 3, 4])],
)  # fmt: skip
def test_services_query_filter(client: TestClient, query: dict[str, Any], ids: list[int]) -> None:
    # When services are listed with a query
    response = client.get(f"{SUB}/services", params={"query": json.dumps(query)}, headers=AUTH)
    # Then only the matching services come back
    assert response.status_code == 200
    assert [s["id"] for s in response.json()["items"]] == ids


@pytest.mark.parametrize(
    "query",
    ["not json", "[]", '{"filter": "active"}', '{"filter": ["enabled"]}', '{"filter": [1]}',
     '{"sort": []}', '{"include": "x"}'],
)  # fmt: skip
def test_malformed_services_query_is_400(client: TestClient, query: str) -> None:
    # When services are listed with a malformed query
    response = client.get(f"{SUB}/services", params={"query": query}, headers=AUTH)
    # Then it is a 400 ErrorMessage
    _error(response, 400)


def test_patch_service_is_201_with_empty_body_and_applies(client: TestClient) -> None:
    # When voice is switched off
    response = client.patch(f"{SUB}/services/1", json={"active": False}, headers=AUTH)
    # Then the answer is 201 without a body, and the listing shows it off with a new date
    assert response.status_code == 201
    assert response.content == b""
    voice = client.get(f"{SUB}/services", headers=AUTH).json()["items"][0]
    assert voice["active"] is False
    assert voice["date_last_modified"] == "2023-11-14T22:13:20.000Z"


def test_blocks_list_the_blocks_in_place(client: TestClient) -> None:
    # Given no block in place
    assert client.get(f"{SUB}/blocks", headers=AUTH).json() == {"subscription_id": 7, "items": []}
    # When block 1 is put on with a reason, and block 2 on then off again
    for block, body in ((1, {"active": True, "reason": "robado"}), (2, {"active": True}),
                        (2, {"active": False})):  # fmt: skip
        assert client.patch(f"{SUB}/blocks/{block}", json=body, headers=AUTH).status_code == 201
    # Then only block 1 is listed, with its reason as description and an active flag
    body = client.get(f"{SUB}/blocks", headers=AUTH).json()
    assert body["subscription_id"] == 7
    assert body["items"] == [
        {
            "id": 1,
            "value": "ROBO",
            "date_last_modified": "2023-11-14T22:13:20.000Z",
            "description": "robado",
            "active": True,
        }
    ]


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b"{}", b'{"active": "true"}', b'{"active": 1}', b'{"active": null}',
     b""],
)  # fmt: skip
@pytest.mark.parametrize("path", ["services/1", "blocks/1"])
def test_bad_bodies_are_400(client: TestClient, body: bytes, path: str) -> None:
    # When a write carries an unusable body
    response = client.patch(
        f"{SUB}/{path}", content=body, headers=AUTH | {"content-type": "application/json"}
    )
    # Then it is a 400 ErrorMessage, and nothing was applied
    _error(response, 400)
    assert client.get("/admin/state").json() == {"targets": []}


def test_block_reason_must_be_a_string(client: TestClient) -> None:
    # When a block write carries a numeric reason
    response = client.patch(f"{SUB}/blocks/1", json={"active": True, "reason": 5}, headers=AUTH)
    # Then it is a 400
    assert "reason" in _error(response, 400)["detailMsg"]


def test_non_changeable_service_is_400(client: TestClient) -> None:
    # When the non-changeable SMS_PREMIUM service is switched on
    response = client.patch(f"{SUB}/services/4", json={"active": True}, headers=AUTH)
    # Then it is refused and stays off
    assert "not changeable" in _error(response, 400)["detailMsg"]
    assert client.get("/admin/state/telco/7/service/4").json()["active"] is False


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("PATCH", "/v2/orgs/nope/subscriptions/7/services/1", 404),
     ("PATCH", "/v2/orgs/telco/subscriptions/0/services/1", 404),
     ("PATCH", "/v2/orgs/telco/subscriptions/1001/blocks/1", 404),
     ("PATCH", "/v2/orgs/telco/subscriptions/7/services/5", 404),
     ("PATCH", "/v2/orgs/telco/subscriptions/7/blocks/3", 400),
     ("PATCH", "/v2/orgs/telco/subscriptions/7/blocks/0", 400),
     ("PATCH", "/v2/orgs/telco/subscriptions/x/blocks/1", 400),
     ("PATCH", "/v2/orgs/telco/subscriptions/7/services/abc", 400),
     ("PATCH", "/v2/orgs/telco/subscriptions/99999999999999999999/services/1", 400),
     ("GET", "/v2/orgs/acme/subscriptions/1001/services", 404),
     ("GET", "/v2/orgs/nope/subscriptions/1/blocks", 404),
     ("GET", "/v2/orgs/telco/subscriptions/-1/blocks", 400)],
)  # fmt: skip
def test_unknown_or_invalid_targets(
    client: TestClient, method: str, path: str, status: int
) -> None:
    # When a request names a missing or impossible target
    response = client.request(method, path, json={"active": True}, headers=AUTH)
    # Then it gets the documented status with an ErrorMessage
    _error(response, status)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("POST", f"{SUB}/services", "GET"), ("PATCH", f"{SUB}/services", "GET"),
     ("DELETE", f"{SUB}/blocks", "GET"), ("GET", f"{SUB}/services/1", "PATCH"),
     ("PUT", f"{SUB}/blocks/1", "PATCH"), ("POST", f"{SUB}/blocks/2", "PATCH")],
)  # fmt: skip
def test_other_methods_are_405_without_body(
    client: TestClient, method: str, path: str, allowed: str
) -> None:
    # When a path is called with a method it does not support
    response = client.request(method, path, headers=AUTH)
    # Then the answer is 405 with no body, naming the allowed method
    assert response.status_code == 405
    assert response.content == b""
    assert allowed in response.headers["allow"]


def test_unknown_paths_are_404_error_messages(client: TestClient) -> None:
    # When a path outside the API is requested
    # Then it is a 404 ErrorMessage
    _error(client.get("/v2/orgs/telco/whatever", headers=AUTH), 404)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "dev-token"},
     {"Authorization": "Basic ZGV2LXRva2Vu"}],
)  # fmt: skip
@pytest.mark.parametrize(
    ("method", "path"), [("GET", f"{SUB}/blocks"), ("PATCH", f"{SUB}/blocks/1")]
)
def test_requests_without_a_valid_token_are_401(
    client: TestClient, headers: dict[str, str], method: str, path: str
) -> None:
    # When a request comes without an acceptable bearer token
    response = client.request(method, path, json={"active": True}, headers=headers)
    # Then it is a 401 ErrorMessage with a Bearer challenge, and nothing is applied
    _error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/admin/stats").json()["writes_applied"] == 0


def test_configured_static_tokens_replace_the_default(make_client: ClientFactory) -> None:
    # Given a simulator with two static tokens of its own
    client = make_client(tokens=["alpha", "beta"])
    # Then each works and the default dev-token does not
    for token, status in (("alpha", 200), ("beta", 200), ("dev-token", 401)):
        response = client.get(f"{SUB}/blocks", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == status


def test_no_auth_accepts_requests_without_token(make_client: ClientFactory) -> None:
    # Given a simulator with authentication off
    client = make_client(auth=False)
    # When a write comes without a token
    response = client.patch(f"{SUB}/blocks/1", json={"active": True})
    # Then it is applied
    assert response.status_code == 201


def test_write_log_records_headers(client: TestClient) -> None:
    # When a write carries an idempotency key, a request id and roles
    headers = AUTH | {
        "Idempotency-Key": "cmd-1",
        "X-Request-ID": "req-9",
        "x-auth-roles": "API_KEY",
    }
    client.patch(f"{SUB}/blocks/2", json={"active": True, "reason": "perdido"}, headers=headers)
    # Then the write log keeps them with the outcome and when it was applied
    (write,) = client.get("/admin/writes").json()["writes"]
    assert write | {"time": None} == {
        "seq": 1, "time": None, "applied_at": START, "method": "PATCH", "path": f"{SUB}/blocks/2",
        "org_id": "telco", "subscription_id": 7, "kind": "block", "id": 2,
        "body": {"active": True, "reason": "perdido"}, "idempotency_key": "cmd-1",
        "request_id": "req-9", "auth_roles": "API_KEY", "status": 201, "applied": True,
        "fault": None,
    }  # fmt: skip


def test_large_subscription_counts_without_materialising(make_client: ClientFactory) -> None:
    # Given a simulator of a trillion subscriptions per org
    client = make_client(subscriptions=10**12)
    # When the last one is read and written, and the one past it is read
    last = f"/v2/orgs/acme/subscriptions/{10**12}"
    listed = client.get(f"{last}/services", headers=AUTH)
    written = client.patch(f"{last}/services/3", json={"active": True}, headers=AUTH)
    beyond = client.get(f"/v2/orgs/acme/subscriptions/{10**12 + 1}/services", headers=AUTH)
    # Then the last exists, the next does not, and only the written target is stored
    assert (listed.status_code, written.status_code, beyond.status_code) == (200, 201, 404)
    targets = client.get("/admin/state").json()["targets"]
    assert [(t["subscription_id"], t["kind"], t["id"]) for t in targets] == [(10**12, "service", 3)]
