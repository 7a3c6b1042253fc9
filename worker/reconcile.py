"""Does the upstream still hold what subswitch applied? Compare, report, repair.

The upstream is a proxy in front of the switching platform, and other systems change
it too: a 201 is no proof that the state still holds tomorrow. For each target,
:class:`Reconciler` compares the newest applied intent (:class:`IntentReader`: the
store's target watermark and that command's recorded event, else the audit archive)
with what the upstream shows now (``GET .../services`` and ``GET .../blocks``, one of
each per subscription at most, each read taking a slot of the global rate limit the
workers share). A target whose upstream state differs has drifted; with ``repair``
its newest intent is enqueued again as a new command (see :func:`repair_command`), so
the repair goes through every guarantee of the pipeline.
"""

from __future__ import annotations

import csv
import io
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

import redis
from pydantic import ValidationError

from subswitch import keys
from subswitch.audit import EventArchive
from subswitch.clock import utcnow
from subswitch.contract import (
    COMMAND_ADAPTER,
    ORG_ID_PATTERN,
    AnyCommand,
    Lane,
    Outcome,
    ResultEvent,
    Target,
)
from subswitch.errors import InvalidInput, StoreError, SubswitchError
from subswitch.text import safe_line
from worker.upstream.models import SubscriptionBlocks, SubscriptionServices

#: ``source`` of every repair command.
RECONCILE_SOURCE: Final = "reconcile"
#: What a targets file's header row may say (it is optional).
TARGETS_HEADER: Final = ("org_id", "subscription_id", "kind", "id")
_MAX_COMMAND_ID: Final = 128
_ORG_ID: Final = re.compile(ORG_ID_PATTERN)
#: Namespace of the repair id used when ``<id>.reconcile.<seconds>`` would be too long.
_REPAIR_NAMESPACE: Final = uuid.UUID("0c7f2f8e-61a4-4a43-9a7e-4f7d0f3e2b15")


@dataclass(frozen=True)
class Intent:
    """The newest applied command on a target, as its ``applied`` event tells it."""

    event: ResultEvent
    #: Where it was found: ``store`` or ``archive``.
    found_in: str

    @property
    def active(self) -> bool:
        """What the command asked: on (True) or off."""
        return bool(self.event.data.active)

    @property
    def command_id(self) -> str:
        """The applied command's id."""
        return self.event.data.command_id or ""


class IntentReader(Protocol):
    """Where a target's newest applied intent is read."""

    def newest_applied(self, target: Target) -> Intent | None:
        """The newest applied intent on ``target``, or ``None`` if none is known."""
        ...


class StoreIntents:
    """From the store while it remembers (the watermark ``subswitch:target:...`` names
    the newest applied command, whose record holds its event), else the archive."""

    def __init__(self, *, client: redis.Redis, archive: EventArchive | None = None) -> None:
        self._client = client
        self._archive = archive

    def newest_applied(self, target: Target) -> Intent | None:
        """The newest applied intent on ``target``.

        Raises:
            StoreError: the store did not answer.
        """
        event = self._from_store(target)
        if event is not None:
            return Intent(event, "store")
        archived = self._archive.newest_applied(target) if self._archive else None
        return Intent(archived, "archive") if archived is not None else None

    def watermark(self, target: Target) -> str | None:
        """The id of the newest command applied to ``target``, as the store has it."""
        with _store_errors():
            value = self._client.hget(keys.target(target), "id")
        return value.decode() if isinstance(value, bytes) else value

    def in_flight(self, target: Target) -> str | None:
        """Why a repair must not go out now: a command holds the target (its lock) or
        has an attempt whose result is unknown (pending), else ``None``."""
        with _store_errors():
            holder = self._client.get(keys.target_lock(target))
            pending = self._client.hkeys(keys.target_pending(target))
        if holder is not None:
            return "a command is in flight on it"
        if pending:
            first = pending[0].decode() if isinstance(pending[0], bytes) else str(pending[0])
            return f"a command's result is still unknown ({safe_line(first, limit=140)})"
        return None

    def targets_of(self, org_id: str, *, since: datetime | None) -> Iterator[Target]:
        """Every target of ``org_id`` with a watermark in the store whose command was
        issued at or after ``since``. SCAN: it never blocks the store."""
        since_us = None if since is None else int(since.timestamp() * 1_000_000)
        with _store_errors():
            for name in self._client.scan_iter(match=keys.targets_of_org(org_id), count=1000):
                target = _target_of_key(name.decode() if isinstance(name, bytes) else name)
                if target is None or target.org_id != org_id:
                    continue
                if since_us is None or self._issued_us(target) >= since_us:
                    yield target

    def _issued_us(self, target: Target) -> int:
        value = self._client.hget(keys.target(target), "us")
        return int(value) if value is not None else -1

    def _from_store(self, target: Target) -> ResultEvent | None:
        command_id = self.watermark(target)
        if command_id is None:
            return None
        with _store_errors():
            raw = self._client.hget(keys.command(command_id), "event")
        if raw is None:
            return None  # the record outlived: the archive has it
        try:
            event = ResultEvent.model_validate_json(raw)
        except ValidationError:
            return None
        return event if event.outcome is Outcome.APPLIED else None


def _target_of_key(name: str) -> Target | None:
    parts = name.split(":")
    if len(parts) != 6 or parts[4] not in ("block", "service"):
        return None
    try:
        kind: Any = parts[4]
        return Target(parts[2], int(parts[3]), kind, int(parts[5]))
    except ValueError:
        return None


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except (redis.RedisError, OSError) as exc:
        raise StoreError(f"could not read the store: {type(exc).__name__}") from exc


class UpstreamReader(Protocol):
    """The two read operations of the upstream client (``MasStackClient``)."""

    def list_services(self, org_id: str, subscription_id: int) -> SubscriptionServices:
        """``GET .../services``."""
        ...

    def list_blocks(self, org_id: str, subscription_id: int) -> SubscriptionBlocks:
        """``GET .../blocks``."""
        ...


#: Waits for a slot of the global rate limit; ``None`` when it is ours, else seconds to
#: come back after (``worker.traffic.RateLimiter.acquire``).
Acquire = Callable[[Lane], float | None]


class Drift(StrEnum):
    """The verdict on one target."""

    IN_SYNC = "in_sync"
    DRIFTED = "drifted"
    #: No applied intent known: nothing to compare with.
    NO_INTENT = "no_intent"
    #: The upstream could not be read (the error says why).
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class TargetReport:
    """One target's line of the report."""

    target: Target
    verdict: Drift
    intent: Intent | None = None
    upstream_active: bool | None = None
    error: str | None = None
    #: The repair command's id, once enqueued.
    repair: str | None = None
    #: Why a drifted target was not repaired.
    not_repaired: str | None = None

    def to_json(self) -> dict[str, Any]:
        """What ``reconcile --json`` prints for it."""
        target = self.target
        return {
            "org_id": target.org_id, "subscription_id": target.subscription_id,
            "kind": target.kind, "id": target.ident, "verdict": self.verdict.value,
            "drift": _drift_flag(self.verdict),
            "intent": None if self.intent is None else {
                "active": self.intent.active, "command_id": self.intent.command_id,
                "issued_at": _iso(self.intent.event.data.issued_at),
                "source": self.intent.event.data.source, "from": self.intent.found_in,
            },
            "upstream_active": self.upstream_active, "error": self.error,
            "repair": self.repair, "not_repaired": self.not_repaired,
        }  # fmt: skip


def _drift_flag(verdict: Drift) -> bool | None:
    if verdict is Drift.DRIFTED:
        return True
    return False if verdict is Drift.IN_SYNC else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass
class Totals:
    """How many targets got each verdict, and how many repairs were enqueued."""

    counts: dict[str, int] = field(default_factory=lambda: {d.value: 0 for d in Drift})
    repaired: int = 0

    def add(self, report: TargetReport) -> None:
        """Count one target."""
        self.counts[report.verdict.value] += 1
        self.repaired += report.repair is not None

    def to_json(self) -> dict[str, int]:
        """Totals as printed."""
        return {"targets": sum(self.counts.values()), **self.counts, "repaired": self.repaired}


def repair_command(intent: Intent, *, now: datetime) -> AnyCommand:
    """The command that enqueues ``intent`` again.

    Same target, ``active`` and reason, lane and ``not_after``-free; ``source`` is
    ``reconcile``, ``correlation_id`` the original command's id, ``issued_at`` now (so
    it wins over the drifted state; the reconciler checks just before that no newer
    command was applied meanwhile). Its id is ``<original id>.reconcile.<unix s>``
    (a UUID derived from it if that would be too long): the same repair enqueued twice
    within a second is one command.

    Raises:
        InvalidInput: the event does not describe a command (a malformed archive row).
    """
    data = intent.event.data
    repair_id = f"{intent.command_id}.reconcile.{int(now.timestamp())}"
    if len(repair_id) > _MAX_COMMAND_ID:
        repair_id = f"reconcile.{uuid.uuid5(_REPAIR_NAMESPACE, repair_id)}"
    fields: dict[str, Any] = {
        "type": data.command_type, "command_id": repair_id, "org_id": data.org_id,
        "subscription_id": data.subscription_id, "active": data.active,
        "issued_at": now, "priority": data.priority or Lane.NORMAL,
        "source": RECONCILE_SOURCE, "correlation_id": intent.command_id,
    }  # fmt: skip
    if data.command_type == "ChangeBlockStatus":
        fields.update(block_id=data.block_id, reason=data.reason)
    else:
        fields["service_id"] = data.service_id
    try:
        return COMMAND_ADAPTER.validate_python(fields)
    except ValidationError as exc:
        reason = f"cannot rebuild {intent.command_id}: {exc.error_count()} error(s)"
        raise InvalidInput(reason) from None


class Reconciler:
    """Compares targets with the upstream and, if asked, enqueues repairs."""

    def __init__(
        self,
        *,
        intents: IntentReader,
        upstream: UpstreamReader,
        acquire: Acquire | None = None,
        enqueue: Callable[[AnyCommand], None] | None = None,
        watermark: Callable[[Target], str | None] | None = None,
        in_flight: Callable[[Target], str | None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._intents = intents
        self._upstream = upstream
        self._acquire = acquire
        self._enqueue = enqueue
        self._watermark = watermark
        self._in_flight = in_flight
        self._clock = clock
        self._sleep = sleep
        self._read: dict[tuple[str, int, str], SubscriptionBlocks | SubscriptionServices] = {}
        self._subscription: tuple[str, int] | None = None

    def reconcile(self, targets: Iterable[Target]) -> Iterator[TargetReport]:
        """One report per target, in order (the upstream is read lazily, and each
        subscription's services or blocks once)."""
        for target in targets:
            yield self.check(target)

    def check(self, target: Target) -> TargetReport:
        """The verdict on one target (and its repair, if enqueueing is on)."""
        intent = self._intents.newest_applied(target)
        if intent is None:
            return TargetReport(target, Drift.NO_INTENT)
        try:
            upstream_active = self._upstream_active(target)
        except SubswitchError as exc:
            return TargetReport(target, Drift.UNREADABLE, intent, error=safe_line(str(exc)))
        if upstream_active == intent.active:
            return TargetReport(target, Drift.IN_SYNC, intent, upstream_active)
        report = TargetReport(target, Drift.DRIFTED, intent, upstream_active)
        return self._repaired(report, intent) if self._enqueue is not None else report

    def _repaired(self, report: TargetReport, intent: Intent) -> TargetReport:
        assert self._enqueue is not None
        newest = self._watermark(report.target) if self._watermark else intent.command_id
        if newest is not None and newest != intent.command_id:
            return _replace(report, not_repaired=f"a newer command ({newest}) was applied")
        # A command on its way may be the newer intent: it decides, not the repair.
        busy = self._in_flight(report.target) if self._in_flight else None
        if busy is not None:
            return _replace(report, not_repaired=busy)
        command = repair_command(intent, now=self._clock())
        self._enqueue(command)
        return _replace(report, repair=command.command_id)

    def _upstream_active(self, target: Target) -> bool:
        if target.kind == "block":
            return any(item.id == target.ident for item in self._blocks(target).items)
        for item in self._services(target).items:
            if item.id == target.ident:
                if item.active is None:
                    raise InvalidInput(f"the upstream does not say whether service {item.id} is on")
                return item.active
        raise InvalidInput(f"the upstream lists no service {target.ident}")

    def _blocks(self, target: Target) -> SubscriptionBlocks:
        key = (target.org_id, target.subscription_id, "blocks")
        cached = self._read.get(key)
        if not isinstance(cached, SubscriptionBlocks):
            self._wait_for_slot()
            cached = self._upstream.list_blocks(target.org_id, target.subscription_id)
            self._keep(key, cached)
        return cached

    def _services(self, target: Target) -> SubscriptionServices:
        key = (target.org_id, target.subscription_id, "services")
        cached = self._read.get(key)
        if not isinstance(cached, SubscriptionServices):
            self._wait_for_slot()
            cached = self._upstream.list_services(target.org_id, target.subscription_id)
            self._keep(key, cached)
        return cached

    def _keep(
        self, key: tuple[str, int, str], answer: SubscriptionBlocks | SubscriptionServices
    ) -> None:
        if key[:2] != self._subscription:
            self._read.clear()  # targets come grouped by subscription: keep only its reads
            self._subscription = key[:2]
        self._read[key] = answer

    def _wait_for_slot(self) -> None:
        if self._acquire is None:
            return
        # The bulk lane's reach: commands on their way to the upstream go first.
        while (wait := self._acquire(Lane.BULK)) is not None:
            self._sleep(wait)


def _replace(report: TargetReport, **changes: Any) -> TargetReport:
    values = {name: getattr(report, name) for name in report.__dataclass_fields__}
    return TargetReport(**{**values, **changes})


def read_targets(path: Path) -> list[Target]:
    """The targets of a CSV file: ``org_id,subscription_id,kind,id`` per line (kind
    ``block`` or ``service``), an optional header line, ``#`` comments, blank lines.

    Raises:
        InvalidInput: the file cannot be read, or a line is wrong (its number named).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {type(exc).__name__}") from None
    targets: list[Target] = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and tuple(cells) == TARGETS_HEADER:
            continue
        targets.append(_target_of_row(cells, f"{path.name}:{number}"))
    return grouped(targets)


def grouped(targets: Iterable[Target]) -> list[Target]:
    """``targets`` without repeats, each subscription's together (its services and its
    blocks are then read once each)."""
    return sorted(dict.fromkeys(targets), key=lambda t: (t.org_id, t.subscription_id, t.kind))


def _target_of_row(cells: list[str], where: str) -> Target:
    if len(cells) != 4:
        raise InvalidInput(
            f"{where}: expected org_id,subscription_id,kind,id; got {len(cells)} fields"
        )
    org_id, subscription, kind, ident = cells
    if kind not in ("block", "service"):
        raise InvalidInput(
            f"{where}: kind must be block or service, not {safe_line(kind, limit=40)!r}"
        )
    try:
        target = Target(org_id, int(subscription), kind, int(ident))  # type: ignore[arg-type]
    except ValueError:
        raise InvalidInput(f"{where}: subscription_id and id must be integers") from None
    if not _ORG_ID.fullmatch(org_id):
        raise InvalidInput(f"{where}: bad org_id {safe_line(org_id, limit=70)!r}")
    return target
