"""The seeded catalogue and the overrides left by writes."""

from __future__ import annotations

import pytest

from subswitch.simulator.store import SEED_MODIFIED, Store, rfc3339


def test_every_subscription_has_the_seed_services() -> None:
    # Given a store of 1000 subscriptions
    store = Store(("telco",), 1000)
    # When the services of two subscriptions are listed
    first, last = store.services("telco", 1), store.services("telco", 1000)
    # Then both show the same four services in their seed state
    expected = [
        {"id": 1, "value": "VOZ", "changeable": True, "active": True},
        {"id": 2, "value": "DATOS", "changeable": True, "active": True},
        {"id": 3, "value": "ROAMING", "changeable": True, "active": False},
        {"id": 4, "value": "SMS_PREMIUM", "changeable": False, "active": False},
    ]
    for listing in (first, last):
        assert [{k: v for k, v in s.items() if k != "date_last_modified"} for s in listing] == (
            expected
        )
        assert {s["date_last_modified"] for s in listing} == {SEED_MODIFIED}


def test_blocks_start_lifted() -> None:
    # Given a fresh store
    store = Store(("telco",), 10)
    # Then no block is in place and both blocks are inactive
    assert store.active_blocks("telco", 3) == []
    assert store.state(("telco", 3, "block", 1)).active is False
    assert store.state(("telco", 3, "block", 2)).active is False


@pytest.mark.parametrize(
    ("org_id", "subscription_id", "exists"),
    [("telco", 1, True), ("telco", 50, True), ("telco", 0, False), ("telco", 51, False),
     ("acme", 1, False)],
)  # fmt: skip
def test_subscriptions_are_one_to_n_of_known_orgs(
    org_id: str, subscription_id: int, exists: bool
) -> None:
    # Given a store of org telco with 50 subscriptions
    store = Store(("telco",), 50)
    # Then exactly ids 1..50 of telco exist
    assert store.has_subscription(org_id, subscription_id) is exists


def test_a_write_changes_only_its_target() -> None:
    # Given a store
    store = Store(("telco",), 10)
    # When block 2 of subscription 4 is put on with a reason
    store.apply(("telco", 4, "block", 2), True, "Lo ha perdido", 1_700_000_000.5)
    # Then it is listed with that reason and date, and nothing else changed
    assert store.active_blocks("telco", 4) == [
        {
            "id": 2,
            "value": "PERDIDA",
            "date_last_modified": "2023-11-14T22:13:20.500Z",
            "description": "Lo ha perdido",
            "active": True,
        }
    ]
    assert store.active_blocks("telco", 5) == []
    assert store.written() == [("telco", 4, "block", 2)]
    assert store.describe(("telco", 4, "block", 2))["writes_applied"] == 1


def test_huge_subscription_counts_are_not_materialised() -> None:
    # Given a store of a billion billion subscriptions
    store = Store(("telco",), 10**18)
    # When the last subscription is read
    services = store.services("telco", 10**18)
    # Then it exists, and reading it left nothing behind
    assert store.has_subscription("telco", 10**18)
    assert len(services) == 4
    assert store.written() == []


def test_clear_returns_to_the_seed_state() -> None:
    # Given a store with a write
    store = Store(("telco",), 10)
    store.apply(("telco", 1, "service", 1), False, None, 1.0)
    # When it is cleared
    store.clear()
    # Then the service is back to its seed state
    assert store.state(("telco", 1, "service", 1)).active is True
    assert store.written() == []


def test_rfc3339_has_milliseconds_and_utc_suffix() -> None:
    # Then epoch 0.25 is formatted with milliseconds in UTC
    assert rfc3339(0.25) == "1970-01-01T00:00:00.250Z"
