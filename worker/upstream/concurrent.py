"""Many upstream requests in flight from one thread: the bulk lane's chunks.

A chunk of a hundred commands made one request after the other waits a hundred
round trips; made from a hundred threads it pays for those threads and the GIL.
:class:`ConcurrentSender` keeps one event loop in a thread of its own, with one
pooled aiohttp session, and takes requests from any thread
(:meth:`ConcurrentSender.submit` returns a future).

Why aiohttp here and httpx everywhere else: on the 2-core target machine, a request
made this way cost 0.32 ms of CPU through aiohttp and 1.5-2.1 ms through
``httpx.AsyncClient`` (one client of 80 connections, or sixteen of five), which
alone would have spent the bulk lane's whole budget (``bench/README.md``).

Only the exchange happens here: building the request (validated inputs, headers,
the token) and reading the answer (401 refresh, error statuses) stay with
:class:`worker.upstream.client.MasStackClient`, which uses this sender for its
``start_*`` writes. aiohttp's errors are mapped here, once, into the same
:mod:`worker.upstream.errors` the synchronous client raises, with the same
``maybe_applied`` rule: a write may have been applied unless it surely never left.
Every request is bounded by its deadline (a ``time.monotonic()`` instant; the
loop's clock is the same).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx

from worker.upstream.errors import (
    UpstreamConnectionError,
    UpstreamError,
    UpstreamPermanentError,
    UpstreamTimeout,
    one_line,
)

if TYPE_CHECKING:
    import aiohttp

# aiohttp itself is imported where it is first needed, by the functions below: it
# adds 0.3 s to the start of every worker process, and only the bulk lane uses it.

logger = logging.getLogger(__name__)

#: Requests in flight at once per process (and connections kept to the upstream).
DEFAULT_IN_FLIGHT: Final = 80
_CLOSE_TIMEOUT_S: Final = 5.0


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

    @property
    def operation(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Answer:
    """What the upstream answered: status, headers and (possibly capped) body."""

    status: int
    headers: httpx.Headers
    body: bytes


#: Makes the connector of a process's session (tests give one of their own).
ConnectorFactory = Callable[[int], "aiohttp.BaseConnector"]


def default_connector(in_flight: int) -> aiohttp.BaseConnector:
    """A pooled connector of ``in_flight`` connections, trusting what the synchronous
    client trusts (httpx's TLS context, nothing from the environment)."""
    import aiohttp  # noqa: PLC0415

    context: ssl.SSLContext = httpx.create_ssl_context(trust_env=False)
    return aiohttp.TCPConnector(limit=in_flight, ssl=context, ttl_dns_cache=60)


class ConcurrentSender:
    """Requests from any thread, made concurrently on one event loop thread.

    The loop starts on first use in each process (a forked child starts its own), and
    at most ``in_flight`` requests are on their way at once; the others wait their
    turn inside their deadline.
    """

    def __init__(
        self,
        *,
        base_url: httpx.URL,
        timeout: httpx.Timeout,
        headers: dict[str, str],
        in_flight: int = DEFAULT_IN_FLIGHT,
        connector: ConnectorFactory = default_connector,
    ) -> None:
        if in_flight < 1:
            raise ValueError("a sender needs room for at least one request in flight")
        self._base = str(base_url).rstrip("/") + "/"
        self._timeout = timeout
        self._headers = headers
        self._in_flight = in_flight
        self._connector = connector
        self._lock = threading.Lock()
        self._loop: _Loop | None = None

    def __repr__(self) -> str:
        return f"ConcurrentSender(in_flight={self._in_flight})"

    def submit(
        self, exchange: Exchange, *, timeout: httpx.Timeout, deadline: float | None
    ) -> Future[Answer]:
        """Start ``exchange``; the future holds its :class:`Answer`, or raises the
        :class:`UpstreamError` it met (:class:`UpstreamTimeout` when ``deadline``
        passed)."""
        return self._running().submit(exchange, _client_timeout(timeout), deadline)

    def close(self) -> None:
        """Close the session and stop the loop (waiting up to a few seconds)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None and loop.pid == os.getpid():
            loop.close()

    def _running(self) -> _Loop:
        with self._lock:
            if self._loop is None or self._loop.pid != os.getpid():
                self._loop = _Loop(self._session, self._base, self._in_flight)
            return self._loop

    async def _session(self) -> aiohttp.ClientSession:
        import aiohttp  # noqa: PLC0415

        return aiohttp.ClientSession(
            connector=self._connector(self._in_flight),
            headers=self._headers,
            timeout=_client_timeout(self._timeout),
            trust_env=False,
        )


class _Loop:
    """The event loop thread of one process, with its session."""

    def __init__(
        self,
        session: Callable[[], Coroutine[Any, Any, aiohttp.ClientSession]],
        base: str,
        in_flight: int,
    ) -> None:
        self.pid = os.getpid()
        self._base = base
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="upstream-sender", daemon=True
        )
        self._thread.start()
        # aiohttp wants its session made inside the loop that runs it.
        self._session: aiohttp.ClientSession = self._call(session())
        self._slots = asyncio.Semaphore(in_flight)

    def submit(
        self, exchange: Exchange, timeout: aiohttp.ClientTimeout, deadline: float | None
    ) -> Future[Answer]:
        coroutine = self._exchange(exchange, timeout, deadline)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self) -> None:
        try:
            self._call(self._session.close(), timeout=_CLOSE_TIMEOUT_S)
        except Exception:  # closing is best effort: the process is on its way out
            logger.warning("the upstream sender did not close cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():  # a stopped loop still holds its selector's files
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _exchange(
        self, exchange: Exchange, timeout: aiohttp.ClientTimeout, deadline: float | None
    ) -> Answer:
        import aiohttp  # noqa: PLC0415

        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise _not_sent(exchange) from None
        try:
            # A free slot is taken without yielding, so an expired deadline would
            # only strike inside the request, which would then count as maybe sent.
            if deadline is not None and self._loop.time() >= deadline:
                raise _not_sent(exchange)
            async with asyncio.timeout_at(deadline):
                return await self._send(exchange, timeout)
        except aiohttp.ClientError as exc:
            # First: aiohttp's own timeouts (connect, read) are TimeoutErrors too.
            raise transport_error(exc, exchange) from exc
        except TimeoutError:
            # The whole call's deadline: the request may have reached the upstream.
            raise UpstreamTimeout(
                f"{exchange.operation} failed: the attempt's deadline passed",
                maybe_applied=exchange.write,
            ) from None
        finally:
            self._slots.release()

    async def _send(self, exchange: Exchange, timeout: aiohttp.ClientTimeout) -> Answer:
        async with self._session.request(
            exchange.method,
            self._base + exchange.path,
            data=exchange.content,
            headers=exchange.headers,
            timeout=timeout,
            allow_redirects=False,  # a redirect could carry the token to another host
        ) as response:
            body = await _read_body(response, exchange)
            headers = httpx.Headers(list(response.headers.items()))
            return Answer(response.status, headers, body)


def _not_sent(exchange: Exchange) -> UpstreamTimeout:
    return UpstreamTimeout(f"{exchange.operation}: the attempt's deadline passed before sending")


def transport_error(exc: aiohttp.ClientError, exchange: Exchange) -> UpstreamError:
    """The :class:`UpstreamError` that stands for aiohttp's ``exc`` (as
    :func:`worker.upstream.errors.transport_error` does for httpx's)."""
    import aiohttp  # noqa: PLC0415

    kind, operation, write = type(exc).__name__, exchange.operation, exchange.write
    detail = one_line(str(exc), 200) or "no detail"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(f"{operation} failed: {kind}: {detail}", maybe_applied=False)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # a read timed out: it was sent
        return UpstreamTimeout(f"{operation} failed: {kind}: {detail}", maybe_applied=write)
    if isinstance(exc, aiohttp.ClientConnectorError):  # never connected: never sent
        return UpstreamConnectionError(f"{operation} failed: {kind}: {detail}")
    if isinstance(exc, aiohttp.InvalidURL):
        return UpstreamPermanentError(f"{operation}: the request could not be sent ({kind})")
    # Disconnected mid-answer, a broken answer, anything else: assume the worst for
    # writes and let the worker retry (the upstream's idempotency key covers it).
    return UpstreamConnectionError(f"{operation} failed: {kind}: {detail}", maybe_applied=write)


async def _read_body(response: aiohttp.ClientResponse, exchange: Exchange) -> bytes:
    import aiohttp  # noqa: PLC0415

    if not 200 <= response.status < 300:
        return await _read_capped(response, exchange.body_limit)
    if not exchange.write:
        return await response.read()
    # Trouble while draining an applied write's ignored body must not turn it into an
    # error; draining lets the connection be reused.
    try:
        await _read_capped(response, exchange.body_limit)
    except aiohttp.ClientError as exc:
        logger.debug(
            "%s: ignoring %s after %d", exchange.operation, type(exc).__name__, response.status
        )
    return b""


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _client_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """httpx's per-operation timeouts as aiohttp's (no total: the deadline is that)."""
    import aiohttp  # noqa: PLC0415

    pool, connect = timeout.pool, timeout.connect
    return aiohttp.ClientTimeout(
        total=None,
        # aiohttp's connect includes the wait for a free connection: httpx's pool timeout.
        connect=None if pool is None or connect is None else pool + connect,
        sock_connect=connect,
        sock_read=timeout.read,
    )
