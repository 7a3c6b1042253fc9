"""``CommandProducer``: the producer SDK's entry point."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Self, Unpack

import redis

from producers.commands import (
    DEFAULT_SOURCE,
    Envelope,
    block_status_command,
    check_time_bounds,
    revalidate,
    service_status_command,
)
from producers.commands import time_bounds as bounds_of
from producers.publisher import CeleryPublisher, Publisher
from subswitch.audit import EventArchive
from subswitch.clock import utcnow
from subswitch.contract import AnyCommand, TimeBounds
from subswitch.errors import ConfigurationError, StoreError
from subswitch.settings import Settings
from subswitch.signing import Signer
from subswitch.status import CommandStatus, StatusReader, open_store, record_acceptance
from subswitch.urls import BROKER_VARIABLE, STORE_VARIABLE, resolve_store_url

logger = logging.getLogger(__name__)


def store_for(settings: Settings) -> redis.Redis | None:
    """A client of the workers' store if this producer knows it: ``SUBSWITCH_STORE_URL``,
    or the embedded Redis when no broker URL is set either; else ``None``."""
    if settings.store_url or not settings.broker_url:
        return open_store(resolve_store_url(settings))
    return None


class CommandProducer:
    """Validates commands and enqueues them; every method returns the ``command_id``.

    Nothing is enqueued unless the command is valid: an invalid one raises
    ``InvalidCommandError`` naming the field(s), and so does one whose ``issued_at``
    is more than ``SUBSWITCH_MAX_CLOCK_SKEW_SECONDS`` ahead of this machine's clock or
    older than ``SUBSWITCH_RETENTION_SECONDS`` (``time_bounds``; the defaults unless
    given). A broker failure raises
    ``PublishError``; re-sending the same command (same ``command_id``) is then safe,
    the worker applies a command once however often it arrives.

    Given the ``store`` (a Redis client of the workers' store), it records each
    command the broker accepted, so :meth:`status` says ``queued`` before a worker
    took it, and :meth:`status` reads it; ``archive`` answers for commands whose
    records left the store.

    With a ``signer`` (``SUBSWITCH_PRODUCER_KEY_FILE`` for ``from_env``) every command
    goes out signed, as a worker with a policy requires (contract §8).

    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        *,
        publisher: Publisher,
        default_source: str = DEFAULT_SOURCE,
        time_bounds: TimeBounds | None = None,
        clock: Callable[[], datetime] = utcnow,
        store: redis.Redis | None = None,
        archive: EventArchive | None = None,
        signer: Signer | None = None,
    ) -> None:
        self._publisher = publisher
        self._signer = signer
        self.default_source = default_source
        self._bounds = time_bounds or bounds_of()
        self._clock = clock
        self._store = store
        self._reader = None if store is None else StatusReader(client=store, archive=archive)

    @classmethod
    def from_env(cls) -> CommandProducer:
        """A producer configured from ``SUBSWITCH_*`` environment variables.

        With no ``SUBSWITCH_BROKER_URL`` the embedded broker is used (and started).
        """
        return cls.from_settings(Settings())

    @classmethod
    def from_settings(
        cls, settings: Settings, *, archive: EventArchive | None = None
    ) -> CommandProducer:
        """A producer for already-read settings; with the store when it has one (the
        configured ``SUBSWITCH_STORE_URL``, or the embedded one when no broker URL is
        set either)."""
        publisher = CeleryPublisher.from_settings(settings)
        return cls(
            publisher=publisher,
            default_source=settings.source,
            time_bounds=bounds_of(settings),
            store=store_for(settings),
            archive=archive,
            signer=publisher.signer,
        )

    @property
    def signer(self) -> Signer | None:
        """The key commands are signed with (``None``: they go unsigned)."""
        return self._signer

    def change_block_status(
        self,
        *,
        org_id: str,
        subscription_id: int,
        block_id: int,
        active: bool,
        reason: str | None = None,
        **envelope: Unpack[Envelope],
    ) -> str:
        """Put barring ``block_id`` (1 or 2) on (``active=True``) or lift it."""
        command = block_status_command(
            org_id=org_id,
            subscription_id=subscription_id,
            block_id=block_id,
            active=active,
            reason=reason,
            default_source=self.default_source,
            **envelope,
        )
        return self.send(command)

    def change_service_status(
        self,
        *,
        org_id: str,
        subscription_id: int,
        service_id: int,
        active: bool,
        **envelope: Unpack[Envelope],
    ) -> str:
        """Activate (``active=True``) or deactivate service ``service_id``."""
        command = service_status_command(
            org_id=org_id,
            subscription_id=subscription_id,
            service_id=service_id,
            active=active,
            default_source=self.default_source,
            **envelope,
        )
        return self.send(command)

    def send(self, command: AnyCommand) -> str:
        """Enqueue a command model on its lane and return its ``command_id``."""
        checked = revalidate(command)
        now = self._clock()
        check_time_bounds(checked, self._bounds, now=now)
        signature = self._signer.sign(checked) if self._signer is not None else None
        self._publisher.publish(checked, signature=signature)
        self._record_acceptance(checked, now)
        return checked.command_id

    def status(self, command_id: str) -> CommandStatus:
        """Where ``command_id`` is: ``queued``, ``waiting``, ``settling``,
        ``in_flight``, its outcome with its event, or ``unknown`` (contract §7).

        Raises:
            ConfigurationError: this producer has no store (a broker URL without
                ``SUBSWITCH_STORE_URL``).
            StoreError: the store could not be reached.
        """
        if self._reader is None:
            raise ConfigurationError(
                f"{STORE_VARIABLE} is not set but {BROKER_VARIABLE} is: a command's status "
                "is read from the workers' store"
            )
        return self._reader.status(command_id)

    def _record_acceptance(self, command: AnyCommand, now: datetime) -> None:
        # The broker has the command: a store that fails here costs only the `queued`
        # answer until a worker takes it, so the send still succeeds.
        if self._store is None:
            return
        try:
            record_acceptance(
                self._store, command, now=now, retention_s=int(self._bounds.retention_s)
            )
        except StoreError as exc:
            logger.warning("%s: enqueued; acceptance not recorded: %s", command.command_id, exc)

    def close(self) -> None:
        """Release the publisher's (and the store's) connections."""
        self._publisher.close()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
