"""The gateway's record of the commands it accepted: in the store (shared with
``subswitch status``), or in memory for tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from subswitch.contract import AnyCommand
from subswitch.errors import StoreError
from subswitch.status import Acceptance


@dataclass
class InMemoryAcceptances:
    """Test double: fingerprints by command id; set ``fail`` to make every call raise
    ``StoreError``."""

    fingerprints: dict[str, str] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)
    fail: bool = False

    def accept(self, command: AnyCommand) -> Acceptance:
        """Record ``command``: ``new``, ``same`` or ``conflict``."""
        self._maybe_fail()
        fingerprint = command.fingerprint()
        known = self.fingerprints.get(command.command_id)
        if known is None:
            self.fingerprints[command.command_id] = fingerprint
            return Acceptance.NEW
        return Acceptance.SAME if known == fingerprint else Acceptance.CONFLICT

    def withdraw(self, command: AnyCommand) -> None:
        """Forget ``command``."""
        self._maybe_fail()
        self.fingerprints.pop(command.command_id, None)

    def confirm(self, command: AnyCommand) -> None:
        """Mark ``command`` enqueued."""
        self._maybe_fail()
        self.confirmed.add(command.command_id)

    def _maybe_fail(self) -> None:
        if self.fail:
            raise StoreError("the store is told to fail")
