"""``MasStackClient``: the synchronous client of the MasStack customers API v2.

One instance per worker process, shared by all its threads (httpx's pool is
thread-safe). It validates every input before building a request, sends one request
per call (plus one repeat after a 401 with a refreshed token) and maps every failure
to :mod:`worker.upstream.errors`. Retrying is the caller's job.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self, TypeVar

import httpx
import pydantic

from subswitch.errors import ConfigurationError
from worker.upstream import _validation as check
from worker.upstream.auth import TokenProvider
from worker.upstream.concurrent import (
    Answer,
    ConcurrentSender,
    ConnectorFactory,
    Exchange,
    default_connector,
)
from worker.upstream.deadline import bounded_by, capped_timeout, deadline_transport
from worker.upstream.errors import (
    MalformedResponseError,
    UpstreamTimeout,
    error_for_status,
    map_transport_errors,
    one_line,
    safe_url,
)
from worker.upstream.models import (
    BlockStatus,
    ServiceQuery,
    ServiceStatus,
    SubscriptionBlocks,
    SubscriptionServices,
)

logger = logging.getLogger(__name__)

KEEPALIVE_EXPIRY_S: Final = 30.0
#: Error bodies are read up to this size: enough for any ErrorMessage, not for a flood.
ERROR_BODY_LIMIT: Final = 64 * 1024
USER_AGENT: Final = "subswitch-worker"
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")

_Model = TypeVar("_Model", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class _Call:
    """One logical request; ``path`` is relative to the base URL and built from checked values."""

    method: str
    path: str
    request_id: str
    params: dict[str, str] | None = None
    body: bytes | None = None
    idempotency_key: str | None = None

    @property
    def write(self) -> bool:
        return self.method != "GET"

    @property
    def operation(self) -> str:
        return f"{self.method} {self.path}"


class PendingWrite:
    """A write on its way (:meth:`MasStackClient.start_change_service_status` and
    ``start_change_block_status``); :meth:`result` waits for its answer."""

    def __init__(
        self,
        client: MasStackClient,
        call: _Call,
        token: str | None,
        answer: Future[Answer],
        deadline: float | None,
    ) -> None:
        self._client = client
        self._call = call
        self._token = token
        self._answer = answer
        self._deadline = deadline

    def result(self) -> int:
        """The 2xx status (201), as the synchronous write returns it.

        Raises:
            UpstreamError: as the synchronous write does, for the same failures.
        """
        answer = self._answer.result()  # its errors were mapped where they arose
        with bounded_by(self._deadline):
            return self._client._conclude(self._call, self._token, answer, self._deadline).status


class AnsweredWrite:
    """A write made synchronously already (a client without a sender): its status."""

    def __init__(self, status: int) -> None:
        self._status = status

    def result(self) -> int:
        """The 2xx status the write got."""
        return self._status


class MasStackClient:
    """Client of ``orgs/{org}/subscriptions/{id}/services`` and ``.../blocks``.

    ``base_url`` includes ``/v2`` (a trailing ``/`` is optional). ``auth`` supplies
    bearer tokens; ``auth_roles`` is sent as ``x-auth-roles`` unless ``None``.
    ``timeout`` and ``auth_roles`` come from the settings (see :func:`from_settings`).
    ``transport`` replaces the pooled HTTP transport (tests); ``clock`` is the POSIX
    time used for ``Retry-After`` dates. A write given a ``deadline`` (a
    ``time.monotonic()`` instant) is over by then, whatever the server does: every
    network operation of the call, token fetches included, is bounded by it
    (:mod:`worker.upstream.deadline`). Proxy and TLS settings are not taken from
    the environment. With ``concurrent`` (or a ``connector``, tests), the
    ``start_*`` writes go out at once through a
    :class:`~worker.upstream.concurrent.ConcurrentSender` and are answered later;
    without, they are made synchronously.
    """

    def __init__(
        self,
        *,
        base_url: str,
        auth: TokenProvider,
        timeout: httpx.Timeout,
        auth_roles: str | None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 100,
        clock: Callable[[], float] = time.time,
        concurrent: bool = False,
        connector: ConnectorFactory | None = None,
    ) -> None:
        base = _checked_base_url(base_url)
        if auth_roles is not None and not _VISIBLE_ASCII.fullmatch(auth_roles):
            raise ConfigurationError(
                f"auth_roles {one_line(repr(auth_roles), 80)} is not a header value"
            )
        self._auth = auth
        self._auth_roles = auth_roles
        self._clock = clock
        self._closers: list[Callable[[], None]] = []
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=base,
            timeout=self._timeout,
            transport=transport or pooled_transport(max_connections),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,  # a redirect could carry the token to another host
            trust_env=False,
        )
        self._sender = (
            ConcurrentSender(
                base_url=base,
                timeout=timeout,
                headers={"User-Agent": USER_AGENT},
                connector=connector or default_connector,
            )
            if concurrent or connector is not None
            else None
        )

    def __repr__(self) -> str:
        return f"MasStackClient(base_url={safe_url(self._http.base_url)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool and anything the client was given to own."""
        self._http.close()
        if self._sender is not None:
            self._sender.close()
        for closer in self._closers:
            closer()
        self._closers.clear()

    def list_services(
        self, org_id: str, subscription_id: int, *, query: ServiceQuery | None = None
    ) -> SubscriptionServices:
        """The services of a subscription (``query`` filters them upstream)."""
        path = f"{_subscription_path(org_id, subscription_id)}/services"
        params = {"query": query.to_param()} if query is not None else None
        return self._read(
            _Call("GET", path, _new_request_id(), params=params), SubscriptionServices
        )

    def list_blocks(self, org_id: str, subscription_id: int) -> SubscriptionBlocks:
        """The blocks (barrings) of a subscription."""
        path = f"{_subscription_path(org_id, subscription_id)}/blocks"
        return self._read(_Call("GET", path, _new_request_id()), SubscriptionBlocks)

    def change_service_status(
        self,
        org_id: str,
        subscription_id: int,
        service_id: int,
        *,
        active: bool,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> int:
        """Switch a service on (``active=True``) or off; returns the 2xx status (201)."""
        path, body = _service_write(org_id, subscription_id, service_id, active)
        return self._write(path, body, idempotency_key, request_id, deadline)

    def change_block_status(
        self,
        org_id: str,
        subscription_id: int,
        block_id: int,
        *,
        active: bool,
        reason: str | None = None,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> int:
        """Put a block on (``active=True``) or lift it; returns the 2xx status (201)."""
        path, body = _block_write(org_id, subscription_id, block_id, active, reason)
        return self._write(path, body, idempotency_key, request_id, deadline)

    def start_change_service_status(
        self,
        org_id: str,
        subscription_id: int,
        service_id: int,
        *,
        active: bool,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> PendingWrite | AnsweredWrite:
        """:meth:`change_service_status`, answered later: many can be in flight at once."""
        path, body = _service_write(org_id, subscription_id, service_id, active)
        return self._start_write(path, body, idempotency_key, request_id, deadline)

    def start_change_block_status(
        self,
        org_id: str,
        subscription_id: int,
        block_id: int,
        *,
        active: bool,
        reason: str | None = None,
        idempotency_key: str,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> PendingWrite | AnsweredWrite:
        """:meth:`change_block_status`, answered later: many can be in flight at once."""
        path, body = _block_write(org_id, subscription_id, block_id, active, reason)
        return self._start_write(path, body, idempotency_key, request_id, deadline)

    def _close_also(self, closer: Callable[[], None]) -> None:
        """Call ``closer`` on :meth:`close` (the factory hands over its token client)."""
        self._closers.append(closer)

    def _read(self, call: _Call, model: type[_Model]) -> _Model:
        answer = self._execute(call)
        try:
            return model.model_validate_json(answer.body)
        except pydantic.ValidationError as exc:
            raise MalformedResponseError(
                f"upstream answered {answer.status} to {call.operation} "
                f"{_describe_bad_body(exc, model.__name__)}",
                status=answer.status,
            ) from exc

    def _write(
        self,
        path: str,
        body: pydantic.BaseModel,
        idempotency_key: str,
        request_id: str | None,
        deadline: float | None,
    ) -> int:
        call = _write_call(path, body, idempotency_key, request_id)
        with bounded_by(deadline):
            return self._execute(call, deadline).status

    def _start_write(
        self,
        path: str,
        body: pydantic.BaseModel,
        idempotency_key: str,
        request_id: str | None,
        deadline: float | None,
    ) -> PendingWrite | AnsweredWrite:
        call = _write_call(path, body, idempotency_key, request_id)
        if self._sender is None:
            with bounded_by(deadline):
                return AnsweredWrite(self._execute(call, deadline).status)
        with bounded_by(deadline):
            token = self._auth.token()
        exchange = Exchange(
            call.method,
            call.path,
            self._headers(call, token),
            call.body,
            write=True,
            body_limit=ERROR_BODY_LIMIT,
        )
        timeout = capped_timeout(self._timeout, deadline)
        answer = self._sender.submit(exchange, timeout=timeout, deadline=deadline)
        return PendingWrite(self, call, token, answer, deadline)

    def _execute(self, call: _Call, deadline: float | None = None) -> Answer:
        token = self._auth.token()
        return self._conclude(call, token, self._exchange(call, token, deadline), deadline)

    def _conclude(
        self, call: _Call, token: str | None, answer: Answer, deadline: float | None
    ) -> Answer:
        """``answer`` if it is a success, after one token refresh on a 401; else the
        mapped error is raised."""
        note = ""
        if answer.status == 401:
            answer, note = self._after_401(call, token, answer, deadline)
        if 200 <= answer.status < 300:
            return answer
        raise error_for_status(
            answer.status,
            answer.headers,
            answer.body,
            operation=call.operation,
            write=call.write,
            now=self._clock(),
            note=note,
        )

    def _after_401(
        self, call: _Call, token: str | None, answer: Answer, deadline: float | None
    ) -> tuple[Answer, str]:
        """Repeat ``call`` once with a fresh token; return the answer and a note for errors."""
        if token is None:
            return answer, "no bearer token is configured"
        self._auth.invalidate(token)
        fresh = self._auth.token()
        if fresh is None or fresh == token:  # e.g. a static token: repeating cannot help
            return answer, "the access token cannot be refreshed"
        logger.info("access token refused; repeating %s once with a fresh one", call.operation)
        return self._exchange(call, fresh, deadline), "refused again after one token refresh"

    def _exchange(self, call: _Call, token: str | None, deadline: float | None) -> Answer:
        if deadline is not None and time.monotonic() >= deadline:
            raise UpstreamTimeout(f"{call.operation}: the attempt's deadline passed before sending")
        request = self._http.build_request(
            call.method,
            call.path,
            params=call.params,
            content=call.body,
            headers=self._headers(call, token),
            timeout=capped_timeout(self._timeout, deadline),
        )
        with map_transport_errors(call.operation, write=call.write):
            response = self._http.send(request, stream=True)
            try:
                body = _read_body(response, call)
            finally:
                response.close()
        logger.debug(
            "%s -> %d (X-Request-ID %s)", call.operation, response.status_code, call.request_id
        )
        return Answer(response.status_code, response.headers, body)

    def _headers(self, call: _Call, token: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "X-Request-ID": call.request_id}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if self._auth_roles is not None:
            headers["x-auth-roles"] = self._auth_roles
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        return headers


def _service_write(
    org_id: str, subscription_id: int, service_id: int, active: bool
) -> tuple[str, ServiceStatus]:
    """The checked path and body of a service's change."""
    service = check.int64_id("service_id", service_id)
    path = f"{_subscription_path(org_id, subscription_id)}/services/{service:d}"
    return path, ServiceStatus(active=check.active(active))


def _block_write(
    org_id: str, subscription_id: int, block_id: int, active: bool, reason: str | None
) -> tuple[str, BlockStatus]:
    """The checked path and body of a block's change."""
    block = check.block_id(block_id)
    path = f"{_subscription_path(org_id, subscription_id)}/blocks/{block:d}"
    return path, BlockStatus(active=check.active(active), reason=check.reason(reason))


def _write_call(
    path: str, body: pydantic.BaseModel, idempotency_key: str, request_id: str | None
) -> _Call:
    return _Call(
        "PATCH",
        path,
        _new_request_id() if request_id is None else check.header_token("request_id", request_id),
        body=body.model_dump_json().encode(),
        idempotency_key=check.header_token("idempotency_key", idempotency_key),
    )


def _checked_base_url(base_url: str) -> httpx.URL:
    base = check.http_url("base_url", base_url)
    if base.query or base.fragment:
        raise ConfigurationError(f"base_url {safe_url(base)!r} must not have a query or fragment")
    return base


def pooled_transport(max_connections: int) -> httpx.HTTPTransport:
    """The pooled transport of the upstream's clients: no proxies from the environment,
    every network operation bounded by the call's deadline."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,  # keep one warm per busy thread
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    return deadline_transport(limits=limits)


def _subscription_path(org_id: str, subscription_id: int) -> str:
    org = check.org_id(org_id)
    subscription = check.int64_id("subscription_id", subscription_id)
    return f"orgs/{org}/subscriptions/{subscription:d}"


def _new_request_id() -> str:
    return str(uuid.uuid4())


def _read_body(response: httpx.Response, call: _Call) -> bytes:
    if call.write and response.is_success:
        # The status is the outcome: trouble while draining the (ignored) body must not
        # turn an applied change into an error. Draining lets the connection be reused.
        try:
            _read_capped(response, ERROR_BODY_LIMIT)
        except httpx.HTTPError as exc:
            logger.debug(
                "%s: ignoring %s after %d", call.operation, type(exc).__name__, response.status_code
            )
        with contextlib.suppress(httpx.HTTPError):
            response.close()
        return b""
    return response.read() if response.is_success else _read_capped(response, ERROR_BODY_LIMIT)


def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _describe_bad_body(exc: pydantic.ValidationError, expected: str) -> str:
    problems = exc.errors(include_input=False, include_url=False)
    if any(p["type"] == "json_invalid" for p in problems):
        return "with a non-JSON body"
    first = problems[0] if problems else None
    where = ".".join(map(str, first["loc"])) if first else ""
    why = f" ({where or 'body'}: {first['msg']})" if first else ""
    return f"with a body that is not a {expected}{why}"
