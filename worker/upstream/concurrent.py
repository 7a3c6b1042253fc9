"""Many upstream requests in flight from one thread: the bulk lane's chunks.

A chunk of a hundred commands made one request after the other waits a hundred
round trips; made from a hundred threads it pays for those threads and the GIL.
:class:`ConcurrentSender` runs a few ``httpx.AsyncClient`` of a few connections each
on one event loop, in a thread of its own, and takes requests from any thread
(:meth:`ConcurrentSender.submit` returns a future). Several small clients, not one
big one: one async client whose pool holds fifty connections or more costs several
times the CPU per request of sixteen clients of five (measured on the target
machine; see ``bench/README.md``).

Only the exchange happens here: building the request (validated inputs, headers,
the token) and reading the answer (401 refresh, error mapping) stay with
:class:`worker.upstream.client.MasStackClient`, which uses this sender for its
``start_*`` writes. Every request is bounded by its deadline (a ``time.monotonic()``
instant; the loop's clock is the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

import httpx

from worker.upstream.errors import UpstreamTimeout

logger = logging.getLogger(__name__)

#: Clients and connections per client of a sender (see the module doc).
DEFAULT_CLIENTS: Final = 16
DEFAULT_CONNECTIONS: Final = 5
_CLOSE_TIMEOUT_S: Final = 5.0

TransportFactory = Callable[[int], httpx.AsyncBaseTransport]


@dataclass(frozen=True)
class Exchange:
    """One request to make: its path relative to the base URL, headers and body."""

    method: str
    path: str
    headers: dict[str, str]
    content: bytes | None
    #: A write: a success's body is drained and ignored (the status is the outcome).
    write: bool
    #: Error bodies (and a write's) are read up to this size.
    body_limit: int


@dataclass(frozen=True)
class Answer:
    """What the upstream answered: status, headers and (possibly capped) body."""

    status: int
    headers: httpx.Headers
    body: bytes


def default_transport(connections: int) -> httpx.AsyncBaseTransport:
    """httpx's pooled async transport: ``connections`` kept alive, nothing from the
    environment (no proxies, the default TLS context)."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)


class ConcurrentSender:
    """Requests from any thread, made concurrently on one event loop thread.

    The loop starts on first use in each process (a forked child starts its own), and
    at most ``clients * connections`` requests are in flight at once; the others wait
    their turn inside their deadline.
    """

    def __init__(
        self,
        *,
        base_url: httpx.URL,
        timeout: httpx.Timeout,
        headers: dict[str, str],
        clients: int = DEFAULT_CLIENTS,
        connections: int = DEFAULT_CONNECTIONS,
        transport: TransportFactory = default_transport,
    ) -> None:
        if clients < 1 or connections < 1:
            raise ValueError("a sender needs at least one client of one connection")
        self._base_url = base_url
        self._timeout = timeout
        self._headers = headers
        self._sizes = (clients, connections)
        self._transport = transport
        self._lock = threading.Lock()
        self._loop: _Loop | None = None

    def __repr__(self) -> str:
        clients, connections = self._sizes
        return f"ConcurrentSender(clients={clients}, connections={connections})"

    def submit(
        self, exchange: Exchange, *, timeout: httpx.Timeout, deadline: float | None
    ) -> Future[Answer]:
        """Start ``exchange``; the future holds its :class:`Answer`, or raises the
        ``httpx.HTTPError`` it met, or :class:`UpstreamTimeout` when ``deadline`` passed
        before it could be sent."""
        return self._running().submit(exchange, timeout, deadline)

    def close(self) -> None:
        """Close the clients and stop the loop (waiting up to a few seconds)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None and loop.pid == os.getpid():
            loop.close()

    def _running(self) -> _Loop:
        with self._lock:
            if self._loop is None or self._loop.pid != os.getpid():
                clients, connections = self._sizes
                made = [self._client(connections) for _ in range(clients)]
                self._loop = _Loop(made, connections)
            return self._loop

    def _client(self, connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self._base_url,
            timeout=self._timeout,
            headers=self._headers,
            transport=self._transport(connections),
            follow_redirects=False,  # a redirect could carry the token to another host
            trust_env=False,
        )


class _Loop:
    """The event loop thread of one process, with its clients."""

    def __init__(self, clients: list[httpx.AsyncClient], connections: int) -> None:
        self.pid = os.getpid()
        self._clients = clients
        self._turns = itertools.cycle(range(len(clients)))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="upstream-sender", daemon=True
        )
        self._thread.start()
        self._slots = [asyncio.Semaphore(connections) for _ in clients]

    def submit(
        self, exchange: Exchange, timeout: httpx.Timeout, deadline: float | None
    ) -> Future[Answer]:
        turn = next(self._turns)  # itertools.cycle is thread-safe enough: any turn will do
        coroutine = self._exchange(turn, exchange, timeout, deadline)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self) -> None:
        try:
            self._call(_close_all(self._clients), timeout=_CLOSE_TIMEOUT_S)
        except Exception:  # closing is best effort: the process is on its way out
            logger.warning("the upstream sender did not close cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CLOSE_TIMEOUT_S)

    def _call(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _exchange(
        self, turn: int, exchange: Exchange, timeout: httpx.Timeout, deadline: float | None
    ) -> Answer:
        slot = self._slots[turn]
        try:
            async with asyncio.timeout_at(deadline):
                await slot.acquire()
        except TimeoutError:
            raise UpstreamTimeout(
                f"{exchange.method} {exchange.path}: the attempt's deadline passed before sending"
            ) from None
        try:
            async with asyncio.timeout_at(deadline):
                return await _send(self._clients[turn], exchange, timeout)
        except TimeoutError:
            # httpx's own timeouts were capped by the deadline, so this one is the
            # whole call's: the request may have reached the upstream.
            raise httpx.ReadTimeout("the attempt's deadline passed") from None
        finally:
            slot.release()


async def _close_all(clients: list[httpx.AsyncClient]) -> None:
    for client in clients:
        await client.aclose()


async def _send(client: httpx.AsyncClient, exchange: Exchange, timeout: httpx.Timeout) -> Answer:
    request = client.build_request(
        exchange.method,
        exchange.path,
        content=exchange.content,
        headers=exchange.headers,
        timeout=timeout,
    )
    response = await client.send(request, stream=True)
    try:
        body = await _read_body(response, exchange)
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await response.aclose()
    return Answer(response.status_code, response.headers, body)


async def _read_body(response: httpx.Response, exchange: Exchange) -> bytes:
    if not response.is_success:
        return await _read_capped(response, exchange.body_limit)
    if not exchange.write:
        return await response.aread()
    # Trouble while draining an applied write's ignored body must not turn it into an
    # error; draining lets the connection be reused.
    with contextlib.suppress(httpx.HTTPError):
        await _read_capped(response, exchange.body_limit)
    return b""


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]
