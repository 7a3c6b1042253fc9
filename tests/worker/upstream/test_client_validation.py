"""Bad input is refused before any request leaves the process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.worker.upstream.conftest import ClientFactory, Recorder, answer
from worker.upstream import InvalidRequestError, MasStackClient, PermanentError

BAD_ORG_IDS = ["a/b", "..", ".", "%2F", "a%2Fb", "a b", "", "x" * 65, "-lead", "telco\n", "é"]
BAD_INT64_IDS: list[Any] = [0, -1, 2**63, True, False, 1.0, "7", None]


@pytest.fixture
def client_and_recorder(make_client: ClientFactory) -> tuple[MasStackClient, Recorder]:
    return make_client(answer(201))


def assert_refused_before_sending(
    recorder: Recorder, caught: pytest.ExceptionInfo[InvalidRequestError], field: str
) -> None:
    assert recorder.requests == []
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.status is None
    assert field in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("org_id", BAD_ORG_IDS)
def test_bad_org_ids_are_refused(
    client_and_recorder: tuple[MasStackClient, Recorder], org_id: str
) -> None:
    # Given a client
    client, recorder = client_and_recorder
    # When any call gets an org id that is not one safe path segment
    calls: list[Callable[[], object]] = [
        lambda: client.change_block_status(org_id, 7, 1, active=True, idempotency_key="k"),
        lambda: client.change_service_status(org_id, 7, 1, active=True, idempotency_key="k"),
        lambda: client.list_blocks(org_id, 7),
        lambda: client.list_services(org_id, 7),
    ]
    for call in calls:
        with pytest.raises(InvalidRequestError) as caught:
            call()
        # Then it is refused with the field named, and nothing was sent
        assert_refused_before_sending(recorder, caught, "org_id")


def test_longest_valid_org_id_is_accepted(
    client_and_recorder: tuple[MasStackClient, Recorder],
) -> None:
    # Given a 64-character org id with every allowed kind of character
    client, recorder = client_and_recorder
    org_id = "A" + "b9_-" * 15 + "xyz"
    assert len(org_id) == 64
    # When a block is changed / Then it goes out
    client.change_block_status(org_id, 7, 1, active=True, idempotency_key="k")
    assert recorder.last.url.path == f"/v2/orgs/{org_id}/subscriptions/7/blocks/1"


@pytest.mark.parametrize("subscription_id", BAD_INT64_IDS)
def test_bad_subscription_ids_are_refused(
    client_and_recorder: tuple[MasStackClient, Recorder], subscription_id: Any
) -> None:
    # Given a client
    client, recorder = client_and_recorder
    # When a write and a read get a subscription id outside 1..2^63-1 or not an int
    calls: list[Callable[[], object]] = [
        lambda: client.change_block_status(
            "telco", subscription_id, 1, active=True, idempotency_key="k"
        ),
        lambda: client.list_services("telco", subscription_id),
    ]
    for call in calls:
        with pytest.raises(InvalidRequestError) as caught:
            call()
        # Then it is refused before sending
        assert_refused_before_sending(recorder, caught, "subscription_id")


@pytest.mark.parametrize("service_id", BAD_INT64_IDS)
def test_bad_service_ids_are_refused(
    client_and_recorder: tuple[MasStackClient, Recorder], service_id: Any
) -> None:
    client, recorder = client_and_recorder
    # When a service write gets a bad service id
    with pytest.raises(InvalidRequestError) as caught:
        client.change_service_status("telco", 7, service_id, active=True, idempotency_key="k")
    # Then it is refused before sending
    assert_refused_before_sending(recorder, caught, "service_id")


@pytest.mark.parametrize("block_id", [0, 3, -1, True, 2**63, "1"])
def test_bad_block_ids_are_refused(
    client_and_recorder: tuple[MasStackClient, Recorder], block_id: Any
) -> None:
    client, recorder = client_and_recorder
    # When a block write gets a block id other than 1 or 2
    with pytest.raises(InvalidRequestError) as caught:
        client.change_block_status("telco", 7, block_id, active=True, idempotency_key="k")
    # Then it is refused before sending
    assert_refused_before_sending(recorder, caught, "block_id")


@pytest.mark.parametrize("key", ["", "x" * 129, "a b", "a/b", "ключ", "k\r\nX-Evil: 1", None, 12])
def test_bad_idempotency_keys_are_refused(
    client_and_recorder: tuple[MasStackClient, Recorder], key: Any
) -> None:
    client, recorder = client_and_recorder
    # When writes get an idempotency key outside 1-128 chars of [A-Za-z0-9._:-]
    calls: list[Callable[[], object]] = [
        lambda: client.change_block_status("telco", 7, 1, active=True, idempotency_key=key),
        lambda: client.change_service_status("telco", 7, 1, active=True, idempotency_key=key),
    ]
    for call in calls:
        with pytest.raises(InvalidRequestError) as caught:
            call()
        # Then they are refused before sending
        assert_refused_before_sending(recorder, caught, "idempotency_key")


def test_longest_idempotency_key_is_accepted(
    client_and_recorder: tuple[MasStackClient, Recorder],
) -> None:
    client, recorder = client_and_recorder
    key = "k" * 128
    client.change_block_status("telco", 7, 1, active=True, idempotency_key=key)
    assert recorder.last.headers["Idempotency-Key"] == key


@pytest.mark.parametrize("request_id", ["", "a b", "x\nY: z", "r" * 129])
def test_bad_request_ids_are_refused(
    client_and_recorder: tuple[MasStackClient, Recorder], request_id: str
) -> None:
    client, recorder = client_and_recorder
    with pytest.raises(InvalidRequestError) as caught:
        client.change_block_status(
            "telco", 7, 1, active=True, idempotency_key="k", request_id=request_id
        )
    assert_refused_before_sending(recorder, caught, "request_id")


@pytest.mark.parametrize(
    ("reason", "expected_text"),
    [
        ("x" * 256, "256 characters"),
        ("line\nbreak", "control character"),
        ("tab\there", "control character"),
        ("del\x7f", "control character"),
        (42, "must be a str"),
    ],
)
def test_bad_reasons_are_refused(
    client_and_recorder: tuple[MasStackClient, Recorder], reason: Any, expected_text: str
) -> None:
    client, recorder = client_and_recorder
    # When a block write gets a reason that is too long or has control characters
    with pytest.raises(InvalidRequestError) as caught:
        client.change_block_status("telco", 7, 1, active=True, reason=reason, idempotency_key="k")
    # Then it is refused before sending, saying why
    assert_refused_before_sending(recorder, caught, "reason")
    assert expected_text in str(caught.value)


def test_longest_reason_with_unicode_is_accepted(
    client_and_recorder: tuple[MasStackClient, Recorder],
) -> None:
    client, recorder = client_and_recorder
    reason = "ñ" * 255
    client.change_block_status("telco", 7, 1, active=True, reason=reason, idempotency_key="k")
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("active", [1, 0, "true", None])
def test_non_bool_active_is_refused(
    client_and_recorder: tuple[MasStackClient, Recorder], active: Any
) -> None:
    client, recorder = client_and_recorder
    calls: list[Callable[[], object]] = [
        lambda: client.change_block_status("telco", 7, 1, active=active, idempotency_key="k"),
        lambda: client.change_service_status("telco", 7, 1, active=active, idempotency_key="k"),
    ]
    for call in calls:
        with pytest.raises(InvalidRequestError) as caught:
            call()
        assert_refused_before_sending(recorder, caught, "active")
