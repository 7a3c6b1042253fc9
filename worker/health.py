"""The worker's side of ``/metrics``, ``/healthz`` and ``/readyz`` (served by
:mod:`subswitch.health`): the periodic jobs behind them, and the readiness of
supervised children.

A worker is ready when the runtime is built, the worker consumes, and the broker and
the store answer.

Under ``subswitch worker`` with two Celery workers the supervisor serves: each child
writes its readiness into a small file next to its multiprocess metrics
(:class:`HealthFile`), and the supervisor is ready when every child is.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from subswitch.health import Readiness

logger = logging.getLogger(__name__)

#: Children write their readiness this often (s); older than three periods is stale.
HEALTH_FILE_PERIOD_S: Final = 2.0
_STALE_PERIODS: Final = 3


class Periodic:
    """Runs ``job`` every ``period_s`` on a daemon thread until :meth:`stop`.

    A failing job is logged once per run of failures, and tried again next period.
    """

    def __init__(self, job: Callable[[], None], *, period_s: float, name: str) -> None:
        self._job = job
        self._period_s = period_s
        self._name = name
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Periodic:
        """Start the thread (the first run is at once)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current run."""
        self._stopped.set()

    def _loop(self) -> None:
        failing = False
        while not self._stopped.is_set():
            try:
                self._job()
            except Exception as exc:  # noqa: BLE001 (a report must never end its thread)
                if not failing:
                    logger.warning("%s failed (%s); trying again", self._name, exc)
                failing = True
            else:
                if failing:
                    logger.info("%s works again", self._name)
                failing = False
            self._stopped.wait(self._period_s)


class HealthFile:
    """A child's readiness, in ``<directory>/health-<pid>.json``, written atomically."""

    def __init__(self, directory: Path, pid: int) -> None:
        self.path = directory / f"health-{pid}.json"

    def write(self, readiness: Readiness) -> None:
        """Replace the file with ``readiness``."""
        scratch = self.path.with_suffix(".tmp")
        scratch.write_bytes(readiness.to_json())
        os.replace(scratch, self.path)

    def read(self, *, max_age_s: float, now: float | None = None) -> Readiness:
        """What the child last wrote; not ready when missing or older than ``max_age_s``."""
        try:
            age = (time.time() if now is None else now) - self.path.stat().st_mtime
            stored = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return Readiness(ready=False, problems=("not reporting yet",))
        if age > max_age_s:
            return Readiness(ready=False, problems=(f"silent for {age:.0f} s",))
        return Readiness(ready=bool(stored["ready"]), problems=tuple(stored["problems"]))


def children_ready(children: Iterable[tuple[str, int, bool]], directory: Path) -> Readiness:
    """Ready when every child ``(name, pid, running)`` runs and reports itself ready."""
    problems: list[str] = []
    for name, pid, running in children:
        if not running:
            problems.append(f"{name} worker (pid {pid}) has exited")
            continue
        readiness = HealthFile(directory, pid).read(max_age_s=HEALTH_FILE_PERIOD_S * _STALE_PERIODS)
        problems.extend(f"{name} worker (pid {pid}): {p}" for p in readiness.problems)
    return Readiness(ready=not problems, problems=tuple(problems))
