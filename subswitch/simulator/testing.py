"""Run a simulator for tests and benchmarks: in a background thread or as a subprocess.

    with running_simulator(SimulatorConfig(faults=Faults(p_500=1.0))) as sim:
        httpx.patch(f"{sim.base_url}/orgs/telco/subscriptions/7/blocks/1", ...)
        assert sim.admin.stats()["writes_total"] == 1

Both wait for the server with a deadline and stop it on exit.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn
from starlette.applications import Starlette

from subswitch.simulator.app import create_app
from subswitch.simulator.config import SimulatorConfig
from subswitch.simulator.server import ANNOUNCEMENT, bind_socket, socket_url, uvicorn_config

Json = dict[str, Any]


class AdminClient:
    """A small synchronous client of the admin endpoints; raises on any non-2xx answer."""

    def __init__(self, root_url: str, *, timeout: float = 10.0) -> None:
        # trust_env=False: a developer's HTTP(S)_PROXY must not capture loopback calls
        self._http = httpx.Client(base_url=root_url, timeout=timeout, trust_env=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def health(self) -> Json:
        """``GET /healthz``."""
        result: Json = self._call("GET", "/healthz")
        return result

    def state(self) -> Json:
        """``GET /admin/state``: ``{"targets": [...]}``."""
        result: Json = self._call("GET", "/admin/state")
        return result

    def target(self, org_id: str, subscription_id: int, kind: str, item_id: int) -> Json:
        """``GET /admin/state/{org_id}/{subscription_id}/{kind}/{id}``."""
        result: Json = self._call(
            "GET", f"/admin/state/{org_id}/{subscription_id}/{kind}/{item_id}"
        )
        return result

    def change_behind(
        self,
        org_id: str,
        subscription_id: int,
        kind: str,
        item_id: int,
        *,
        active: bool,
        reason: str | None = None,
    ) -> Json:
        """``POST /admin/targets/...``: change a target behind subswitch's back."""
        result: Json = self._call(
            "POST",
            f"/admin/targets/{org_id}/{subscription_id}/{kind}/{item_id}",
            json={"active": active, "reason": reason},
        )
        return result

    def writes(self, since: int = 0, limit: int | None = None) -> Json:
        """``GET /admin/writes``: ``{"writes": [...], "next": SEQ}``; every page if no limit."""
        if limit is not None:
            page: Json = self._call("GET", "/admin/writes", params={"since": since, "limit": limit})
            return page
        collected: list[Json] = []
        while True:
            page = self._call("GET", "/admin/writes", params={"since": since})
            collected.extend(page["writes"])
            if not page["writes"]:
                return {"writes": collected, "next": page["next"]}
            since = page["next"]

    def stats(self) -> Json:
        """``GET /admin/stats``."""
        result: Json = self._call("GET", "/admin/stats")
        return result

    def faults(self) -> Json:
        """``GET /admin/faults``."""
        result: Json = self._call("GET", "/admin/faults")
        return result

    def set_faults(self, **changes: Any) -> Json:
        """``PUT /admin/faults`` with the given fields; returns the faults now in force."""
        result: Json = self._call("PUT", "/admin/faults", json=changes)
        return result

    def reset(self, *, faults: bool = False) -> None:
        """``POST /admin/reset``; with ``faults`` the faults are cleared too."""
        self._call("POST", "/admin/reset", params={"faults": "1"} if faults else None)

    def revoke_tokens(self) -> None:
        """``POST /admin/tokens/revoke``: every issued access token stops working."""
        self._call("POST", "/admin/tokens/revoke")

    def wait_for_stats(self, predicate: Callable[[Json], bool], timeout: float = 10.0) -> Json:
        """Poll ``/admin/stats`` until ``predicate`` holds; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() >= deadline:
                raise TimeoutError(f"stats never matched within {timeout}s; last: {stats}")
            time.sleep(0.01)  # poll interval, bounded by the deadline above


@dataclass(frozen=True)
class SimulatorHandle:
    """A running simulator: its URLs, an admin client, and the app (in-process) or pid.

    The app's state belongs to the server's event loop: go through ``admin`` to read it.
    """

    root_url: str
    admin: AdminClient
    app: Starlette | None = None
    pid: int | None = None

    @property
    def base_url(self) -> str:
        """The API base, ``http://127.0.0.1:PORT/v2``."""
        return self.root_url + "/v2"

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint."""
        return self.root_url + "/oauth/token"


@contextmanager
def running_simulator(
    config: SimulatorConfig | None = None,
    *,
    clock: Callable[[], float] | None = None,
    startup_timeout: float = 10.0,
    log_level: str = "warning",
) -> Iterator[SimulatorHandle]:
    """Serve a simulator on a free loopback port in a background thread.

    The thread is named ``simulator <root URL>``; it has ended when the block exits.
    """
    app = create_app(config or SimulatorConfig(), clock=clock)
    sock = bind_socket("127.0.0.1", 0)
    url = socket_url(sock)
    server = uvicorn.Server(uvicorn_config(app, log_level=log_level, graceful_shutdown_s=1))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"simulator {url}", daemon=True
    )
    thread.start()
    try:
        _await_startup(server, thread, startup_timeout)
        with AdminClient(url) as admin:
            yield SimulatorHandle(url, admin, app)
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()


def _await_startup(server: uvicorn.Server, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the simulator thread exited before serving")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the simulator did not start within {timeout}s")
        thread.join(timeout=0.005)  # returns early if the thread dies


class _OutputPump:
    """Drains a child's output so it never blocks on a full pipe.

    Lines go to a queue until the announcement is seen; the last lines are kept for
    error messages either way.
    """

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=200)
        self._announced = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.tail.append(line)
            if not self._announced.is_set():
                self.lines.put(line)
        self.lines.put(None)

    def await_url(self, timeout: float) -> str:
        """The URL of the announcement line; RuntimeError if the child ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no announcement within {timeout}s") from None
            if line is None:
                raise RuntimeError("simulator exited:\n" + "".join(self.tail))
            if line.startswith(ANNOUNCEMENT):
                self._announced.set()
                return line[len(ANNOUNCEMENT) :].strip()


@contextmanager
def spawned_simulator(
    *args: str,
    command: Sequence[str] | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[SimulatorHandle]:
    """Run the simulator as a subprocess on a free loopback port (``args``: CLI options).

    ``command`` defaults to ``python -m subswitch.simulator``; ``("subswitch", "simulator")`` works
    the same way.
    """
    argv = [*(command or (sys.executable, "-m", "subswitch.simulator")), "--host", "127.0.0.1"]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [*argv, "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = _OutputPump(process.stdout).await_url(startup_timeout)
        with AdminClient(url) as admin:
            yield SimulatorHandle(url, admin, pid=process.pid)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
