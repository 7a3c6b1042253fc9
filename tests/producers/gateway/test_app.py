"""The gateway's HTTP behaviour, in process, on in-memory parts (see conftest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from httpx import Response

from subswitch.contract import (
    ChangeBlockStatus,
    Lane,
    Outcome,
    ResultEvent,
    parse_command,
    result_event,
)
from subswitch.errors import StoreError
from subswitch.policy import Policy
from subswitch.signing import detach_signature
from subswitch.status import CommandStatus
from tests.producers.gateway.conftest import (
    BATCH_KEY,
    BILLING_KEY,
    FRAUD_KEY,
    GATEWAY_SIGNER,
    Gateway,
)

PROBLEM = "application/problem+json"


def service(**fields: Any) -> dict[str, Any]:
    command = {
        "type": "ChangeServiceStatus",
        "org_id": "telco",
        "subscription_id": 7,
        "service_id": 2,
        "active": False,
    }
    return command | fields


def block(**fields: Any) -> dict[str, Any]:
    command = {
        "type": "ChangeBlockStatus",
        "org_id": "telco",
        "subscription_id": 7,
        "block_id": 1,
        "active": True,
        "reason": "stolen",
        "priority": "urgent",
    }
    return command | fields


def post(gateway: Gateway, body: object, key: str = BILLING_KEY) -> Response:
    response = gateway.post(body, key)
    assert isinstance(response, Response)
    return response


def test_one_command_is_accepted_with_its_location_and_the_sdk_defaults(
    gateway: Gateway,
) -> None:
    # When billing posts a service change without id, time or source
    response = post(gateway, service())
    # Then it is accepted, with the location of its status
    assert response.status_code == 202
    command_id = response.json()["command_id"]
    assert response.headers["location"] == f"/v1/commands/{command_id}"
    assert response.json() == {"command_id": command_id, "location": f"/v1/commands/{command_id}"}
    # And it was enqueued on its lane with the key's producer as source and now as time
    (command,) = gateway.publisher.commands
    assert command.command_id == command_id
    assert command.source == "billing"
    assert abs(command.issued_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert gateway.publisher.sent[0][0] == Lane.NORMAL.queue


def test_what_it_enqueues_is_signed_by_the_gateway_and_verifies(
    gateway: Gateway, policy: Policy
) -> None:
    # When fraud-engine's key posts a block and billing's key a batch of bulk commands
    post(gateway, block(), key=FRAUD_KEY)
    post(gateway, {"commands": [service(priority="bulk")]}, key=BILLING_KEY)
    # Then every message carries the gateway's signature, which the workers' policy
    # accepts for the command's source
    bodies = [body for _, body in gateway.publisher.sent]
    bodies += [body for chunk in gateway.publisher.chunks for body in chunk.commands]
    assert len(bodies) == 2
    for body in bodies:
        fields, signature = detach_signature(body)
        assert policy.check_message(parse_command(fields), signature) is None
        assert isinstance(signature, dict) and signature["key_id"] == GATEWAY_SIGNER.key_id


def test_the_same_command_again_gets_the_same_answer(gateway: Gateway) -> None:
    # Given a command accepted once
    first = post(gateway, service(command_id="bill-1"))
    # When it is posted again (its issued_at differs: it is still the same command)
    again = post(gateway, service(command_id="bill-1"))
    # Then the answer is the same
    assert (again.status_code, again.json(), again.headers["location"]) == (
        first.status_code,
        first.json(),
        first.headers["location"],
    )


def test_a_reused_command_id_with_another_payload_is_409_and_not_enqueued(
    gateway: Gateway,
) -> None:
    # Given a command accepted
    post(gateway, service(command_id="bill-2"))
    # When the same id comes with another payload
    response = post(gateway, service(command_id="bill-2", active=True))
    # Then it is refused as a conflict, naming the field, and nothing more was enqueued
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["errors"][0]["field"] == "command_id"
    assert len(gateway.publisher.sent) == 1


def test_a_batch_names_each_bad_field_by_index_and_enqueues_nothing(gateway: Gateway) -> None:
    # When a batch holds two bad commands among good ones
    body = {"commands": [service(), service(service_id=0), service(), service(active="yes")]}
    response = post(gateway, body)
    # Then each problem names its command's index and field path
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problems = {(e["index"], e["field"]) for e in response.json()["errors"]}
    assert problems == {(1, "service_id"), (3, "active")}
    # And nothing of the batch was enqueued or recorded
    assert gateway.publisher.sent == [] and gateway.publisher.chunks == []
    assert gateway.acceptances.fingerprints == {}


def test_bulk_commands_go_in_chunks_and_others_one_by_one(gateway: Gateway) -> None:
    # When a batch mixes seven bulk commands (chunks of 3) and one normal one
    bulk = [service(subscription_id=n, priority="bulk") for n in range(1, 8)]
    response = post(gateway, {"commands": [*bulk, service(subscription_id=99)]})
    # Then every command is accepted, in the request's order
    assert response.status_code == 202
    items = response.json()["commands"]
    assert [item["index"] for item in items] == list(range(8))
    assert response.json()["accepted"] == 8
    # And the bulk ones travelled as chunks of 3, 3 and 1, the other alone on its lane
    assert [len(chunk.commands) for chunk in gateway.publisher.chunks] == [3, 3, 1]
    assert [queue for queue, _ in gateway.publisher.sent] == [Lane.NORMAL.queue]


def test_a_source_the_key_may_not_speak_for_is_refused(gateway: Gateway) -> None:
    # When billing's key claims fraud-engine's source
    response = post(gateway, block(source="fraud-engine"), key=BILLING_KEY)
    # Then it is forbidden, naming the field, and nothing is enqueued
    assert response.status_code == 403
    assert response.json()["errors"][0]["field"] == "source"
    assert gateway.publisher.sent == []


def test_each_key_is_held_to_its_producers_rules(gateway: Gateway) -> None:
    # When billing lifts block 1 (theft), which its rules never allow
    refused = post(gateway, block(active=False, priority="normal"), key=BILLING_KEY)
    # And fraud-engine puts it on, urgent
    allowed = post(gateway, block(), key=FRAUD_KEY)
    # Then billing is refused with the rule's reason, and fraud-engine accepted
    assert refused.status_code == 403
    assert refused.json()["errors"][0]["message"]
    assert allowed.status_code == 202
    assert [c.source for c in gateway.publisher.commands] == ["fraud-engine"]


def test_a_glob_producer_must_name_its_source(gateway: Gateway) -> None:
    # When the batch:* key posts without a source, then with one
    unnamed = post(gateway, service(priority="bulk"), key=BATCH_KEY)
    named = post(gateway, service(priority="bulk", source="batch:dunning-7"), key=BATCH_KEY)
    # Then the first is invalid (which batch?), the second accepted
    assert unnamed.status_code == 422
    assert unnamed.json()["errors"][0]["field"] == "source"
    assert named.status_code == 202


def test_a_command_far_ahead_of_the_clock_is_invalid(gateway: Gateway) -> None:
    # When a command is stamped a day ahead
    ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    response = post(gateway, service(issued_at=ahead))
    # Then issued_at is named and nothing is enqueued
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "issued_at"
    assert gateway.publisher.sent == []


def test_one_id_for_two_commands_in_a_batch_is_invalid(gateway: Gateway) -> None:
    # When a batch gives one id to two different commands
    body = {"commands": [service(command_id="x"), service(command_id="x", active=True)]}
    response = post(gateway, body)
    # Then the second is named, and nothing is enqueued
    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [(1, "command_id")]
    assert gateway.publisher.sent == []


def test_without_a_valid_key_it_is_401_with_a_challenge(gateway: Gateway) -> None:
    # When a request comes without a key, and one with an unknown key
    missing = gateway.client.post("/v1/commands", json=service())
    unknown = post(gateway, service(), key="not-a-key")
    # Then both are 401 problems asking for a bearer token, and nothing is enqueued
    for response in (missing, unknown):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == PROBLEM
    assert "not-a-key" not in unknown.text
    assert gateway.publisher.sent == []


def test_a_broker_that_fails_is_503_with_retry_after_and_leaves_no_record(
    gateway: Gateway,
) -> None:
    # Given a broker that refuses every message
    gateway.publisher.fail = True
    # When a command is posted
    response = post(gateway, service(command_id="bill-3"))
    # Then it is 503 with Retry-After, and no acceptance record claims the command
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == PROBLEM
    assert "bill-3" not in gateway.acceptances.fingerprints
    # And the broker's own reason (hosts, ports) stays in the log, not in the answer
    assert "told to fail" not in response.text
    # And once the broker is back the same command is accepted as new
    gateway.publisher.fail = False
    assert post(gateway, service(command_id="bill-3")).status_code == 202


def test_a_broker_failing_mid_batch_names_what_it_took(gateway: Gateway) -> None:
    # Given a broker that takes one chunk and then fails
    gateway.publisher.fail_after = 1
    bulk = [service(subscription_id=n, priority="bulk", command_id=f"b-{n}") for n in range(1, 7)]
    # When a batch of two chunks is posted
    response = post(gateway, {"commands": bulk})
    # Then it is 503, listing the first chunk as accepted; only those keep a record
    assert response.status_code == 503
    assert [item["command_id"] for item in response.json()["accepted"]] == ["b-1", "b-2", "b-3"]
    assert set(gateway.acceptances.fingerprints) == {"b-1", "b-2", "b-3"}
    # And the same batch re-sent is accepted in full
    gateway.publisher.fail_after = None
    assert post(gateway, {"commands": bulk}).status_code == 202


def test_a_store_that_fails_is_503(gateway: Gateway) -> None:
    gateway.acceptances.fail = True
    response = post(gateway, service())
    assert response.status_code == 503
    assert gateway.publisher.sent == []


def test_status_of_a_command(gateway: Gateway) -> None:
    # Given a command the status reader knows, and one it does not
    gateway.status.known["c-1"] = CommandStatus(command_id="c-1", state="queued")
    headers = {"Authorization": f"Bearer {BILLING_KEY}"}
    # When their status is asked
    known = gateway.client.get("/v1/commands/c-1", headers=headers)
    unseen = gateway.client.get("/v1/commands/never-seen", headers=headers)
    # Then the first is queued, the second unknown (not an error)
    assert (known.status_code, known.json()["state"]) == (200, "queued")
    assert (unseen.status_code, unseen.json()["state"]) == (200, "unknown")


def test_a_store_that_fails_a_status_read_is_503_and_a_bug_is_a_500_problem(
    gateway: Gateway,
) -> None:
    # Given a store that does not answer
    gateway.status.fail = StoreError("store unavailable: connection refused")
    away = gateway.client.get("/v1/commands/c-1", headers=_auth(BILLING_KEY))
    # And then a status reader with a bug
    gateway.status.fail = RuntimeError("a bug with a secret in it")
    broken = gateway.client.get("/v1/commands/c-1", headers=_auth(BILLING_KEY))
    # Then the first is 503 with Retry-After, the second a 500 that shows nothing of it
    assert (away.status_code, away.headers["retry-after"]) == (503, "5")
    assert away.headers["content-type"] == PROBLEM
    assert broken.status_code == 500
    assert broken.headers["content-type"] == PROBLEM
    assert "secret" not in broken.text


def test_another_producers_command_is_unknown_to_a_key(gateway: Gateway) -> None:
    # Given an applied command of fraud-engine
    event = _applied_event("fraud-1", source="fraud-engine")
    gateway.status.known["fraud-1"] = CommandStatus(
        command_id="fraud-1", state="applied", event=event
    )
    # When billing's key and fraud-engine's ask for it
    as_billing = gateway.client.get("/v1/commands/fraud-1", headers=_auth(BILLING_KEY))
    as_fraud = gateway.client.get("/v1/commands/fraud-1", headers=_auth(FRAUD_KEY))
    # Then only fraud-engine sees it
    assert as_billing.json()["state"] == "unknown"
    assert as_fraud.json()["state"] == "applied"


def test_errors_are_problems_everywhere(gateway: Gateway) -> None:
    # When requests go wrong in every way the router and the guard know
    headers = _auth(BILLING_KEY)
    answers = {
        404: gateway.client.get("/v2/nothing"),
        405: gateway.client.delete("/v1/commands"),
        415: gateway.client.post("/v1/commands", content=b"x", headers=headers),
        413: gateway.client.post(
            "/v1/commands",
            content=b"[" + b" " * 70_000 + b"]",
            headers=headers | {"content-type": "application/json"},
        ),
        400: gateway.client.post(
            "/v1/commands", content=b"{oops", headers=headers | {"content-type": "application/json"}
        ),
        422: gateway.client.get("/v1/commands/bad%20id", headers=headers),
    }
    # Then each is a problem document with its status
    for status, response in answers.items():
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == status


def test_readiness_names_what_is_away(gateway: Gateway) -> None:
    # Given everything up, then the broker down
    ready = gateway.client.get("/readyz")
    gateway.broker.down = True
    not_ready = gateway.client.get("/readyz")
    # Then readiness follows, and liveness does not
    assert ready.status_code == 200
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["broker"] == "unavailable"
    assert gateway.client.get("/healthz").status_code == 200


def test_metrics_count_requests_by_route_and_status(gateway: Gateway) -> None:
    # Given one accepted and one unauthenticated request, and a status read
    post(gateway, service())
    gateway.client.post("/v1/commands", json=service())
    gateway.client.get("/v1/commands/abc", headers=_auth(BILLING_KEY))
    # When the metrics are read
    text = gateway.client.get("/metrics").text
    # Then each route and status is counted, by template, with a latency histogram
    assert 'subswitch_gateway_requests_total{route="/v1/commands",status="202"} 1.0' in text
    assert 'subswitch_gateway_requests_total{route="/v1/commands",status="401"} 1.0' in text
    assert (
        'subswitch_gateway_requests_total{route="/v1/commands/{command_id}",status="200"} 1.0'
        in text
    )
    assert 'subswitch_gateway_request_duration_seconds_count{route="/v1/commands"} 2.0' in text


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _applied_event(command_id: str, *, source: str) -> ResultEvent:
    command = ChangeBlockStatus.model_validate(block(command_id=command_id, source=source))
    return result_event(
        command, outcome=Outcome.APPLIED, attempts=1, completed_at=datetime.now(UTC)
    )
