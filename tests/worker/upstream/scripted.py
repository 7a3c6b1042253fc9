"""A loopback HTTP/1.1 server whose answers a test scripts, for the concurrent client.

Unlike a mock transport it sees what really went over the wire (whichever HTTP
library sent it), and unlike the simulator it can hold requests until the test lets
them go, hang up without answering, or answer anything at all.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

#: Longest a held request waits for :attr:`ScriptedUpstream.release` (a safety net only).
HOLD_LIMIT_S: Final = 10.0
#: Longest a test waits for requests to arrive (a bound on a condition, not a sleep).
ARRIVAL_LIMIT_S: Final = 5.0


@dataclass(frozen=True)
class Seen:
    """One request as the server received it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """What the server answers."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


#: What the server does with a request: a Reply, or None to hang up without answering.
Script = Callable[[Seen], Reply | None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # held handlers must not keep the test process alive
    upstream: ScriptedUpstream

    def handle_error(self, request: object, client_address: object) -> None:
        # A held request's client has usually gone by the time it is answered.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.upstream.arrived(Seen(self.command, self.path, headers, body))
        if reply is None:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


class ScriptedUpstream:
    """The server, on a free loopback port; :attr:`script` decides every answer."""

    def __init__(self) -> None:
        self.script: Script = lambda _: Reply(201)
        self.release = threading.Event()
        self._seen: list[Seen] = []
        self._changed = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        # A short poll: closing waits for the serving loop to notice.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.02)
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v2"

    @property
    def seen(self) -> list[Seen]:
        with self._changed:
            return list(self._seen)

    def arrived(self, request: Seen) -> Reply | None:
        with self._changed:
            self._seen.append(request)
            self._changed.notify_all()
        return self.script(request)

    def wait_for_requests(self, count: int) -> bool:
        """Whether ``count`` requests have arrived (waiting up to ARRIVAL_LIMIT_S)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._seen) >= count, ARRIVAL_LIMIT_S)

    def held(self, then: Reply | None = None) -> Script:
        """A script that holds each request until :attr:`release` is set, then
        answers ``then`` (201 unless given)."""

        def hold(_: Seen) -> Reply | None:
            if not self.release.wait(HOLD_LIMIT_S):
                return Reply(500, body=b"held past the test's end")
            return then or Reply(201)

        return hold

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(ARRIVAL_LIMIT_S)


def all_at_once(count: int) -> Script:
    """A script that answers 201 only once ``count`` requests are open together.

    Requests made one after the other never get there: the first waits in vain, and
    they are answered 500 (after ARRIVAL_LIMIT_S) instead.
    """
    barrier = threading.Barrier(count, timeout=ARRIVAL_LIMIT_S)

    def answer(_: Seen) -> Reply:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return Reply(500, body=b"not all at once")
        return Reply(201)

    return answer


def closed_port_url() -> str:
    """A loopback base URL on which nothing listens (the connection is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v2"


@contextmanager
def unaccepting_url() -> Iterator[str]:
    """A loopback base URL whose listener never accepts: with its backlog filled by
    connections of our own, the next one cannot be established (a connect timeout)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield f"http://127.0.0.1:{port}/v2"
        finally:
            for filler in fillers:
                filler.close()
