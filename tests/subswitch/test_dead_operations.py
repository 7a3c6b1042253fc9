"""Listing, finding, replaying and purging dead letters, on the in-memory queue."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subswitch.contract import AnyCommand, ChangeBlockStatus, Lane, TimeBounds
from subswitch.dead_operations import DeadLetterOperator, InMemoryReplayMarks
from subswitch.deadletters import (
    DeadLetter,
    InMemoryDeadLetterQueue,
    SignedCommand,
    commands_of,
    counts_by_reason,
    describe_body,
)
from subswitch.errors import InvalidInput, PublishError
from subswitch.signing import SIGNATURE_FIELD, Signature, Signer

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BOUNDS = TimeBounds(max_skew_s=300, retention_s=86_400)


def command(command_id: str = "c-1", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "type": "ChangeBlockStatus", "schema_version": 1, "command_id": command_id,
        "org_id": "telco", "subscription_id": 7, "block_id": 1, "active": True,
        "issued_at": (NOW - timedelta(minutes=5)).isoformat(), "source": "tests",
    }  # fmt: skip
    fields.update(overrides)
    return fields


def task_body(argument: Any) -> bytes:
    return json.dumps([[argument], {}, {"callbacks": None}]).encode()


def letter(body: bytes, reason: str = "unknown task 'x'", **headers: Any) -> DeadLetter:
    return DeadLetter(body, {"x-subswitch-reason": reason, **headers}, "application/json")


class Sent:
    def __init__(self, *, fail: bool = False) -> None:
        self.batches: list[list[AnyCommand]] = []
        self.signatures: list[list[Signature | None]] = []
        self.fail = fail

    def __call__(self, commands: Sequence[SignedCommand]) -> None:
        if self.fail:
            raise PublishError("could not enqueue: told to fail")
        self.batches.append([signed.command for signed in commands])
        self.signatures.append([signed.signature for signed in commands])


def operator(*letters: DeadLetter) -> tuple[DeadLetterOperator, InMemoryDeadLetterQueue]:
    queue = InMemoryDeadLetterQueue(list(letters))
    return DeadLetterOperator(queue=queue, bounds=BOUNDS, clock=lambda: NOW), queue


def test_a_letter_names_its_command_reason_time_and_size() -> None:
    # Given a letter as the worker keeps it
    dead = letter(task_body(command("c-9")), "unknown task 'subswitch.old'",
                  **{"x-subswitch-dead-at": "2026-12-01T11:00:00+00:00"})  # fmt: skip
    # Then its summary says all a list shows
    summary = dead.summary()
    assert summary["command_id"] == "c-9"
    assert summary["reason"] == "unknown task 'subswitch.old'"
    assert summary["dead_at"] == "2026-12-01T11:00:00+00:00"
    assert summary["size"] == len(dead.body)
    assert len(summary["id"]) == 12


def test_a_broker_dead_letter_names_the_brokers_reason_queue_and_time() -> None:
    # Given what RabbitMQ dead-lettered over the delivery limit (Celery's headers kept)
    when = datetime(2026, 12, 1, 10, 0)
    dead = DeadLetter(task_body(command("c-2")), {
        "id": "c-2", "task": "subswitch.apply", "x-first-death-reason": "delivery_limit",
        "x-first-death-queue": "subswitch.normal", "x-death": [{"time": when, "count": 1}],
    })  # fmt: skip
    # Then the broker is named as the reason, with the queue and the time
    assert dead.reason == "broker: delivery_limit"
    assert dead.queue == "subswitch.normal"
    assert dead.dead_at == when.replace(tzinfo=UTC)
    assert dead.command_id == "c-2"


def test_a_letters_id_ignores_the_brokers_delivery_count() -> None:
    # Given the same letter before and after a quorum queue counted a return
    body = task_body(command())
    headers = {"x-subswitch-reason": "unknown task 'x'"}
    first = DeadLetter(body, headers)
    again = DeadLetter(body, {**headers, "x-delivery-count": 3})
    # Then its id stays, and another body gets another id
    assert first.id == again.id
    assert letter(task_body(command("c-other"))).id != first.id


@pytest.mark.parametrize(
    ("body", "count"),
    [(json.dumps(command()).encode(), 1), (task_body(command()), 1),
     (task_body([command("a", priority="bulk"), command("b", priority="bulk")]), 2)],
)  # fmt: skip
def test_the_commands_of_a_letter_are_read_from_each_body_shape(body: bytes, count: int) -> None:
    # When the commands of a bare command, a task body and a chunk are read
    commands = commands_of(letter(body))
    # Then each is a parsed command
    assert len(commands) == count
    assert all(isinstance(c, ChangeBlockStatus) for c in commands)


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"\x80garbage", "not JSON"), (b"[1, 2]", "holds no command"),
     (task_body(command(block_id=9)), "block_id"),
     (task_body([command("a"), command("b", org_id="bad/org")]), "command 2 of 2: org_id")],
)  # fmt: skip
def test_a_letter_without_a_valid_command_says_why(body: bytes, reason: str) -> None:
    # When a letter holding no valid command is read, then the reason names the problem
    with pytest.raises(InvalidInput, match=reason):
        commands_of(letter(body))


def test_list_keeps_every_letter_in_order_and_counts_reasons() -> None:
    # Given three letters, two of one kind of reason
    reasons = ["unknown task 'a'", "unknown task 'b'", "invalid task message: x"]
    letters = [letter(task_body(command(f"c-{n}")), reason) for n, reason in enumerate(reasons)]
    ops, queue = operator(*letters)
    # When they are listed twice
    first, second = ops.letters(), ops.letters()
    # Then both lists are the queue, in order, untouched, counted by the reason's kind
    assert first == second == letters == queue.kept
    assert counts_by_reason(first) == {"unknown task": 2, "invalid task message": 1}


@pytest.mark.parametrize(
    ("reason", "kind"),
    [("block_id: Input should be less than or equal to 2", "invalid command"),
     ("missing field(s): source", "invalid command"),
     ("undecodable message (application/x-python-serialize): refused", "undecodable"),
     ("message of 2,000,000 bytes is over SUBSWITCH_MAX_MESSAGE_BYTES", "too large"),
     ("its worker died (or lost it) during 5 deliveries in a row", "delivery limit")],
)  # fmt: skip
def test_reasons_are_counted_by_their_kind(reason: str, kind: str) -> None:
    # Then each of the worker's reasons falls in its kind
    assert letter(b"{}", reason).reason_kind == kind


def test_find_takes_a_unique_prefix_and_refuses_unknown_or_ambiguous_ids() -> None:
    # Given two letters
    one, two = letter(task_body(command("c-1"))), letter(task_body(command("c-2")))
    ops, _ = operator(one, two)
    # Then a prefix finds one; an unknown id or an empty one is refused
    assert ops.find(one.id[:6]) == one
    with pytest.raises(InvalidInput, match="no dead letter"):
        ops.find("zzzz")
    with pytest.raises(InvalidInput, match="no dead letter"):
        ops.find("")


def test_a_valid_letter_is_replayed_unchanged_then_removed() -> None:
    # Given a valid command dead-lettered between two others
    before, target, after = (letter(task_body(command(f"c-{n}"))) for n in range(3))
    ops, queue = operator(before, target, after)
    sent, marks = Sent(), InMemoryReplayMarks()
    # When it is replayed
    results = ops.replay([target.id], publish=sent, marks=marks)
    # Then its command goes out with its own id, its mark is cleared, and only it left
    assert [r.command_ids for r in results] == [("c-1",)]
    assert [c.command_id for c in sent.batches[0]] == ["c-1"]
    assert sent.batches[0][0].lane is Lane.NORMAL
    assert marks.forgotten == [target.id]
    assert queue.kept == [before, after]


def test_a_still_invalid_letter_is_refused_with_its_reason_and_stays() -> None:
    # Given an invalid command and a command too old to tell from a duplicate
    invalid = letter(json.dumps(command(block_id=3)).encode(), "block_id: ...")
    stale = letter(task_body(command("c-old", issued_at=(NOW - timedelta(days=2)).isoformat())))
    ops, queue = operator(invalid, stale)
    sent = Sent()
    # When every letter is replayed
    results = ops.replay(None, publish=sent, marks=InMemoryReplayMarks())
    # Then both are refused with the reason, nothing is sent, and both stay
    assert [r.replayed for r in results] == [False, False]
    assert "block_id" in (results[0].refused or "")
    assert "SUBSWITCH_RETENTION_SECONDS" in (results[1].refused or "")
    assert sent.batches == []
    assert queue.kept == [invalid, stale]


def test_a_replay_that_cannot_be_published_leaves_the_letter_in_place() -> None:
    # Given a broker that refuses the publish
    dead = letter(task_body(command()))
    ops, queue = operator(dead)
    # When the letter is replayed, then the error goes on and the letter stays
    with pytest.raises(PublishError):
        ops.replay([dead.id], publish=Sent(fail=True), marks=InMemoryReplayMarks())
    assert queue.kept == [dead]


def test_purge_removes_only_the_letters_named_or_all() -> None:
    # Given three letters
    letters = [letter(task_body(command(f"c-{n}"))) for n in range(3)]
    ops, queue = operator(*letters)
    # When one is purged, then only it is gone
    assert ops.purge([letters[1].id]) == [letters[1]]
    assert queue.kept == [letters[0], letters[2]]
    # When all are purged, then none is left
    assert ops.purge(None) == [letters[0], letters[2]]
    assert queue.kept == []


def test_an_unknown_id_among_several_does_nothing() -> None:
    # Given one letter
    dead = letter(task_body(command()))
    ops, queue = operator(dead)
    # When it is purged together with an unknown id, then nothing is purged
    with pytest.raises(InvalidInput):
        ops.purge([dead.id, "nope"])
    assert queue.kept == [dead]


def test_a_body_shows_indented_when_json_and_escaped_when_not() -> None:
    # Then JSON is indented, and other bytes are one escaped line
    assert describe_body(letter(b'{"a": 1}')) == '{\n  "a": 1\n}'
    assert describe_body(letter(b"line\nnext\x00")) == "line\\nnext\\x00"
    assert describe_body(letter('{"r": "a\u202eb"}'.encode())) == '{\n  "r": "a\\u202eb"\n}'


def test_a_signed_letter_is_replayed_with_its_producers_own_signature() -> None:
    # Given a dead letter of a command its producer signed
    signer = Signer(private_key=Ed25519PrivateKey.generate())
    fields = command("signed-1")
    signature = signer.sign(ChangeBlockStatus.model_validate(fields))
    signed = {**fields, SIGNATURE_FIELD: signature.model_dump()}
    dead = letter(task_body(signed))
    ops, _ = operator(dead)
    sent = Sent()
    # When it is replayed
    [result] = ops.replay([dead.id], publish=sent, marks=InMemoryReplayMarks())
    # Then it goes out with the signature it came with, not re-signed by the operator
    assert result.refused is None
    assert [c.command_id for c in sent.batches[0]] == ["signed-1"]
    assert sent.signatures == [[signature]]


def test_a_letter_whose_signature_member_is_malformed_is_refused() -> None:
    # Given a dead letter whose signature member is not a signature
    dead = letter(task_body({**command("bad-sig"), SIGNATURE_FIELD: "forged"}))
    ops, queue = operator(dead)
    sent = Sent()
    # When it is replayed
    [result] = ops.replay([dead.id], publish=sent, marks=InMemoryReplayMarks())
    # Then it is refused with the reason, nothing is sent and the letter stays
    assert result.refused is not None and "signature" in result.refused
    assert sent.batches == []
    assert [kept.id for kept in queue.letters()] == [dead.id]
