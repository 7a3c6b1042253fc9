"""What ``subswitch dead`` does with the letters of ``subswitch.dead``: find them by
id, replay them onto their lane, purge them.

A replay sends the command(s) a letter carries again, unchanged (same command id, so
the worker's idempotency still holds: a command already applied is not applied
twice), through the producers' publisher, onto the command's own lane (the queue it
was dead-lettered from). A letter that is still invalid, by the contract's own parse
or its time bounds, is refused with the reason and stays where it is: no loop. A
letter leaves ``subswitch.dead`` only once the broker confirmed its replay.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import redis

from subswitch import keys
from subswitch.clock import utcnow
from subswitch.contract import InvalidCommand, TimeBounds
from subswitch.deadletters import (
    COMMAND_ID_HEADER,
    DeadLetter,
    DeadLetterQueue,
    SignedCommand,
    signed_commands_of,
)
from subswitch.errors import InvalidInput, StoreError


class ReplayMarks(Protocol):
    """The worker's "already dead-lettered" marks (``worker/deliveries.py``)."""

    def forget(self, letter: DeadLetter) -> None:
        """Delete the letter's mark, so that if its replay fails again it is kept again
        (with the mark in place the worker would drop the second copy)."""
        ...


class RedisReplayMarks:
    """The marks in the store's Redis."""

    def __init__(self, *, client: redis.Redis) -> None:
        self._client = client

    def forget(self, letter: DeadLetter) -> None:
        """``DEL`` the letter's mark.

        Raises:
            StoreError: the store did not answer.
        """
        key = keys.dead_letter_mark(letter.body, letter.headers.get(COMMAND_ID_HEADER))
        try:
            self._client.delete(key)
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"could not clear a dead-letter mark: {type(exc).__name__}") from exc


@dataclass
class InMemoryReplayMarks:
    """Test double: the ids of the letters whose mark was forgotten."""

    forgotten: list[str] = field(default_factory=list)

    def forget(self, letter: DeadLetter) -> None:
        """Record the letter's id."""
        self.forgotten.append(letter.id)


#: Sends the commands of one letter (one command, or a bulk chunk) and returns once the
#: broker accepted them; raises ``PublishError`` otherwise.
Publish = Callable[[Sequence[SignedCommand]], None]


@dataclass(frozen=True)
class Replay:
    """What happened to one letter asked to be replayed."""

    letter: DeadLetter
    command_ids: tuple[str, ...] = ()
    #: Why it was refused (and left in place); ``None``: it was replayed and removed.
    refused: str | None = None

    @property
    def replayed(self) -> bool:
        """Whether it went back to its lane."""
        return self.refused is None


class DeadLetterOperator:
    """Lists, replays and purges the letters of one dead-letter queue."""

    def __init__(
        self,
        *,
        queue: DeadLetterQueue,
        bounds: TimeBounds | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._queue = queue
        self._bounds = bounds
        self._clock = clock

    def letters(self) -> list[DeadLetter]:
        """Every letter, oldest first."""
        return self._queue.letters()

    def find(self, letter_id: str) -> DeadLetter:
        """The one letter whose id starts with ``letter_id``.

        Raises:
            InvalidInput: none does, or more than one.
        """
        return self._resolve([letter_id], self.letters())[0]

    def replay(
        self, letter_ids: Collection[str] | None, *, publish: Publish, marks: ReplayMarks
    ) -> list[Replay]:
        """Replay the letters named (``None``: every one), oldest first, through
        ``publish``; each replayed letter's mark is forgotten in ``marks`` first.

        Raises:
            InvalidInput: an id names no letter, or more than one (nothing done).
            PublishError, StoreError: the broker or store failed; the letter being
                replayed and those after it stay in place (what was done stays done).
        """
        wanted = self._wanted(letter_ids)
        results: list[Replay] = []

        def act(letter: DeadLetter) -> bool:
            result = self._replay_one(letter, publish, marks)
            results.append(result)
            return result.replayed

        self._queue.settle(lambda letter: letter.id in wanted, act)
        return results

    def purge(self, letter_ids: Collection[str] | None) -> list[DeadLetter]:
        """Remove the letters named (``None``: every one); the letters removed.

        Raises:
            InvalidInput: an id names no letter, or more than one (nothing done).
        """
        wanted = self._wanted(letter_ids)
        removed: list[DeadLetter] = []

        def act(letter: DeadLetter) -> bool:
            removed.append(letter)
            return True

        self._queue.settle(lambda letter: letter.id in wanted, act)
        return removed

    def _wanted(self, letter_ids: Collection[str] | None) -> set[str]:
        letters = self.letters()
        if letter_ids is None:
            return {letter.id for letter in letters}
        return {letter.id for letter in self._resolve(letter_ids, letters)}

    def _resolve(self, letter_ids: Collection[str], letters: list[DeadLetter]) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        for wanted in letter_ids:
            matches = {letter.id: letter for letter in letters if letter.id.startswith(wanted)}
            if not wanted or not matches:
                raise InvalidInput(f"no dead letter {wanted!r} in subswitch.dead")
            if len(matches) > 1:
                raise InvalidInput(f"dead letter id {wanted!r} is ambiguous: give more of it")
            found.extend(matches.values())
        return found

    def _replay_one(self, letter: DeadLetter, publish: Publish, marks: ReplayMarks) -> Replay:
        try:
            commands = self._checked(letter)
        except InvalidCommand as exc:
            return Replay(letter, refused=str(exc))
        # The mark first: should the replay be dead-lettered again, it is kept again.
        marks.forget(letter)
        publish(commands)
        return Replay(letter, tuple(signed.command.command_id for signed in commands))

    def _checked(self, letter: DeadLetter) -> list[SignedCommand]:
        commands = signed_commands_of(letter)
        if self._bounds is not None:
            now = self._clock()
            for command, _ in commands:
                violation = self._bounds.violation(command.issued_at, now=now)
                if violation is not None:
                    raise InvalidCommand(violation, command_id=command.command_id)
        return commands
