"""The gateway's record of the commands it accepted: in the store, where ``subswitch
status`` and the gateway's own ``GET`` read it (``queued``), or in memory for tests.

A record is written before the command is published, so that a reused id is answered
``409`` and never enqueued, but with a short life (``keys.ACCEPTANCE_PENDING_S``):
only once the broker took the command is it kept for the retention. A publish that
fails withdraws it; a gateway killed in between leaves one that expires within a
minute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import redis

from subswitch import keys
from subswitch.clock import utcnow
from subswitch.contract import AnyCommand
from subswitch.errors import StoreError
from subswitch.status import Acceptance, record_acceptances

# KEYS: acceptance. ARGV: fingerprint. Only the record this command wrote goes.
_WITHDRAW_LUA: Final = """
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisAcceptances:
    """Acceptance records in the store (``subswitch.keys.acceptance``)."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        retention_s: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._client = client
        self._retention_s = retention_s
        self._clock = clock
        self._withdraw = client.register_script(_WITHDRAW_LUA)

    def accept(self, commands: Sequence[AnyCommand]) -> list[Acceptance]:
        """Record ``commands`` (distinct ids; for the pending time), in one round trip:
        each ``new``, ``same`` or ``conflict``.

        Raises:
            StoreError: the store could not be reached.
        """
        return record_acceptances(
            self._client, commands, now=self._clock(), retention_s=keys.ACCEPTANCE_PENDING_S
        )

    def confirm(self, commands: Sequence[AnyCommand]) -> None:
        """The broker took ``commands``: their records live the whole retention."""
        self._pipelined(
            lambda pipe, command: pipe.expire(
                keys.acceptance(command.command_id), self._retention_s
            ),
            commands,
        )

    def withdraw(self, commands: Sequence[AnyCommand]) -> None:
        """Remove the records of ``commands``, never enqueued."""
        self._pipelined(
            lambda pipe, command: self._withdraw(
                keys=[keys.acceptance(command.command_id)],
                args=[command.fingerprint()],
                client=pipe,
            ),
            commands,
        )

    def _pipelined(
        self,
        operation: Callable[[redis.client.Pipeline, AnyCommand], object],
        commands: Sequence[AnyCommand],
    ) -> None:
        if not commands:
            return
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for command in commands:
                    operation(pipe, command)
                pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"store unavailable: {exc}") from exc


@dataclass
class InMemoryAcceptances:
    """Test double: fingerprints by command id; set ``fail`` to make every call raise
    ``StoreError``."""

    fingerprints: dict[str, str] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)
    fail: bool = False

    def accept(self, commands: Sequence[AnyCommand]) -> list[Acceptance]:
        """Record ``commands``: each ``new``, ``same`` or ``conflict``."""
        self._maybe_fail()
        return [self._accept(command) for command in commands]

    def _accept(self, command: AnyCommand) -> Acceptance:
        fingerprint = command.fingerprint()
        known = self.fingerprints.get(command.command_id)
        if known is None:
            self.fingerprints[command.command_id] = fingerprint
            return Acceptance.NEW
        return Acceptance.SAME if known == fingerprint else Acceptance.CONFLICT

    def confirm(self, commands: Sequence[AnyCommand]) -> None:
        """Mark ``commands`` enqueued."""
        self._maybe_fail()
        self.confirmed.update(command.command_id for command in commands)

    def withdraw(self, commands: Sequence[AnyCommand]) -> None:
        """Forget ``commands``."""
        self._maybe_fail()
        for command in commands:
            self.fingerprints.pop(command.command_id, None)

    def _maybe_fail(self) -> None:
        if self.fail:
            raise StoreError("the store is told to fail")
