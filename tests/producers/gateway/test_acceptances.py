"""The gateway's acceptance records in the store (fakeredis with its Lua engine)."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest

from producers.gateway.acceptances import RedisAcceptances
from subswitch import keys
from subswitch.contract import ChangeServiceStatus
from subswitch.status import Acceptance

RETENTION_S = 86_400


def command(command_id: str, *, active: bool = True) -> ChangeServiceStatus:
    return ChangeServiceStatus(
        command_id=command_id,
        org_id="telco",
        subscription_id=1,
        service_id=2,
        active=active,
        source="billing",
    )


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    store = fakeredis.FakeRedis()
    yield store
    store.close()


@pytest.fixture
def book(client: fakeredis.FakeRedis) -> RedisAcceptances:
    return RedisAcceptances(client=client, retention_s=RETENTION_S)


def test_new_same_and_conflict_in_one_round_trip(
    book: RedisAcceptances, client: fakeredis.FakeRedis
) -> None:
    # Given one command accepted before, and one the worker has with another payload
    book.accept([command("a")])
    client.hset(keys.command("w"), "fp", command("w", active=False).fingerprint())
    # When a request's commands are recorded
    answers = book.accept([command("a"), command("b"), command("a2"), command("w")])
    # Then each is told apart
    assert answers == [Acceptance.SAME, Acceptance.NEW, Acceptance.NEW, Acceptance.CONFLICT]
    assert book.accept([command("a", active=False)]) == [Acceptance.CONFLICT]


def test_a_record_lives_a_minute_until_confirmed_then_the_retention(
    book: RedisAcceptances, client: fakeredis.FakeRedis
) -> None:
    # When a command is recorded, then confirmed (the broker took it)
    book.accept([command("c")])
    pending = client.ttl(keys.acceptance("c"))
    book.confirm([command("c")])
    kept = client.ttl(keys.acceptance("c"))
    # Then it lived at most the pending time first, the retention after
    assert 0 < pending <= keys.ACCEPTANCE_PENDING_S
    assert keys.ACCEPTANCE_PENDING_S < kept <= RETENTION_S


def test_withdraw_removes_only_this_commands_record(
    book: RedisAcceptances, client: fakeredis.FakeRedis
) -> None:
    # Given a record for one payload
    book.accept([command("d")])
    # When another payload under that id is withdrawn, then the right one
    book.withdraw([command("d", active=False)])
    still_there = client.exists(keys.acceptance("d"))
    book.withdraw([command("d")])
    # Then only the record of its own payload went
    assert still_there == 1
    assert client.exists(keys.acceptance("d")) == 0
    assert book.accept([command("d")]) == [Acceptance.NEW]
