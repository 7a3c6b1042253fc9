"""The bounded write log."""

from __future__ import annotations

from subswitch.simulator.journal import WriteLog, WriteRecord


def _record(body: bytes = b'{"active": true}') -> WriteRecord:
    return WriteRecord(
        1.5,
        "PATCH",
        "/v2/orgs/telco/subscriptions/7/blocks/1",
        target=("telco", 7, "block", 1),
        body=body,
        headers=("key-1", "req-1", "API_KEY"),
    )


def test_records_are_numbered_in_arrival_order_and_paged() -> None:
    # Given a log with five records
    log = WriteLog(cap=100)
    for _ in range(5):
        log.append(_record())
    # When it is read two at a time
    first, after_first = log.page(0, 2)
    second, after_second = log.page(after_first, 2)
    third, after_third = log.page(after_second, 2)
    rest, after_rest = log.page(after_third, 2)
    # Then every record comes once, in order, and the cursor stops at the last
    assert [r.seq for r in first + second + third] == [1, 2, 3, 4, 5]
    assert (after_first, after_second, after_third) == (2, 4, 5)
    assert (rest, after_rest) == ([], 5)


def test_a_full_log_drops_the_oldest() -> None:
    # Given a log capped at three records
    log = WriteLog(cap=3)
    # When five are appended
    for _ in range(5):
        log.append(_record())
    # Then the last three remain, and reading from the start begins at the oldest kept
    records, following = log.page(0, 10)
    assert [r.seq for r in records] == [3, 4, 5]
    assert following == 5


def test_sequence_goes_on_after_clear() -> None:
    # Given a log with two records, then cleared
    log = WriteLog(cap=10)
    log.append(_record())
    log.append(_record())
    log.clear()
    # When a record is appended
    log.append(_record())
    # Then it gets the next number, so a reader's cursor stays valid
    records, following = log.page(2, 10)
    assert [r.seq for r in records] == [3]
    assert following == 3
    assert log.page(0, 10)[0][0].seq == 3


def test_json_view_decodes_the_body() -> None:
    # Given records with a JSON body and a non-JSON body
    good, bad = _record(), _record(b"\xffnot json")
    # Then the JSON view shows the object, or the text as best it can
    view = good.to_json()
    assert view["body"] == {"active": True}
    assert view["idempotency_key"] == "key-1"
    assert view["request_id"] == "req-1"
    assert view["auth_roles"] == "API_KEY"
    assert (view["status"], view["applied"], view["fault"]) == (None, False, None)
    assert bad.to_json()["body"] == "\ufffdnot json"
