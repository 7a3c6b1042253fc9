"""What ``subswitch top`` shows, read from the broker and the store directly.

A :class:`Reading` is one look at both: the lanes' depth and the dead letters
(:mod:`subswitch.backlog`), the shared circuit's state and every worker process's
running totals (:mod:`subswitch.livestats`). Two readings make a :class:`TopView`:
rates are the totals' growth between them, per process seen in both (a process that
started or ended in between adds nothing). No Prometheus and no worker connection
needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis
from pydantic import BaseModel, ConfigDict
from rich.console import Group
from rich.table import Table
from rich.text import Text

from subswitch import livestats
from subswitch.backlog import Backlog, BacklogSource
from subswitch.contract import Lane, Outcome
from subswitch.errors import StoreError
from subswitch.livestats import ProcessStats
from subswitch.redact import redact_url


@dataclass(frozen=True)
class Reading:
    """One look at the broker and the store, at ``at`` (POSIX seconds)."""

    at: float
    backlog: Backlog
    breaker: str
    processes: list[ProcessStats]


class TopSource(Protocol):
    """Where readings come from."""

    def read(self) -> Reading:
        """One reading now.

        Raises:
            UnavailableError: the broker or the store did not answer.
        """
        ...


class LiveSource:
    """:class:`TopSource` on the real broker (``backlog``) and store (``client``)."""

    def __init__(
        self,
        *,
        backlog: BacklogSource,
        client: redis.Redis,
        store_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backlog = backlog
        self._client = client
        self._store_url = store_url
        self._clock = clock

    def read(self) -> Reading:
        """Ask the broker, then the store."""
        backlog = self._backlog.sample()
        now = self._clock()
        try:
            breaker = livestats.breaker_state(self._client)
            processes = livestats.read_all(self._client, now=now)
        except (redis.RedisError, OSError) as exc:
            where = redact_url(self._store_url)
            raise StoreError(f"store unavailable at {where}: {type(exc).__name__}") from None
        return Reading(at=now, backlog=backlog, breaker=breaker, processes=processes)


class LaneView(BaseModel):
    """One lane: messages waiting, and outcomes per second."""

    model_config = ConfigDict(frozen=True)

    depth: int
    outcomes_per_s: float


class TopView(BaseModel):
    """What ``subswitch top`` shows (and ``--once --json`` prints)."""

    model_config = ConfigDict(frozen=True)

    at: float
    interval_s: float
    lanes: dict[str, LaneView]
    outcomes_per_s: dict[str, float]
    inflight: int
    settling: int
    writes_per_s: float
    rate_limit_per_s: float | None
    rate_limit_use: float | None
    breaker: str
    dead_letters: int
    worker_processes: int


def summarise(before: Reading, after: Reading, *, rate_limit: float | None) -> TopView:
    """The view from two readings (rates over the time between them)."""
    interval = max(after.at - before.at, 1e-6)
    earlier = {process.key: process for process in before.processes}
    by_lane = dict.fromkeys((lane.value for lane in Lane), 0.0)
    by_outcome = dict.fromkeys((outcome.value for outcome in Outcome), 0.0)
    writes = 0
    for process in after.processes:
        old = earlier.get(process.key)
        if old is None:
            continue
        writes += max(0, process.writes - old.writes)
        for name, count in process.outcomes.items():
            grown = max(0, count - old.outcomes.get(name, 0))
            lane, _, outcome = name.partition(":")
            if lane in by_lane:
                by_lane[lane] += grown
            if outcome in by_outcome:
                by_outcome[outcome] += grown
    writes_per_s = writes / interval
    return TopView(
        at=after.at,
        interval_s=round(interval, 3),
        lanes={
            lane.value: LaneView(
                depth=after.backlog.depths.get(lane, 0),
                outcomes_per_s=round(by_lane[lane.value] / interval, 2),
            )
            for lane in Lane
        },
        outcomes_per_s={name: round(n / interval, 2) for name, n in by_outcome.items()},
        inflight=sum(process.inflight for process in after.processes),
        settling=sum(process.settling for process in after.processes),
        writes_per_s=round(writes_per_s, 2),
        rate_limit_per_s=rate_limit,
        rate_limit_use=round(writes_per_s / rate_limit, 3) if rate_limit else None,
        breaker=after.breaker,
        dead_letters=after.backlog.dead,
        worker_processes=len(after.processes),
    )


_BREAKER_STYLE = {"closed": "green", "half_open": "yellow", "open": "bold red"}


def render(view: TopView) -> Group:
    """The view as rich tables."""
    lanes = Table(title="lanes", title_justify="left", expand=False)
    lanes.add_column("lane")
    lanes.add_column("depth", justify="right")
    lanes.add_column("outcomes/s", justify="right")
    for name, lane in view.lanes.items():
        lanes.add_row(name, f"{lane.depth:,}", f"{lane.outcomes_per_s:,.1f}")
    outcomes = Table(title="outcomes/s", title_justify="left")
    for name in view.outcomes_per_s:
        outcomes.add_column(name, justify="right")
    outcomes.add_row(*(f"{rate:,.1f}" for rate in view.outcomes_per_s.values()))
    cap = (
        f"{view.writes_per_s:,.1f}/s of {view.rate_limit_per_s:,.0f}/s "
        f"({(view.rate_limit_use or 0) * 100:.0f}%)"
        if view.rate_limit_per_s
        else f"{view.writes_per_s:,.1f}/s (no cap)"
    )
    status = Text.assemble(
        ("breaker ", "bold"),
        (view.breaker.replace("_", "-"), _BREAKER_STYLE.get(view.breaker, "")),
        ("   in flight ", "bold"),
        str(view.inflight),
        ("   settling ", "bold"),
        str(view.settling),
        ("   upstream writes ", "bold"),
        cap,
        ("   dead letters ", "bold"),
        (f"{view.dead_letters:,}", "red" if view.dead_letters else ""),
        ("   worker processes ", "bold"),
        str(view.worker_processes),
    )
    return Group(status, lanes, outcomes)
