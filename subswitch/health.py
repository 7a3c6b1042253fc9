"""``/metrics``, ``/healthz`` and ``/readyz`` on ``SUBSWITCH_METRICS_PORT``, for every
process that serves them (a worker, the archive).

``/healthz`` answers 200 while the process runs (liveness). ``/readyz`` answers 200
when each of the process's named checks passes, else 503 with the problems as JSON.
Checks are cached for a couple of seconds, so a probe storm costs the broker and the
database nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer

from subswitch.broker import BROKER_FAILURES, broker_connection
from subswitch.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: A readiness answer is reused this long (s).
READY_CACHE_S: Final = 2.0
_PROBE_TIMEOUT_S: Final = 2.0

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


def start_health_server(
    *,
    host: str,
    port: int,
    registry: Callable[[], CollectorRegistry],
    ready: Callable[[], Readiness],
    alive: Callable[[], bool] = lambda: True,
) -> HealthServer:
    """A started :class:`HealthServer`.

    Raises:
        ConfigurationError: the port cannot be listened on (taken, not allowed).
    """
    try:
        server = HealthServer(host=host, port=port, registry=registry, ready=ready, alive=alive)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            variable="SUBSWITCH_METRICS_PORT",
        ) from None
    return server.start()


def broker_problem(broker_url: str) -> str | None:
    """``None`` when the broker accepts a connection, else why not (no URL in it)."""
    try:
        with broker_connection(broker_url, connect_timeout=_PROBE_TIMEOUT_S) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0)
            connection.default_channel  # noqa: B018 (Redis: a PING; AMQP: a channel)
    except BROKER_FAILURES as exc:
        return f"does not answer ({type(exc).__name__})"
    return None
