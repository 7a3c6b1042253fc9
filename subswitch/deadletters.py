"""The messages kept in ``subswitch.dead``, read and acted on without losing any.

Two producers put messages there: the worker (``worker/consumer.py``,
``worker/executor.py``, ``worker/tasks.py``), with the reason in ``x-subswitch-reason``,
the command id in ``command_id`` and the time in ``x-subswitch-dead-at``; and, on
RabbitMQ, the broker itself, through the lane queues' dead-letter exchange (the whole
original Celery message, with ``x-first-death-reason``, ``x-first-death-queue`` and
``x-death``).

:class:`DeadLetterQueue` is the small interface the ``subswitch dead`` commands use:
a snapshot of every letter, oldest first, that removes nothing and moves nothing, and
``settle``, which removes exactly the letters an action succeeded on. One
implementation per broker (:class:`RabbitDeadLetterQueue`, :class:`RedisDeadLetterQueue`)
and an in-memory one for tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, Protocol

from amqp.exceptions import NotFound
from kombu import Connection
from pydantic import ValidationError

from subswitch.broker import BROKER_FAILURES, broker_connection, is_amqp
from subswitch.contract import (
    DEAD_LETTER_QUEUE,
    AnyCommand,
    InvalidCommand,
    parse_command,
    readable_command_id,
)
from subswitch.errors import BrokerError
from subswitch.signing import SIGNATURE_FIELD, Signature, detach_signature
from subswitch.text import safe_line

#: Headers the worker sets on what it dead-letters (``worker/sinks.py``).
REASON_HEADER: Final = "x-subswitch-reason"
DEAD_AT_HEADER: Final = "x-subswitch-dead-at"
COMMAND_ID_HEADER: Final = "command_id"
#: Hex digits of a letter's id as shown; any unique prefix of it names the letter too.
ID_LENGTH: Final = 12
#: Headers a broker changes while the message waits (a quorum queue counts returns):
#: left out of the id, which must not change when a letter is only read.
_VOLATILE_HEADERS: Final = frozenset({"x-delivery-count"})
#: What the worker's reasons start with (worker/consumer.py, worker/tasks.py,
#: worker/deliveries.py), and the kind ``dead list`` counts them as; any other reason
#: is the contract's refusal of a command (``parse_command``).
_REASON_KINDS: Final = (
    ("unknown task", "unknown task"),
    ("undecodable message", "undecodable"),
    ("not a task message", "not a task message"),
    ("invalid task message", "invalid task message"),
    ("message of ", "too large"),
    ("its worker died", "delivery limit"),
    ("subswitch.apply", "malformed task"),
    ("unknown", "unknown"),
)
#: The most of a body ``dead show`` prints per line (bodies are at most 1 MiB anyway).
_SHOWN_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class DeadLetter:
    """One message of ``subswitch.dead``: its body as kept, its headers, its id."""

    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    content_type: str | None = None

    @property
    def id(self) -> str:
        """A digest of the body and headers: stable while the letter is only read."""
        kept = {k: v for k, v in self.headers.items() if k not in _VOLATILE_HEADERS}
        canonical = json.dumps(kept, sort_keys=True, default=str).encode()
        return hashlib.sha256(self.body + b"\n" + canonical).hexdigest()[:ID_LENGTH]

    @property
    def reason(self) -> str:
        """Why it is here: the worker's reason, or the broker's (``broker: delivery_limit``)."""
        reason = self.headers.get(REASON_HEADER)
        if isinstance(reason, str) and reason:
            return reason
        broker_reason = self.headers.get("x-first-death-reason")
        if isinstance(broker_reason, str):
            return f"broker: {broker_reason}"
        return "unknown"

    @property
    def reason_kind(self) -> str:
        """The kind of reason, without what it quotes: what ``dead list`` counts by."""
        reason = self.reason
        for prefix, kind in _REASON_KINDS:
            if reason.startswith(prefix):
                return kind
        return reason if reason.startswith("broker: ") else "invalid command"

    @property
    def command_id(self) -> str | None:
        """The command id, from the worker's header, Celery's task id or the body."""
        for candidate in (self.headers.get(COMMAND_ID_HEADER), self.headers.get("id")):
            if (found := readable_command_id(candidate)) is not None:
                return found
        try:
            payloads = command_payloads(self)
        except InvalidCommand:
            return None
        ids = [readable_command_id(p.get("command_id")) for p in payloads]
        return ids[0] if len(ids) == 1 else None

    @property
    def dead_at(self) -> datetime | None:
        """When it was dead-lettered, where the worker or the broker said so."""
        stamped = self.headers.get(DEAD_AT_HEADER)
        if isinstance(stamped, str):
            try:
                return datetime.fromisoformat(stamped)
            except ValueError:
                return None
        deaths = self.headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
            moment = deaths[0].get("time")
            if isinstance(moment, datetime):
                return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return None

    @property
    def queue(self) -> str | None:
        """The lane queue the broker dead-lettered it from (the broker's letters only)."""
        queue = self.headers.get("x-first-death-queue")
        return queue if isinstance(queue, str) else None

    @property
    def size(self) -> int:
        """Body bytes."""
        return len(self.body)

    def summary(self) -> dict[str, Any]:
        """What ``dead list --json`` prints for it."""
        return {
            "id": self.id,
            "command_id": self.command_id,
            "reason": self.reason,
            "dead_at": self.dead_at.isoformat() if self.dead_at else None,
            "size": self.size,
            "queue": self.queue,
        }


def command_payloads(letter: DeadLetter) -> list[dict[str, Any]]:
    """The command objects a letter's body carries: one, or a bulk chunk's list.

    The body is a command itself (what the worker could not validate), or a Celery
    task body (``[args, kwargs, ...]`` whose one argument is a command or a list).

    Raises:
        InvalidCommand: the body carries no command object.
    """
    try:
        data = json.loads(letter.body)
    except ValueError as exc:
        raise InvalidCommand(f"not JSON: {exc}") from None
    if isinstance(data, dict):
        return [data]
    args = data[0] if isinstance(data, list) and data else None
    if not isinstance(args, list) or len(args) != 1:
        raise InvalidCommand("holds no command: neither a command nor a task with one argument")
    argument = args[0]
    if isinstance(argument, dict):
        return [argument]
    if isinstance(argument, list) and argument and all(isinstance(a, dict) for a in argument):
        return argument
    raise InvalidCommand("holds no command: its task argument is not a command or a list")


class SignedCommand(NamedTuple):
    """A command a letter carries, with the signature it travelled with (if any)."""

    command: AnyCommand
    signature: Signature | None


def commands_of(letter: DeadLetter) -> list[AnyCommand]:
    """The valid commands a letter carries, as the worker would parse them.

    Raises:
        InvalidCommand: it carries none, or one of them is invalid (the reason says which).
    """
    return [signed.command for signed in signed_commands_of(letter)]


def signed_commands_of(letter: DeadLetter) -> list[SignedCommand]:
    """:func:`commands_of` with each command's own signature, so a replay goes out
    signed by its producer, as it first came (a policy in force still verifies it).

    Raises:
        InvalidCommand: it carries none, or one of them (or its signature) is invalid.
    """
    payloads = command_payloads(letter)
    found: list[SignedCommand] = []
    for index, payload in enumerate(payloads):
        try:
            found.append(_signed_command(payload))
        except InvalidCommand as exc:
            where = f"command {index + 1} of {len(payloads)}: " if len(payloads) > 1 else ""
            raise InvalidCommand(f"{where}{exc}", command_id=exc.command_id) from None
    return found


def _signed_command(payload: dict[str, Any]) -> SignedCommand:
    fields, raw_signature = detach_signature(payload)
    command = parse_command(fields)
    if raw_signature is None:
        return SignedCommand(command, None)
    try:
        return SignedCommand(command, Signature.model_validate(raw_signature))
    except ValidationError:
        raise InvalidCommand(
            f"its {SIGNATURE_FIELD!r} member is not a signature", command_id=command.command_id
        ) from None


class DeadLetterQueue(Protocol):
    """``subswitch.dead`` on one broker."""

    def letters(self) -> list[DeadLetter]:
        """Every letter, oldest first; none removed, none moved."""
        ...

    def settle(
        self, wanted: Callable[[DeadLetter], bool], act: Callable[[DeadLetter], bool]
    ) -> None:
        """Call ``act`` on each ``wanted`` letter, oldest first; remove the letter only
        when ``act`` returned True. Should ``act`` raise, that letter and every other
        stays where it was, and the error goes on."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@dataclass
class InMemoryDeadLetterQueue:
    """Test double: a list, oldest first."""

    kept: list[DeadLetter] = field(default_factory=list)

    def letters(self) -> list[DeadLetter]:
        """Every letter, oldest first."""
        return list(self.kept)

    def settle(
        self, wanted: Callable[[DeadLetter], bool], act: Callable[[DeadLetter], bool]
    ) -> None:
        """Act on the wanted letters; drop those acted on."""
        for letter in list(self.kept):
            if wanted(letter) and act(letter):
                self.kept.remove(letter)

    def close(self) -> None:
        """Nothing to release."""


class RedisDeadLetterQueue:
    """``subswitch.dead`` on a Redis broker: kombu's list (``LPUSH`` in, oldest at the
    right). Read with ``LRANGE``, removed one by one with ``LREM`` of that exact
    element, so the others keep their place."""

    def __init__(self, *, connection: Connection) -> None:
        self._connection = connection

    def letters(self) -> list[DeadLetter]:
        """Every letter, oldest first (``LRANGE``)."""
        return [_redis_letter(raw) for raw in self._raw()]

    def settle(
        self, wanted: Callable[[DeadLetter], bool], act: Callable[[DeadLetter], bool]
    ) -> None:
        """Act on each wanted letter; ``LREM`` the one element an action succeeded on."""
        for raw in self._raw():
            letter = _redis_letter(raw)
            if wanted(letter) and act(letter):
                with _mapped("remove a dead letter"):
                    self._client().lrem(DEAD_LETTER_QUEUE, -1, raw)

    def close(self) -> None:
        """Close the broker connection."""
        self._connection.release()

    def _raw(self) -> list[bytes]:
        with _mapped("read subswitch.dead"):
            elements = self._client().lrange(DEAD_LETTER_QUEUE, 0, -1)
        return list(reversed(elements))

    def _client(self) -> Any:
        # kombu's Redis channel holds a redis-py client built from the broker URL
        # (redis://, rediss://, redis+socket://), which is what the worker used.
        channel: Any = self._connection.default_channel
        return channel.client


def _redis_letter(raw: bytes) -> DeadLetter:
    try:
        message = json.loads(raw)
        properties = message.get("properties") or {}
        body = message.get("body") or ""
        if properties.get("body_encoding") == "base64":
            data = base64.b64decode(body)
        else:
            data = body.encode() if isinstance(body, str) else bytes(body)
        return DeadLetter(data, message.get("headers") or {}, message.get("content-type"))
    except (ValueError, TypeError, AttributeError):
        # Not kombu's envelope: keep it whole, so it can still be shown and purged.
        return DeadLetter(raw, {REASON_HEADER: "not a kombu message"}, None)


class RabbitDeadLetterQueue:
    """``subswitch.dead`` on RabbitMQ, read with ``basic.get`` and never acknowledged
    but for the letter acted on (after the action succeeded). Closing the channel
    returns every other letter to the queue in its place. Nothing is declared: a
    queue that does not exist yet holds no letters."""

    def __init__(self, *, connection: Connection) -> None:
        self._connection = connection

    def letters(self) -> list[DeadLetter]:
        """Every letter, oldest first; all returned to the queue afterwards."""
        found: list[DeadLetter] = []

        def collect(letter: DeadLetter) -> bool:
            found.append(letter)
            return False  # wanted by nobody: every letter goes back

        self.settle(collect, _never)
        return found

    def settle(
        self, wanted: Callable[[DeadLetter], bool], act: Callable[[DeadLetter], bool]
    ) -> None:
        """Take every letter unacknowledged; ack only those an action succeeded on."""
        with self._channel() as channel:
            if channel is None:
                return
            while True:
                with _mapped("read subswitch.dead"):
                    message = channel.basic_get(DEAD_LETTER_QUEUE, no_ack=False)
                if message is None:
                    return
                letter = _rabbit_letter(message)
                if wanted(letter) and act(letter):
                    with _mapped("remove a dead letter"):
                        channel.basic_ack(message.delivery_tag)

    def close(self) -> None:
        """Close the broker connection."""
        self._connection.release()

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        with _mapped("open a channel"):
            channel: Any = self._connection.channel()
        try:
            try:
                channel.queue_declare(DEAD_LETTER_QUEUE, passive=True)
            except NotFound:
                yield None  # no dead letter was ever kept
                return
            except BROKER_FAILURES as exc:
                raise BrokerError(f"could not read subswitch.dead: {type(exc).__name__}") from exc
            yield channel
        finally:
            # Unacknowledged letters go back where they were (and should the connection
            # be gone, the broker returns them all the same).
            with suppress(*BROKER_FAILURES):
                channel.close()


def _never(letter: DeadLetter) -> bool:
    return False


def _rabbit_letter(message: Any) -> DeadLetter:
    properties = message.properties or {}
    headers = properties.get("application_headers") or {}
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    return DeadLetter(body, dict(headers), properties.get("content_type"))


def open_dead_letter_queue(broker_url: str) -> DeadLetterQueue:
    """The dead-letter queue of the broker at ``broker_url`` (nothing is created).

    Raises:
        BrokerError: the broker could not be reached.
    """
    connection = broker_connection(broker_url, connect_timeout=5)
    with _mapped("connect to the broker"):
        connection.ensure_connection(max_retries=2, interval_start=0, interval_max=1)
    if is_amqp(broker_url):
        return RabbitDeadLetterQueue(connection=connection)
    return RedisDeadLetterQueue(connection=connection)


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except BROKER_FAILURES as exc:
        # The type only: a broker error's text can quote the URL, and with it a password.
        raise BrokerError(f"could not {what}: {type(exc).__name__}") from exc


def describe_body(letter: DeadLetter) -> str:
    """The body for people: indented JSON when it is JSON, else escaped text."""
    try:
        pretty = json.dumps(json.loads(letter.body), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return safe_line(letter.body.decode("utf-8", "backslashreplace"), limit=_SHOWN_BYTES)
    # A JSON string may still hold bidi overrides and other invisible characters.
    return "\n".join(safe_line(line, limit=_SHOWN_BYTES) for line in pretty.split("\n"))


def counts_by_reason(letters: Sequence[DeadLetter]) -> dict[str, int]:
    """How many letters per kind of reason, most first."""
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter.reason_kind] = counts.get(letter.reason_kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
