"""Counters that let tests prove what a client did to the upstream.

In flight means: a PATCH on a target between its arrival and the moment its answer is
handed to the server (injected latency included). The whole simulator runs on one event
loop, so plain counters are exact without locks as long as every start is paired with a
finish, which the API guarantees with ``try``/``finally``.
"""

from __future__ import annotations

from collections import deque


class Stats:
    """Write counters, in-flight maxima, per-second rates and idempotency-key applies.

    Idempotency keys are tracked for the most recent ``key_cap`` distinct keys, so a long
    load test cannot grow the table without bound.
    """

    def __init__(self, now: float, key_cap: int) -> None:
        self._key_cap = key_cap
        self._in_flight: dict[str, int] = {}
        self._in_flight_total = 0
        self.reset(now)

    def reset(self, now: float) -> None:
        """Start a new observation window; writes still in flight keep being tracked."""
        self.started_at = now
        self.writes_total = 0
        self.writes_applied = 0
        self._max_in_flight: dict[str, int] = {}
        self._max_in_flight_any = 0
        self._max_in_flight_total = 0
        self._per_second: dict[int, int] = {}
        self._max_per_second = 0
        self._key_counts: dict[str, int] = {}
        self._key_order: deque[str] = deque()
        self._duplicates: dict[str, int] = {}
        self._key_max = 0

    def write_started(self, target: str, now: float) -> None:
        """A PATCH on ``target`` arrived at ``now``."""
        self.writes_total += 1
        second = int(now)
        count = self._per_second.get(second, 0) + 1
        self._per_second[second] = count
        self._max_per_second = max(self._max_per_second, count)
        self._in_flight_total += 1
        self._max_in_flight_total = max(self._max_in_flight_total, self._in_flight_total)
        level = self._in_flight.get(target, 0) + 1
        self._in_flight[target] = level
        if level > self._max_in_flight.get(target, 0):
            self._max_in_flight[target] = level
            self._max_in_flight_any = max(self._max_in_flight_any, level)

    def write_finished(self, target: str) -> None:
        """The PATCH on ``target`` has its answer (or was abandoned)."""
        self._in_flight_total -= 1
        level = self._in_flight[target] - 1
        if level:
            self._in_flight[target] = level
        else:
            del self._in_flight[target]

    def write_applied(self, idempotency_key: str | None) -> None:
        """A write changed the state; count its idempotency key."""
        self.writes_applied += 1
        if idempotency_key is None:
            return
        count = self._key_counts.get(idempotency_key, 0) + 1
        self._key_counts[idempotency_key] = count
        if count == 1:
            self._remember_key(idempotency_key)
        else:
            self._duplicates[idempotency_key] = count
        self._key_max = max(self._key_max, count)

    def _remember_key(self, key: str) -> None:
        self._key_order.append(key)
        if len(self._key_order) > self._key_cap:
            oldest = self._key_order.popleft()
            del self._key_counts[oldest]
            self._duplicates.pop(oldest, None)

    def snapshot(self) -> dict[str, object]:
        """The ``GET /admin/stats`` document."""
        return {
            "writes_total": self.writes_total,
            "writes_applied": self.writes_applied,
            "max_in_flight_per_target": dict(self._max_in_flight),
            "max_in_flight_any": self._max_in_flight_any,
            "max_in_flight_total": self._max_in_flight_total,
            "in_flight_now": self._in_flight_total,
            "applied_per_idempotency_key_max": self._key_max,
            "duplicate_applies": dict(self._duplicates),
            "writes_per_second": {str(s): n for s, n in sorted(self._per_second.items())},
            "max_writes_in_any_second": self._max_per_second,
            "started_at": self.started_at,
        }
