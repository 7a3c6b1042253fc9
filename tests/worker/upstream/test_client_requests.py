"""What the client puts on the wire: paths, headers, bodies, query; what it parses back."""

from __future__ import annotations

import enum
import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from tests.worker.upstream.conftest import TOKEN, ClientFactory, answer, new_client
from worker.upstream import (
    MalformedResponseError,
    NoAuth,
    ServiceQuery,
    StaticToken,
)

SERVICES = {
    "subscription_id": 7,
    "items": [
        {
            "id": 214748364,
            "value": "VOZ",
            "changeable": True,
            "date_last_modified": "2017-09-15T22:00:00Z",
            "active": True,
            "billing_code": "X1",
        }
    ],
    "next": None,
}
BLOCKS = {
    "subscription_id": 7,
    "items": [
        {
            "id": 1,
            "value": "ROBO",
            "date_last_modified": "2017-09-15T22:00:00Z",
            "description": "A PETICION DE CLIENTE",
            "channel": "app",
        }
    ],
}


def test_block_write_sends_path_headers_and_body(make_client: ClientFactory) -> None:
    # Given an upstream that accepts everything
    client, recorder = make_client(answer(201))
    # When a block is put on with a reason, a key and a request id
    client.change_block_status(
        "telco",
        214748364,
        1,
        active=True,
        reason="Lo ha perdido",
        idempotency_key="fraud-case-8812-block",
        request_id="req-1",
    )
    # Then exactly this request went out
    request = recorder.last
    assert request.method == "PATCH"
    assert (
        str(request.url) == "https://customers.test/v2/orgs/telco/subscriptions/214748364/blocks/1"
    )
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["x-auth-roles"] == "API_KEY"
    assert request.headers["Idempotency-Key"] == "fraud-case-8812-block"
    assert request.headers["X-Request-ID"] == "req-1"
    assert json.loads(request.content) == {"active": True, "reason": "Lo ha perdido"}


def test_block_write_without_reason_omits_it(make_client: ClientFactory) -> None:
    # Given an upstream that accepts everything
    client, recorder = make_client(answer(201))
    # When a block is lifted without a reason
    client.change_block_status("telco", 7, 2, active=False, idempotency_key="k")
    # Then the body carries only "active"
    assert json.loads(recorder.last.content) == {"active": False}


def test_service_write_sends_path_and_body(make_client: ClientFactory) -> None:
    # Given an upstream that accepts everything
    client, recorder = make_client(answer(201))
    # When a service is switched off
    client.change_service_status("acme", 9, 2**63 - 1, active=False, idempotency_key="a.b:c-d_e")
    # Then the path carries the ids as plain decimals and the body only "active"
    request = recorder.last
    assert request.url.path == f"/v2/orgs/acme/subscriptions/9/services/{2**63 - 1}"
    assert json.loads(request.content) == {"active": False}
    assert request.headers["Idempotency-Key"] == "a.b:c-d_e"


def test_each_request_gets_a_fresh_uuid_request_id(make_client: ClientFactory) -> None:
    # Given an upstream that accepts everything
    client, recorder = make_client(answer(201))
    # When two writes go out without a request id
    client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    # Then each carries its own UUID4
    ids = [r.headers["X-Request-ID"] for r in recorder.requests]
    assert ids[0] != ids[1]
    assert all(uuid.UUID(i).version == 4 for i in ids)


@pytest.mark.parametrize("base_url", ["https://customers.test/v2", "https://customers.test/v2/"])
def test_paths_join_the_base_with_or_without_trailing_slash(
    make_client: ClientFactory, base_url: str
) -> None:
    # Given a base URL with or without its trailing slash
    client, recorder = make_client(answer(200, BLOCKS), base_url=base_url)
    # When blocks are listed
    client.list_blocks("telco", 7)
    # Then the path sits under /v2/ exactly once
    assert str(recorder.last.url) == "https://customers.test/v2/orgs/telco/subscriptions/7/blocks"


def test_int_subclasses_are_formatted_as_numbers(make_client: ClientFactory) -> None:
    # Given an IntEnum id, whose str() would be its name
    class Ids(enum.IntEnum):
        THEFT = 1

    client, recorder = make_client(answer(201))
    # When it is used as a block id / Then the path carries the number
    client.change_block_status("telco", 7, Ids.THEFT, active=True, idempotency_key="k")
    assert recorder.last.url.path.endswith("/blocks/1")


def test_reads_send_no_write_headers(make_client: ClientFactory) -> None:
    # Given an upstream listing services
    client, recorder = make_client(answer(200, SERVICES))
    # When services are listed
    client.list_services("telco", 7)
    # Then it is a plain GET with the common headers only
    request = recorder.last
    assert request.method == "GET"
    assert "Idempotency-Key" not in request.headers
    assert "Content-Type" not in request.headers
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert uuid.UUID(request.headers["X-Request-ID"])
    assert request.url.query == b""


def test_list_services_parses_items_and_tolerates_extra_fields(make_client: ClientFactory) -> None:
    # Given a services answer with fields the documentation does not list
    client, _ = make_client(answer(200, SERVICES))
    # When services are listed
    services = client.list_services("telco", 7)
    # Then the documented fields are parsed and the rest ignored
    assert services.subscription_id == 7
    (voice,) = services.items
    assert voice.id == 214748364
    assert voice.value == "VOZ"
    assert voice.changeable is True
    assert voice.active is True
    assert voice.date_last_modified == datetime(2017, 9, 15, 22, tzinfo=UTC)


def test_list_services_sends_the_query_as_json(make_client: ClientFactory) -> None:
    # Given an upstream listing services
    client, recorder = make_client(answer(200, {"subscription_id": 7, "items": []}))
    # When services are listed with a filter
    client.list_services("telco", 7, query=ServiceQuery(filter=["active"], include=["VOZ"]))
    # Then the query parameter is the compact JSON object
    query = recorder.last.url.params["query"]
    assert json.loads(query) == {"filter": ["active"], "include": ["VOZ"]}


def test_list_blocks_parses_items(make_client: ClientFactory) -> None:
    # Given a blocks answer with an extra field
    client, recorder = make_client(answer(200, BLOCKS))
    # When blocks are listed
    blocks = client.list_blocks("telco", 7)
    # Then the block is parsed
    assert recorder.last.url.path == "/v2/orgs/telco/subscriptions/7/blocks"
    (theft,) = blocks.items
    assert (theft.id, theft.value, theft.description) == (1, "ROBO", "A PETICION DE CLIENTE")


@pytest.mark.parametrize(
    ("body", "expected_text"),
    [
        (b"{not json", "non-JSON body"),
        (b"\xff\xfe", "non-JSON body"),
        (b"", "non-JSON body"),
        ({"items": "nope"}, "not a SubscriptionBlocks (items:"),
        ({"subscription_id": 7}, "not a SubscriptionBlocks (items:"),
        ([], "not a SubscriptionBlocks"),
        ({"items": [{"value": "ROBO"}]}, "items.0.id"),
    ],
)
def test_malformed_list_bodies_are_mapped(
    make_client: ClientFactory, body: object, expected_text: str
) -> None:
    # Given a 200 whose body is not a SubscriptionBlocks
    client, _ = make_client(answer(200, body))
    # When blocks are listed
    with pytest.raises(MalformedResponseError) as caught:
        client.list_blocks("telco", 7)
    # Then a permanent, one-line error names the problem (never a raw parsing error)
    assert caught.value.status == 200
    assert expected_text in str(caught.value)
    assert "\n" not in str(caught.value)


def test_no_auth_sends_no_authorization_and_roles_can_be_off(make_client: ClientFactory) -> None:
    # Given a client without a token and without roles
    client, recorder = make_client(answer(201), auth=NoAuth(), auth_roles=None)
    # When a block is changed
    client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    # Then neither header is sent
    assert "Authorization" not in recorder.last.headers
    assert "x-auth-roles" not in recorder.last.headers


def test_default_timeouts_and_pool_limits() -> None:
    # Given a client built without a transport, with the settings' default timeouts
    client = new_client(base_url="http://127.0.0.1:9/v2", auth=NoAuth())
    # Then its timeouts are the documented defaults and the pool fits 64 threads
    http = client._http
    assert http.timeout == httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=5.0)
    pool = http._transport._pool  # type: ignore[attr-defined]
    assert pool._max_connections == 100
    assert pool._max_keepalive_connections == 100
    client.close()


def test_repr_shows_base_url_only() -> None:
    # Given a client whose base URL carries credentials
    client = new_client(
        base_url="https://user:pw@customers.test/v2",
        auth=StaticToken(SecretStr(TOKEN)),
    )
    # Then its repr shows the base URL without them and without the token
    assert repr(client) == "MasStackClient(base_url='https://customers.test/v2/')"
    client.close()


def test_context_manager_closes_the_pool() -> None:
    # Given a client used as a context manager
    with new_client(base_url="https://customers.test/v2", auth=NoAuth()) as client:
        pass
    # Then its HTTP client is closed afterwards
    assert client._http.is_closed
