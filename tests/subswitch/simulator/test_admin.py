"""The admin view over ASGI: state, writes, stats, faults, reset, health."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.subswitch.simulator.helpers import AUTH, START, ClientFactory, FakeClock

SUB = "/v2/orgs/telco/subscriptions/7"


def _write(client: TestClient, path: str, body: dict[str, object], key: str | None = None) -> int:
    headers = AUTH | ({"Idempotency-Key": key} if key else {})
    status: int = client.patch(f"{SUB}/{path}", json=body, headers=headers).status_code
    return status


def test_health(client: TestClient) -> None:
    # Then /healthz answers ok
    assert client.get("/healthz").json() == {"status": "ok"}


def test_state_lists_written_targets(client: TestClient) -> None:
    # Given a fresh simulator, there is no written target
    assert client.get("/admin/state").json() == {"targets": []}
    # When a block is put on twice and a service switched off
    _write(client, "blocks/1", {"active": True, "reason": "robado"})
    _write(client, "blocks/1", {"active": True, "reason": "robado de nuevo"})
    _write(client, "services/2", {"active": False})
    # Then both targets are listed with their state and number of applied writes
    assert client.get("/admin/state").json() == {
        "targets": [
            {"org_id": "telco", "subscription_id": 7, "kind": "block", "id": 1, "active": True,
             "reason": "robado de nuevo", "date_last_modified": "2023-11-14T22:13:20.000Z",
             "writes_applied": 2},
            {"org_id": "telco", "subscription_id": 7, "kind": "service", "id": 2,
             "active": False, "reason": None, "date_last_modified": "2023-11-14T22:13:20.000Z",
             "writes_applied": 1},
        ]
    }  # fmt: skip


def test_one_target_shows_seed_state_until_written(client: TestClient) -> None:
    # When an unwritten target is read
    target = client.get("/admin/state/acme/9/service/3").json()
    # Then it shows the seed state
    assert target == {
        "org_id": "acme", "subscription_id": 9, "kind": "service", "id": 3, "active": False,
        "reason": None, "date_last_modified": "2017-09-15T22:00:00Z", "writes_applied": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "path",
    ["nope/7/block/1", "telco/1001/block/1", "telco/7/block/3", "telco/7/service/5",
     "telco/7/widget/1", "telco/x/block/1", "telco/7/block/y"],
)  # fmt: skip
def test_unknown_targets_are_404(client: TestClient, path: str) -> None:
    # When a target that cannot exist is asked for
    response = client.get(f"/admin/state/{path}")
    # Then it is a 404
    assert response.status_code == 404


def test_writes_log_every_attempt_and_pages(client: TestClient) -> None:
    # Given an applied write, a refused one and an unauthenticated one
    _write(client, "blocks/1", {"active": True})
    _write(client, "services/4", {"active": True})
    client.patch(f"{SUB}/blocks/2", json={"active": True})
    # When the log is read one record at a time
    first = client.get("/admin/writes", params={"limit": 1}).json()
    rest = client.get("/admin/writes", params={"since": first["next"]}).json()
    # Then all three attempts come in order with their outcomes
    writes = first["writes"] + rest["writes"]
    assert [(w["seq"], w["status"], w["applied"]) for w in writes] == [
        (1, 201, True),
        (2, 400, False),
        (3, 401, False),
    ]
    assert (first["next"], rest["next"]) == (1, 3)
    assert writes[0]["time"] == START


@pytest.mark.parametrize("params", [{"since": "-1"}, {"since": "x"}, {"limit": "0"},
                                    {"limit": "100001"}])  # fmt: skip
def test_bad_write_log_parameters_are_400(client: TestClient, params: dict[str, str]) -> None:
    # When the log is read with a bad parameter
    # Then it is a 400
    assert client.get("/admin/writes", params=params).status_code == 400


def test_write_log_is_capped(make_client: ClientFactory) -> None:
    # Given a simulator keeping three log records
    client = make_client(write_log_cap=3)
    # When five writes arrive
    for n in range(5):
        _write(client, "blocks/1", {"active": n % 2 == 0})
    # Then the last three are kept
    assert [w["seq"] for w in client.get("/admin/writes").json()["writes"]] == [3, 4, 5]


def test_stats_count_writes_per_second_and_duplicate_keys(
    client: TestClient, clock: FakeClock
) -> None:
    # Given two writes in one second with the same idempotency key, one the next second
    _write(client, "blocks/1", {"active": True}, key="cmd-1")
    _write(client, "blocks/1", {"active": True}, key="cmd-1")
    clock.advance(1)
    _write(client, "services/3", {"active": True}, key="cmd-2")
    # When the stats are read
    stats = client.get("/admin/stats").json()
    # Then they show the totals, the rate per second and the duplicate key
    assert stats == {
        "writes_total": 3,
        "writes_applied": 3,
        "max_in_flight_per_target": {"telco/7/block/1": 1, "telco/7/service/3": 1},
        "max_in_flight_any": 1,
        "max_in_flight_total": 1,
        "in_flight_now": 0,
        "applied_per_idempotency_key_max": 2,
        "duplicate_applies": {"cmd-1": 2},
        "writes_per_second": {"1700000000": 2, "1700000001": 1},
        "max_writes_in_any_second": 2,
        "started_at": START,
    }


def test_faults_put_merges(client: TestClient) -> None:
    # When two faults are set one after the other
    client.put("/admin/faults", json={"p_500": 0.5})
    answer = client.put("/admin/faults", json={"latency_ms": 20, "retry_after_http_date": True})
    # Then both are in force
    assert answer.status_code == 200
    faults = client.get("/admin/faults").json()
    assert faults == answer.json()
    assert (faults["p_500"], faults["latency_ms"], faults["retry_after_http_date"]) == (
        0.5,
        20.0,
        True,
    )


@pytest.mark.parametrize(
    ("body", "hint"),
    [({"p_5000": 1}, "unknown fault option(s) ['p_5000']"), ({"p_500": 2}, "p_500"),
     ({"latency_ms": -1}, "latency_ms"), ({"retry_after_http_date": "yes"}, "retry_after"),
     ([1, 2], "JSON object"), ("nonsense", "JSON object")],
)  # fmt: skip
def test_bad_faults_are_400_with_a_clear_message(
    client: TestClient, body: object, hint: str
) -> None:
    # Given a fault in force
    client.put("/admin/faults", json={"p_503": 0.25})
    # When an invalid change is put
    response = client.put("/admin/faults", json=body)
    # Then it is a 400 saying what is wrong, and the faults in force are unchanged
    assert response.status_code == 400
    assert hint in response.json()["detailMsg"]
    assert client.get("/admin/faults").json()["p_503"] == 0.25


def test_reset_clears_state_log_and_stats_but_keeps_faults(client: TestClient) -> None:
    # Given a write and a fault in force
    _write(client, "blocks/1", {"active": True})
    client.put("/admin/faults", json={"latency_ms": 1})
    # When the simulator is reset
    assert client.post("/admin/reset").status_code == 200
    # Then state, log and stats are empty, the fault remains, and the sequence goes on
    assert client.get("/admin/state").json() == {"targets": []}
    assert client.get("/admin/writes").json() == {"writes": [], "next": 0}
    assert client.get("/admin/stats").json()["writes_total"] == 0
    assert client.get("/admin/faults").json()["latency_ms"] == 1
    _write(client, "blocks/1", {"active": True})
    assert client.get("/admin/writes").json()["writes"][0]["seq"] == 2


def test_reset_with_faults_clears_them_too(client: TestClient) -> None:
    # Given a fault in force
    client.put("/admin/faults", json={"p_500": 1.0})
    # When the simulator is reset with faults=1
    client.post("/admin/reset", params={"faults": "1"})
    # Then writes succeed again
    assert _write(client, "blocks/1", {"active": True}) == 201


def test_a_target_changed_behind_subswitchs_back_shows_upstream_but_is_no_write(
    client: TestClient,
) -> None:
    # Given block 1 put on through the API
    _write(client, "blocks/1", {"active": True, "reason": "robado"})
    # When another system lifts it through the admin call
    answer = client.post("/admin/targets/telco/7/block/1", json={"active": False})
    # Then the target shows lifted, the API no longer lists the block, and no write counts
    assert answer.status_code == 200
    assert answer.json()["active"] is False
    assert answer.json()["writes_applied"] == 1
    assert client.get(f"{SUB}/blocks", headers=AUTH).json()["items"] == []
    assert client.get("/admin/stats").json()["writes_total"] == 1
    assert len(client.get("/admin/writes").json()["writes"]) == 1


def test_a_service_changed_behind_subswitchs_back_reads_back_upstream(client: TestClient) -> None:
    # When service 1 (seeded on) is switched off by another system
    client.post("/admin/targets/telco/7/service/1", json={"active": False, "reason": None})
    # Then the services list shows it off
    items = client.get(f"{SUB}/services", headers=AUTH).json()["items"]
    assert [item["active"] for item in items if item["id"] == 1] == [False]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [("telco/7/block/3", {"active": True}, 404), ("telco/7/block/1", {"active": "yes"}, 400),
     ("telco/7/block/1", {"active": True, "colour": 1}, 400),
     ("telco/7/block/1", {"active": True, "reason": 5}, 400),
     ("telco/7/block/1", [], 400)],
)  # fmt: skip
def test_a_bad_change_behind_is_refused(
    client: TestClient, path: str, body: object, status: int
) -> None:
    # When the admin call names no target or carries a bad body, then it is refused
    assert client.post(f"/admin/targets/{path}", json=body).status_code == status
