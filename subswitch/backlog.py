"""How many messages wait in the lanes and in ``subswitch.dead``, read from the broker.

:class:`BrokerBacklog` asks the broker itself (a passive queue declaration on
RabbitMQ, the lists' lengths on Redis), so the worker's queue-depth metrics and
``subswitch top`` need nothing but the broker URL. :class:`InMemoryBacklog` stands in
for it in tests.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from amqp.exceptions import NotFound
from kombu import Connection
from kombu.exceptions import ChannelError

from subswitch.broker import BROKER_FAILURES, broker_connection, is_amqp
from subswitch.contract import DEAD_LETTER_QUEUE, Lane
from subswitch.errors import BrokerError
from subswitch.redact import scrub

_CONNECT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Backlog:
    """Messages ready in each lane's queue, and in ``subswitch.dead``."""

    depths: dict[Lane, int]
    dead: int


class BacklogSource(Protocol):
    """Where the backlog is read from."""

    def sample(self) -> Backlog:
        """The backlog now.

        Raises:
            BrokerError: the broker could not be asked.
        """
        ...

    def close(self) -> None:
        """Release the connection, if any."""


class BrokerBacklog:
    """:class:`BacklogSource` on a broker (one connection, reopened after a failure)."""

    def __init__(self, *, broker_url: str) -> None:
        self._url = broker_url
        self._passive = is_amqp(broker_url)
        self._connection: Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "BrokerBacklog()"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def sample(self) -> Backlog:
        """Ask the broker for every lane's depth and the dead letters."""
        with self._lock:
            try:
                connection = self._connect()
                depths = {lane: self._size(connection, lane.queue) for lane in Lane}
                return Backlog(depths=depths, dead=self._size(connection, DEAD_LETTER_QUEUE))
            except BROKER_FAILURES as exc:
                self._drop()
                reason = scrub(str(exc) or type(exc).__name__, self._url)
                raise BrokerError(f"broker unavailable: {reason}") from None

    def _connect(self) -> Connection:
        if self._connection is None:
            self._connection = broker_connection(self._url, connect_timeout=_CONNECT_TIMEOUT_S)
            self._connection.ensure_connection(max_retries=1, interval_start=0)
        return self._connection

    def _size(self, connection: Connection, queue: str) -> int:
        if not self._passive:
            # On Redis a declaration only reports the lists' length (every priority);
            # a missing list is an empty queue.
            channel: Any = connection.default_channel
            return int(channel.queue_declare(queue).message_count)
        # A passive declaration never creates a queue nor argues with its arguments;
        # RabbitMQ closes the channel when the queue does not exist: one per queue.
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        except (NotFound, ChannelError):
            return 0
        finally:
            with contextlib.suppress(*BROKER_FAILURES):
                channel.close()

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(*BROKER_FAILURES):
                self._connection.release()
            self._connection = None

    def close(self) -> None:
        """Release the connection."""
        with self._lock:
            self._drop()


@dataclass
class InMemoryBacklog:
    """:class:`BacklogSource` with set figures (``fail`` makes :meth:`sample` raise)."""

    depths: dict[Lane, int] = field(default_factory=lambda: dict.fromkeys(Lane, 0))
    dead: int = 0
    fail: bool = False

    def sample(self) -> Backlog:
        """The set figures."""
        if self.fail:
            raise BrokerError("broker unavailable: set to fail")
        return Backlog(depths=dict(self.depths), dead=self.dead)

    def close(self) -> None:
        """Nothing to release."""
