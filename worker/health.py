"""``/metrics``, ``/healthz`` and ``/readyz`` on ``SUBSWITCH_METRICS_PORT``, and the
periodic jobs behind them.

``/healthz`` answers 200 while the process runs (liveness). ``/readyz`` answers 200
when the runtime is built, the worker consumes, and the broker and the store answer;
else 503 with the problems as JSON. Checks are cached for a couple of seconds, so a
probe storm costs the broker nothing.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer

logger = logging.getLogger(__name__)

#: A readiness answer is reused this long (s).
READY_CACHE_S: Final = 2.0
#: Children write their readiness this often (s); older than three periods is stale.
HEALTH_FILE_PERIOD_S: Final = 2.0
_STALE_PERIODS: Final = 3

#: One check: ``None`` when fine, else what is wrong (one line).
Check = Callable[[], str | None]
_StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True)
class Readiness:
    """Whether the process may take traffic, and if not, why."""

    ready: bool
    problems: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        """``{"ready": ..., "problems": [...]}``."""
        return json.dumps({"ready": self.ready, "problems": list(self.problems)}).encode()


class CachedReadiness:
    """Runs named checks at most every ``cache_s``; a check that raises is a problem."""

    def __init__(
        self,
        checks: dict[str, Check],
        *,
        cache_s: float = READY_CACHE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = checks
        self._cache_s = cache_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last: tuple[float, Readiness] | None = None

    def invalidate(self) -> None:
        """Forget the cached answer: something changed (the worker started or stops)."""
        with self._lock:
            self._last = None

    def __call__(self) -> Readiness:
        """The readiness now (or a moment ago)."""
        with self._lock:
            now = self._monotonic()
            if self._last is None or now - self._last[0] >= self._cache_s:
                self._last = (now, self._run())
            return self._last[1]

    def _run(self) -> Readiness:
        problems = []
        for name, check in self._checks.items():
            try:
                problem = check()
            except Exception as exc:  # noqa: BLE001 (a failing check: not ready, never a 500)
                problem = f"{type(exc).__name__}"
            if problem is not None:
                problems.append(f"{name}: {problem}")
        return Readiness(ready=not problems, problems=tuple(problems))


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape or probe."""

    def log_message(self, format: str, *args: Any) -> None:
        """Dropped."""


class HealthServer:
    """The HTTP endpoints, on a daemon thread (``port`` 0 picks a free port)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: Callable[[], CollectorRegistry],
        ready: Callable[[], Readiness],
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._alive = alive
        self._server = make_server(
            host, port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="subswitch-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_port)

    def start(self) -> HealthServer:
        """Serve in the background."""
        self._thread.start()
        logger.info("metrics and health on port %d (/metrics, /healthz, /readyz)", self.port)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return _answer(
                start_response, 200, generate_latest(self._registry()), CONTENT_TYPE_LATEST
            )
        if path == "/healthz":
            alive = self._alive()
            return _answer(start_response, 200 if alive else 503, b"ok\n" if alive else b"dead\n")
        if path == "/readyz":
            readiness = self._ready()
            status = 200 if readiness.ready else 503
            return _answer(start_response, status, readiness.to_json(), "application/json")
        return _answer(start_response, 404, b"not found: use /metrics, /healthz or /readyz\n")


_REASONS: Final = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


def _answer(
    start_response: _StartResponse, status: int, body: bytes, content_type: str = "text/plain"
) -> list[bytes]:
    start_response(
        f"{status} {_REASONS[status]}",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


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
