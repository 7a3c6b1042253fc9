"""What the gateway does with the commands of one request, without HTTP: fill in the
defaults, check the time bounds and the policy, record the acceptance, enqueue.

Nothing of a request is enqueued unless every command of it passes every check. Then
each command's acceptance is recorded before it is published (so a ``command_id``
reused with another payload is answered ``409`` and never enqueued), and withdrawn
again when its publish fails, so no record claims a command the broker never took.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pydantic import ValidationError

from producers.errors import PublishError
from producers.gateway.errors import (
    Accepted,
    CommandConflict,
    Forbidden,
    InvalidCommands,
    Item,
    NotAccepted,
)
from producers.gateway.models import BlockCommandIn, ServiceCommandIn
from subswitch.clock import utcnow
from subswitch.contract import (
    AnyCommand,
    ChangeBlockStatus,
    ChangeServiceStatus,
    Lane,
    TimeBounds,
    describe_validation_error,
)
from subswitch.errors import StoreError
from subswitch.policy import Policy
from subswitch.status import Acceptance

CommandIn = ServiceCommandIn | BlockCommandIn


class CommandPublisher(Protocol):
    """What the gateway enqueues through (``CeleryPublisher`` or ``InMemoryPublisher``)."""

    def publish(self, command: AnyCommand) -> None:
        """Enqueue one command on its lane, or raise ``PublishError``."""

    def publish_batch(self, commands: Sequence[AnyCommand]) -> None:
        """Enqueue bulk commands as one message, or raise ``PublishError``."""


class AcceptanceBook(Protocol):
    """Where the gateway records which commands it accepted (the store)."""

    def accept(self, commands: Sequence[AnyCommand]) -> list[Acceptance]:
        """Record ``commands`` (distinct ids) as accepted, each ``new``, ``same``
        (already, with this payload) or ``conflict`` (its id is known with another
        payload). Raises ``StoreError``."""

    def withdraw(self, commands: Sequence[AnyCommand]) -> None:
        """Remove the records ``accept`` made (``new``) for commands never enqueued."""

    def confirm(self, commands: Sequence[AnyCommand]) -> None:
        """The broker took ``commands``: keep their records for the whole retention."""


@dataclass(frozen=True)
class Caller:
    """Who sent the request: the producer (name or glob) of its API key."""

    producer: str


_GLOB_CHARACTERS = frozenset("*?[")


class Intake:
    """Validates, authorizes, records and enqueues the commands of one request.

    ``gateway`` is the name the gateway signs under (the policy's ``gateways:`` entry
    says which producers it may speak for). Bulk-lane commands go out in chunks of
    ``chunk_size`` (``publish_batch``), the others one message each.
    """

    def __init__(
        self,
        *,
        publisher: CommandPublisher,
        acceptances: AcceptanceBook,
        policy: Policy | Callable[[], Policy],
        gateway: str,
        time_bounds: TimeBounds,
        chunk_size: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._publisher = publisher
        self._acceptances = acceptances
        # A policy, or what gives the one in force now (the gateway's file watch).
        self._policy = policy
        self._gateway = gateway
        self._bounds = time_bounds
        self._chunk_size = chunk_size
        self._clock = clock

    @property
    def policy(self) -> Policy:
        """The policy in force (each request reads it once, so a request is judged by
        one policy)."""
        return self._policy if isinstance(self._policy, Policy) else self._policy()

    def submit(self, caller: Caller, posted: Sequence[CommandIn], *, batch: bool) -> list[Accepted]:
        """Accept every command of ``posted`` or none (index ``None`` unless ``batch``).

        Raises:
            InvalidCommands: a command is invalid (time bounds, a reused id in the batch).
            Forbidden: the caller or the gateway may not send a command.
            CommandConflict: a command id is known with another payload.
            NotAccepted: the broker or the store failed (``accepted`` lists what of a
                batch the broker took before).
        """
        commands = self.checked(caller, posted, batch=batch)
        unique = _first_of_each_id(commands)
        new = self._record(unique)
        self._publish(unique, new)
        # Every command, a repeated one in the batch included, gets its own answer.
        return [Accepted(index, command.command_id) for index, command in commands]

    def checked(
        self, caller: Caller, posted: Sequence[CommandIn], *, batch: bool
    ) -> list[tuple[int | None, AnyCommand]]:
        """The commands with their defaults, each valid and allowed, or the problems.

        Raises:
            InvalidCommands: with every invalid command's field.
            Forbidden: with every refused command's rule.
        """
        now, policy = self._clock(), self.policy
        invalid: list[Item] = []
        refused: list[Item] = []
        commands: list[tuple[int | None, AnyCommand]] = []
        for position, command_in in enumerate(posted):
            index = position if batch else None
            command, problem = self._complete(caller, command_in, index, now)
            if problem is not None:
                invalid.append(problem)
                continue
            assert command is not None
            refusal = self._refusal(policy, caller, command, index)
            if refusal is not None:
                refused.append(refusal)
            commands.append((index, command))
        invalid.extend(_reused_ids(commands))
        if invalid:
            raise InvalidCommands(_summary(invalid), invalid)
        if refused:
            raise Forbidden(_summary(refused, "refused"), refused)
        return commands

    def _complete(
        self, caller: Caller, command_in: CommandIn, index: int | None, now: datetime
    ) -> tuple[AnyCommand | None, Item | None]:
        """The contract's command for ``command_in``, ``source`` filled in."""
        source = command_in.source
        command_id = command_in.command_id
        if source is None:
            if _GLOB_CHARACTERS & set(caller.producer):
                message = f"required: this API key's producer is {caller.producer!r}"
                return None, Item(index, "source", message, command_id)
            source = caller.producer
        data = command_in.model_dump() | {"source": source}
        model: type[AnyCommand] = (
            ChangeBlockStatus if isinstance(command_in, BlockCommandIn) else ChangeServiceStatus
        )
        try:
            command = model.model_validate(data)
        except ValidationError as exc:  # the producer's name is no valid source
            return None, Item(index, "source", describe_validation_error(exc), command_id)
        violation = self._bounds.violation(command.issued_at, now=now)
        if violation is not None:
            field, _, message = violation.partition(": ")
            return None, Item(index, field, message, command_id)
        return command, None

    def _refusal(
        self, policy: Policy, caller: Caller, command: AnyCommand, index: int | None
    ) -> Item | None:
        cid = command.command_id
        if not policy.may_speak_for(caller.producer, command.source):
            message = f"this API key's producer {caller.producer!r} may not speak for it"
            return Item(index, "source", message, cid)
        if not policy.may_speak_for(self._gateway, command.source):
            message = f"the gateway {self._gateway!r} may not speak for {command.source!r}"
            return Item(index, "source", message, cid)
        refusal = policy.authorize(command, signer=self._gateway)
        return None if refusal is None else Item(index, None, refusal.message, cid)

    def _record(self, unique: Sequence[tuple[int | None, AnyCommand]]) -> list[AnyCommand]:
        """Record each command's acceptance; the ``new`` ones are returned.

        Raises:
            CommandConflict: an id is known with another payload (this request's new
                records are withdrawn).
            NotAccepted: the store failed (likewise).
        """
        try:
            answers = self._acceptances.accept([command for _, command in unique])
        except StoreError as exc:
            # Some records may be written: those of this request go (only its own).
            self._withdraw([command for _, command in unique])
            raise NotAccepted(f"the store did not answer: {exc}") from exc
        new: list[AnyCommand] = []
        conflicts: list[Item] = []
        for (index, command), answer in zip(unique, answers, strict=True):
            if answer is Acceptance.NEW:
                new.append(command)
            elif answer is Acceptance.CONFLICT:
                message = "this command_id is already used for another command"
                conflicts.append(Item(index, "command_id", message, command.command_id))
        if conflicts:
            self._withdraw(new)
            raise CommandConflict(_summary(conflicts, "conflicting"), conflicts)
        return new

    def _publish(
        self, unique: Sequence[tuple[int | None, AnyCommand]], new: Sequence[AnyCommand]
    ) -> None:
        """Enqueue: other lanes first, a message each, then the bulk lane in chunks.

        A command recorded ``same`` is published again: the worker applies it once, and
        a record left by a gateway that died before publishing is made true.
        """
        taken: list[tuple[int | None, AnyCommand]] = []
        try:
            for group in self._groups(unique):
                self._send(group)
                taken.extend(group)
                self._acceptances.confirm([command for _, command in group])
        except (PublishError, StoreError) as exc:
            taken_ids = {command.command_id for _, command in taken}
            self._withdraw([c for c in new if c.command_id not in taken_ids])
            accepted = [Accepted(index, command.command_id) for index, command in taken]
            raise NotAccepted(f"not accepted: {exc}", accepted) from exc

    def _groups(
        self, unique: Sequence[tuple[int | None, AnyCommand]]
    ) -> Iterator[list[tuple[int | None, AnyCommand]]]:
        bulk = [entry for entry in unique if entry[1].lane is Lane.BULK]
        for entry in unique:
            if entry[1].lane is not Lane.BULK:
                yield [entry]
        for start in range(0, len(bulk), self._chunk_size):
            yield bulk[start : start + self._chunk_size]

    def _send(self, group: Sequence[tuple[int | None, AnyCommand]]) -> None:
        commands = [command for _, command in group]
        if commands[0].lane is Lane.BULK:
            self._publisher.publish_batch(commands)
        else:
            self._publisher.publish(commands[0])

    def _withdraw(self, commands: Sequence[AnyCommand]) -> None:
        # Best effort: a store that fails here fails the request anyway, and a record
        # left behind expires after the pending time (``keys.ACCEPTANCE_PENDING_S``).
        try:
            self._acceptances.withdraw(commands)
        except StoreError:
            return


def _first_of_each_id(
    commands: Sequence[tuple[int | None, AnyCommand]],
) -> list[tuple[int | None, AnyCommand]]:
    seen: set[str] = set()
    unique = []
    for index, command in commands:
        if command.command_id not in seen:
            seen.add(command.command_id)
            unique.append((index, command))
    return unique


def _reused_ids(commands: Sequence[tuple[int | None, AnyCommand]]) -> list[Item]:
    """A batch that gives one ``command_id`` to two different commands."""
    first: dict[str, tuple[int | None, str]] = {}
    problems = []
    for index, command in commands:
        fingerprint = command.fingerprint()
        earlier = first.setdefault(command.command_id, (index, fingerprint))
        if earlier[1] != fingerprint:
            message = f"the same command_id as command {earlier[0]}, for another command"
            problems.append(Item(index, "command_id", message, command.command_id))
    return problems


def _summary(items: Sequence[Item], what: str = "invalid") -> str:
    count = len({item.index for item in items})
    noun = "command" if count == 1 else "commands"
    return f"{count} {what} {noun} in the request; nothing was enqueued"
