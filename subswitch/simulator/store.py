"""The simulated subscriptions: a fixed catalogue plus the overrides that writes made.

Every org has subscriptions ``1..N`` and every subscription has the same four services
and two blocks in their seed state. Nothing is materialised per subscription: only a
target that a write changed has an entry, so N can be in the billions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

Kind = Literal["service", "block"]
TargetKey = tuple[str, int, Kind, int]

SEED_MODIFIED = "2017-09-15T22:00:00Z"
DEFAULT_BLOCK_DESCRIPTION = "A PETICION DE CLIENTE"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A service every subscription has, in its seed state."""

    id: int
    value: str
    changeable: bool
    active: bool


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """A block (barring) every subscription has; all start lifted."""

    id: int
    value: str


SERVICES: dict[int, ServiceSpec] = {
    1: ServiceSpec(1, "VOZ", changeable=True, active=True),
    2: ServiceSpec(2, "DATOS", changeable=True, active=True),
    3: ServiceSpec(3, "ROAMING", changeable=True, active=False),
    4: ServiceSpec(4, "SMS_PREMIUM", changeable=False, active=False),
}
BLOCKS: dict[int, BlockSpec] = {1: BlockSpec(1, "ROBO"), 2: BlockSpec(2, "PERDIDA")}


def as_kind(raw: str) -> Kind | None:
    """``raw`` as a target kind, or None if it is neither ``service`` nor ``block``."""
    if raw == "service":
        return "service"
    return "block" if raw == "block" else None


def rfc3339(epoch: float) -> str:
    """``epoch`` as an RFC 3339 UTC timestamp with milliseconds."""
    millis = int(epoch * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{millis:03d}Z"


class TargetState:
    """What writes made of one service or block."""

    __slots__ = ("active", "modified_at", "reason", "writes_applied")

    def __init__(self, active: bool) -> None:
        self.active = active
        self.reason: str | None = None
        self.modified_at: float | None = None
        self.writes_applied = 0


class Store:
    """Seed data derived on demand, plus the overrides left by applied writes."""

    def __init__(self, orgs: tuple[str, ...], subscriptions: int) -> None:
        self._orgs = frozenset(orgs)
        self._subscriptions = subscriptions
        self._overrides: dict[TargetKey, TargetState] = {}

    def has_subscription(self, org_id: str, subscription_id: int) -> bool:
        """Whether the subscription exists (no lookup table: ids are ``1..N``)."""
        return org_id in self._orgs and 1 <= subscription_id <= self._subscriptions

    def has_target(self, key: TargetKey) -> bool:
        """Whether the org, subscription and service or block all exist."""
        org_id, subscription_id, kind, item_id = key
        catalogue = SERVICES if kind == "service" else BLOCKS
        return item_id in catalogue and self.has_subscription(org_id, subscription_id)

    def apply(self, key: TargetKey, active: bool, reason: str | None, now: float) -> None:
        """Record an applied write on an existing target."""
        state = self._overrides.get(key)
        if state is None:
            state = self._overrides[key] = TargetState(active)
        state.active = active
        state.reason = reason
        state.modified_at = now
        state.writes_applied += 1

    def change_behind(self, key: TargetKey, active: bool, reason: str | None, now: float) -> None:
        """Another system changed an existing target: its state moves, no write counts."""
        state = self._overrides.get(key)
        if state is None:
            state = self._overrides[key] = TargetState(active)
        state.active = active
        state.reason = reason
        state.modified_at = now

    def state(self, key: TargetKey) -> TargetState:
        """The current state of an existing target (the seed state if never written)."""
        state = self._overrides.get(key)
        if state is not None:
            return state
        _, _, kind, item_id = key
        return TargetState(SERVICES[item_id].active if kind == "service" else False)

    def services(self, org_id: str, subscription_id: int) -> list[dict[str, object]]:
        """The ``Service`` items of an existing subscription."""
        items: list[dict[str, object]] = []
        for spec in SERVICES.values():
            state = self.state((org_id, subscription_id, "service", spec.id))
            items.append(
                {
                    "id": spec.id,
                    "value": spec.value,
                    "changeable": spec.changeable,
                    "date_last_modified": _modified(state),
                    "active": state.active,
                }
            )
        return items

    def active_blocks(self, org_id: str, subscription_id: int) -> list[dict[str, object]]:
        """The ``Block`` items currently in place (active) on an existing subscription."""
        items: list[dict[str, object]] = []
        for spec in BLOCKS.values():
            state = self.state((org_id, subscription_id, "block", spec.id))
            if state.active:
                items.append(
                    {
                        "id": spec.id,
                        "value": spec.value,
                        "date_last_modified": _modified(state),
                        "description": state.reason or DEFAULT_BLOCK_DESCRIPTION,
                        "active": True,
                    }
                )
        return items

    def written(self) -> list[TargetKey]:
        """Every target an applied write changed, in order of first write."""
        return list(self._overrides)

    def describe(self, key: TargetKey) -> dict[str, object]:
        """One target as the admin view shows it."""
        state = self.state(key)
        org_id, subscription_id, kind, item_id = key
        return {
            "org_id": org_id,
            "subscription_id": subscription_id,
            "kind": kind,
            "id": item_id,
            "active": state.active,
            "reason": state.reason,
            "date_last_modified": _modified(state),
            "writes_applied": state.writes_applied,
        }

    def clear(self) -> None:
        """Back to the seed state everywhere."""
        self._overrides.clear()


def _modified(state: TargetState) -> str:
    return SEED_MODIFIED if state.modified_at is None else rfc3339(state.modified_at)
