"""An absolute deadline over everything one upstream call does on the network.

httpx's timeouts are per operation: a server that trickles its answer a byte at a
time, or a name lookup that hangs, has no total bound. The worker's lease on a
target must outlive its request, so each call runs under a deadline (a
``time.monotonic()`` instant) that bounds every socket operation it makes: name
lookup, connect, TLS, each write and each read, token fetches included. The deadline
travels in a context variable set by :func:`bounded_by`; :class:`DeadlineBackend`
is the network backend of the client's connection pool and caps every operation's
timeout by the time left. Past the deadline an operation fails at once with the
httpcore timeout of its kind, which the client maps like any other timeout.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar
from typing import Final

import httpcore
import httpx

_deadline: ContextVar[float | None] = ContextVar("subswitch_upstream_deadline", default=None)
#: Threads that run name lookups (``getaddrinfo`` has no timeout of its own).
_LOOKUP_THREADS: Final = 4

Resolver = Callable[[str, int], list[str]]
SocketOption = typing.Any  # httpcore's own alias is private


@contextlib.contextmanager
def bounded_by(deadline: float | None) -> Iterator[None]:
    """Run the block's network operations under ``deadline`` (``None``: no bound)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def current_deadline() -> float | None:
    """The deadline the current call runs under, if any."""
    return _deadline.get()


def time_left(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` capped by the current deadline; raises ``expired`` once it passed."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


def capped_timeout(timeout: httpx.Timeout, deadline: float | None) -> httpx.Timeout:
    """``timeout`` with no part longer than the time left before ``deadline``."""
    if deadline is None:
        return timeout
    left = max(0.0, deadline - time.monotonic())

    def cap(value: float | None) -> float:
        return left if value is None else min(value, left)

    return httpx.Timeout(
        connect=cap(timeout.connect),
        read=cap(timeout.read),
        write=cap(timeout.write),
        pool=cap(timeout.pool),
    )


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync network backend, with every operation bounded by the deadline.

    ``resolve`` maps a host name to addresses (``getaddrinfo`` by default); it runs in
    a small thread pool so that a hanging lookup is abandoned at the deadline.
    """

    def __init__(self, *, resolve: Resolver = _system_resolver) -> None:
        self._backend = httpcore.SyncBackend()
        self._resolve = resolve
        self._lookups = ThreadPoolExecutor(_LOOKUP_THREADS, thread_name_prefix="dns")

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        options = list(socket_options or ())
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in self._addresses(host, port, timeout):
            left = time_left(timeout, httpcore.ConnectTimeout)
            try:
                stream = self._backend.connect_tcp(address, port, left, local_address, options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream)
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        left = time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)

    def _addresses(self, host: str, port: int, timeout: float | None) -> list[str]:
        if _is_address(host):
            return [host]
        lookup = self._lookups.submit(self._resolve, host, port)
        try:
            return lookup.result(timeout=time_left(timeout, httpcore.ConnectTimeout))
        except FutureTimeout:
            raise httpcore.ConnectTimeout(f"looking up {host} took too long") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None


def _is_address(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


def deadline_transport(
    *, limits: httpx.Limits, resolve: Resolver = _system_resolver
) -> httpx.HTTPTransport:
    """httpx's pooled transport (no proxies, no environment), on :class:`DeadlineBackend`.

    httpx takes no network backend, so its connection pool is replaced by one that
    has ours, built with the arguments httpx itself uses.
    """
    transport = httpx.HTTPTransport(limits=limits, trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=DeadlineBackend(resolve=resolve),
    )
    return transport
