"""``CommandProducer``: the producer SDK's entry point."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Self, Unpack

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
from subswitch.contract import AnyCommand, TimeBounds
from subswitch.settings import Settings
from subswitch.signing import Signer


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CommandProducer:
    """Validates commands and enqueues them; every method returns the ``command_id``.

    Nothing is enqueued unless the command is valid: an invalid one raises
    ``InvalidCommandError`` naming the field(s), and so does one whose ``issued_at``
    is more than ``SUBSWITCH_MAX_CLOCK_SKEW_SECONDS`` ahead of this machine's clock or
    older than ``SUBSWITCH_RETENTION_SECONDS`` (``time_bounds``; the defaults unless
    given). A broker failure raises
    ``PublishError``; re-sending the same command (same ``command_id``) is then safe,
    the worker applies a command once however often it arrives.

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
        clock: Callable[[], datetime] = _utcnow,
        signer: Signer | None = None,
    ) -> None:
        self._publisher = publisher
        self._signer = signer
        self.default_source = default_source
        self._bounds = time_bounds or bounds_of()
        self._clock = clock

    @classmethod
    def from_env(cls) -> CommandProducer:
        """A producer configured from ``SUBSWITCH_*`` environment variables.

        With no ``SUBSWITCH_BROKER_URL`` the embedded broker is used (and started).
        """
        return cls.from_settings(Settings())

    @classmethod
    def from_settings(cls, settings: Settings) -> CommandProducer:
        """A producer for already-read settings."""
        publisher = CeleryPublisher.from_settings(settings)
        return cls(
            publisher=publisher,
            default_source=settings.source,
            time_bounds=bounds_of(settings),
            signer=publisher.signer,
        )

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
        check_time_bounds(checked, self._bounds, now=self._clock())
        signature = self._signer.sign(checked) if self._signer is not None else None
        self._publisher.publish(checked, signature=signature)
        return checked.command_id

    def close(self) -> None:
        """Release the publisher's connections."""
        self._publisher.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
