"""A bulk chunk keeps to a time budget, and one command that raises leaves it alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from subswitch.contract import ChangeBlockStatus, Outcome
from tests.worker.conftest import Harness
from worker.store import StoreError
from worker.tasks import apply_chunk, chunk_budget_s
from worker.upstream.errors import TransientError

REDELIVERY_WINDOW_S = 300.0
SECONDS_PER_WRITE = 3.0


@dataclass
class RecordingBulkLane:
    """In-memory BulkLane: what left the chunk, and how."""

    alone: list[tuple[str, float]] = field(default_factory=list)
    rests: list[list[str]] = field(default_factory=list)

    def send_alone(self, command: Any, delay_s: float) -> None:
        self.alone.append((command["command_id"], delay_s))

    def send_rest(self, commands: list[Any]) -> None:
        self.rests.append([command["command_id"] for command in commands])


@dataclass
class Monotonic:
    """A monotonic clock that each upstream write moves forward."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _chunk(block: Callable[..., ChangeBlockStatus], count: int) -> list[dict[str, Any]]:
    return [
        block(subscription_id=n, command_id=f"bulk-{n:03d}", priority="bulk").model_dump(
            mode="json"
        )
        for n in range(1, count + 1)
    ]


def test_a_chunk_on_a_slow_upstream_hands_the_rest_on_before_redelivery(
    harness: Harness, block: Callable[..., ChangeBlockStatus]
) -> None:
    # Given an upstream taking 3 s per write and a chunk of 100 commands
    clock = Monotonic()
    harness.upstream.during_writes = [lambda: clock.advance(SECONDS_PER_WRITE)] * 100
    commands, lane = _chunk(block, 100), RecordingBulkLane()
    # When the chunk runs with the budget of a 300 s redelivery window
    finished = apply_chunk(
        harness.executor,
        commands,
        budget_s=chunk_budget_s(REDELIVERY_WINDOW_S),
        bulk=lane,
        clock=clock,
    )
    # Then it stopped well inside the window, and the rest left as one chunk, in order
    spent = clock.now - 1000.0
    assert spent + SECONDS_PER_WRITE < REDELIVERY_WINDOW_S / 2
    assert finished == len(harness.upstream.writes) == 25
    assert lane.rests == [[command["command_id"] for command in commands[25:]]]
    assert lane.alone == []
    # And each command run here was applied with one event
    assert all(harness.events_of(f"bulk-{n:03d}")[0].outcome == Outcome.APPLIED for n in (1, 25))
    assert harness.events_of("bulk-026") == []


def test_a_spent_budget_still_runs_one_command(
    harness: Harness, block: Callable[..., ChangeBlockStatus]
) -> None:
    # Given a chunk of three and no budget at all
    commands, lane = _chunk(block, 3), RecordingBulkLane()
    # When it runs
    finished = apply_chunk(harness.executor, commands, budget_s=0.0, bulk=lane)
    # Then the first command is applied (each pass makes progress) and two go on together
    assert finished == 1
    assert lane.rests == [["bulk-002", "bulk-003"]]


def test_a_command_that_raises_leaves_alone_and_the_others_go_on(
    harness: Harness, block: Callable[..., ChangeBlockStatus]
) -> None:
    # Given a chunk of five whose second command's write raises an unexpected error
    harness.upstream.script = [201, RuntimeError("bug in a client"), 201, 201, 201]
    commands, lane = _chunk(block, 5), RecordingBulkLane()
    # When the chunk runs
    finished = apply_chunk(harness.executor, commands, budget_s=60.0, bulk=lane)
    # Then the four others were applied with their events
    assert finished == 4
    for n in (1, 3, 4, 5):
        assert [event.outcome for event in harness.events_of(f"bulk-{n:03d}")] == [Outcome.APPLIED]
    # And the failing one alone leaves as a single message, after a backoff
    ((command_id, delay_s),) = lane.alone
    assert command_id == "bulk-002"
    assert delay_s > 0
    assert harness.events_of("bulk-002") == []
    assert lane.rests == []


def test_a_command_that_must_wait_leaves_alone_with_its_delay(
    harness: Harness, block: Callable[..., ChangeBlockStatus]
) -> None:
    # Given a chunk of three whose first write gets a 503
    harness.upstream.script = [TransientError("503", status=503)]
    commands, lane = _chunk(block, 3), RecordingBulkLane()
    # When the chunk runs
    finished = apply_chunk(harness.executor, commands, budget_s=60.0, bulk=lane)
    # Then the two others were applied, and the first leaves alone to retry
    assert finished == 2
    assert [command_id for command_id, _ in lane.alone] == ["bulk-001"]


def test_the_store_failing_retries_the_chunk_as_a_whole(
    harness: Harness, block: Callable[..., ChangeBlockStatus], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a store that cannot be reached
    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("store unavailable: connection refused")

    monkeypatch.setattr(harness.store, "begin_many", unreachable)
    commands, lane = _chunk(block, 3), RecordingBulkLane()
    # When the chunk runs
    # Then the error reaches the task (which retries the whole chunk), nothing is split off
    with pytest.raises(StoreError):
        apply_chunk(harness.executor, commands, budget_s=60.0, bulk=lane)
    assert (lane.alone, lane.rests) == ([], [])


def test_the_chunk_budget_is_a_quarter_of_the_redelivery_window() -> None:
    # Then a chunk stops starting commands after 75 s of a 300 s window
    assert chunk_budget_s(300) == 75.0


def _dump(command: ChangeBlockStatus) -> dict[str, Any]:
    return command.model_dump(mode="json")


def test_two_commands_on_one_target_in_a_chunk_go_in_order(
    harness: Harness, block: Callable[..., ChangeBlockStatus]
) -> None:
    # Given a chunk whose first and third commands share a target, the third the newer
    at = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    older = block(command_id="same-1", active=True, issued_at=at, priority="bulk")
    other = block(command_id="other", subscription_id=8, priority="bulk")
    newer = block(command_id="same-2", active=False, issued_at=at + timedelta(seconds=1))
    lane = RecordingBulkLane()
    # When the chunk runs
    finished = apply_chunk(
        harness.executor, [_dump(older), _dump(other), _dump(newer)], budget_s=60.0, bulk=lane
    )
    # Then both commands on the target were applied, the older one first, and the newest
    # write is the last one the upstream got
    assert finished == 3
    writes = [write["key"] for write in harness.upstream.writes]
    assert writes.index("same-1") < writes.index("same-2")
    assert harness.upstream.writes[-1]["active"] is False
    assert [e.outcome for e in harness.events_of("same-2")] == [Outcome.APPLIED]


def test_an_older_command_after_a_newer_one_in_a_chunk_is_superseded(
    harness: Harness, block: Callable[..., ChangeBlockStatus]
) -> None:
    # Given a chunk with a newer command on a target ahead of an older one on it
    at = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    newer = block(command_id="new", active=False, issued_at=at + timedelta(seconds=1))
    older = block(command_id="old", active=True, issued_at=at)
    lane = RecordingBulkLane()
    # When the chunk runs
    apply_chunk(harness.executor, [_dump(newer), _dump(older)], budget_s=60.0, bulk=lane)
    # Then only the newer one reached the upstream; the older one never overtakes it
    assert [write["key"] for write in harness.upstream.writes] == ["new"]
    assert [e.outcome for e in harness.events_of("old")] == [Outcome.SUPERSEDED]
    assert lane.alone == []


@dataclass
class CallCounts:
    """How often each batched store and sink call was made, and with how many items."""

    calls: dict[str, list[int]] = field(default_factory=dict)

    def spy(self, owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def counted(items: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.setdefault(name, []).append(len(items))
            return real(items, *args, **kwargs)

        setattr(owner, name, counted)


def test_a_chunk_makes_one_store_round_trip_per_step_and_one_publish(
    harness: Harness, block: Callable[..., ChangeBlockStatus], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a chunk of ten commands on ten targets, and the store's single calls refused
    counts = CallCounts()
    for name in ("begin_many", "finish_many", "mark_published_many"):
        counts.spy(harness.store, name)
    counts.spy(harness.events, "publish_many")
    for single in ("begin", "finish", "mark_published"):
        monkeypatch.setattr(harness.store, single, _refused(single))
    commands, lane = _chunk(block, 10), RecordingBulkLane()
    # When it runs
    finished = apply_chunk(harness.executor, commands, budget_s=60.0, bulk=lane)
    # Then each step went to the store once for all ten, and the events out together
    assert finished == 10
    assert counts.calls == {
        "begin_many": [10],
        "finish_many": [10],
        "publish_many": [10],
        "mark_published_many": [10],
    }
    assert len(harness.events.published) == 10


def _refused(name: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"store.{name} was called for a command of a chunk")

    return refuse


@dataclass
class StartedWrites:
    """A concurrent upstream that logs when each write starts and when it is answered."""

    log: list[str] = field(default_factory=list)

    def change_block_status(self, *args: Any, **kwargs: Any) -> int:
        raise AssertionError("a chunk's write was made synchronously")

    def change_service_status(self, *args: Any, **kwargs: Any) -> int:
        raise AssertionError("a chunk's write was made synchronously")

    def start_change_block_status(self, *args: Any, idempotency_key: str, **kwargs: Any) -> Any:
        self.log.append(f"start {idempotency_key}")
        return _Answer(self.log, idempotency_key)

    def start_change_service_status(self, *args: Any, idempotency_key: str, **kwargs: Any) -> Any:
        return self.start_change_block_status(idempotency_key=idempotency_key)


@dataclass
class _Answer:
    log: list[str]
    key: str

    def result(self) -> int:
        self.log.append(f"answer {self.key}")
        return 201


def test_a_chunks_writes_are_all_started_before_any_answer_is_awaited(
    harness: Harness, block: Callable[..., ChangeBlockStatus], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an upstream whose writes can be started now and answered later
    upstream = StartedWrites()
    monkeypatch.setattr(harness.executor, "_upstream", upstream)
    monkeypatch.setattr(harness.executor, "_starts", upstream)
    commands, lane = _chunk(block, 4), RecordingBulkLane()
    # When a chunk of four runs
    finished = apply_chunk(harness.executor, commands, budget_s=60.0, bulk=lane)
    # Then the four writes were in flight together, and each was applied
    assert finished == 4
    assert [entry.split()[0] for entry in upstream.log] == ["start"] * 4 + ["answer"] * 4
    assert all(harness.events_of(f"bulk-{n:03d}")[0].outcome == Outcome.APPLIED for n in (1, 4))
