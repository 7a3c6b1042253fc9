"""The ``/v2`` customers API: list and switch services and blocks of a subscription.

Shapes and status codes follow ``upstream-api.md``. Choices where it is silent:

- ``GET .../blocks`` lists the blocks currently in place (active), each with an extra
  ``active`` field; a lifted block is not listed. ``description`` is the ``reason`` of
  the write that put the block on, or the seed description.
- ``GET .../services`` takes ``query={"filter": ["active"|"inactive", ...], "include":
  [...]}``; a service matching any filter is listed, ``include`` is accepted and ignored,
  anything else in ``query`` is a 400.
- Order of checks: non-numeric ids and a block id other than 1 or 2 are 400, an unknown
  org, subscription or service 404, then the body is checked (400), then whether the
  service is changeable (400).
- Injected faults come first, like a proxy in front of the service: latency, then one
  drawn fault, then authentication and the request itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive

from subswitch.simulator.errors import ApiError, error_response
from subswitch.simulator.faults import (
    DROP,
    LATE_APPLY,
    LOST_RESPONSE,
    SLOW,
    AbandonedResponse,
    CutResponse,
    DroppedResponse,
)
from subswitch.simulator.journal import WriteRecord
from subswitch.simulator.runtime import Simulator
from subswitch.simulator.store import BLOCKS, SERVICES, Kind, TargetKey

SUBSCRIPTION = "/v2/orgs/{org_id}/subscriptions/{subscription_id}"
_MAX_ID_DIGITS = 19
_MAX_ID = 2**63 - 1
_QUERY_FILTERS = {"active": True, "inactive": False}


class V2Api:
    """Route handlers of the customers API, bound to one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def routes(self) -> list[Route]:
        """The ``/v2`` routes; other methods on these paths get 405 from the router."""
        return [
            Route(SUBSCRIPTION + "/services", self.list_services, methods=["GET"]),
            Route(SUBSCRIPTION + "/services/{item_id}", self.patch_service, methods=["PATCH"]),
            Route(SUBSCRIPTION + "/blocks", self.list_blocks, methods=["GET"]),
            Route(SUBSCRIPTION + "/blocks/{item_id}", self.patch_block, methods=["PATCH"]),
        ]

    async def list_services(self, request: Request) -> Response:
        """``GET .../services``: the subscription's services, optionally filtered."""
        return await self._read(request, self._services)

    async def list_blocks(self, request: Request) -> Response:
        """``GET .../blocks``: the blocks in place on the subscription."""
        return await self._read(request, self._blocks)

    async def patch_service(self, request: Request) -> Response:
        """``PATCH .../services/{serviceId}``: switch a service on or off."""
        return await self._write(request, "service")

    async def patch_block(self, request: Request) -> Response:
        """``PATCH .../blocks/{blockId}``: put a block on or lift it."""
        return await self._write(request, "block")

    # reads

    async def _read(
        self, request: Request, listing: Callable[[Request, str, int], Response]
    ) -> Response:
        early = (await self._inject(request, write=False))[1]
        if early is not None:
            return early
        try:
            self._authenticate(request)
            org_id, subscription_id = self._subscription(request.path_params)
            return listing(request, org_id, subscription_id)
        except ApiError as exc:
            return exc.response()

    def _services(self, request: Request, org_id: str, subscription_id: int) -> Response:
        wanted = parse_services_query(request.query_params.get("query"))
        items = self._sim.store.services(org_id, subscription_id)
        if wanted is not None:
            items = [item for item in items if item["active"] in wanted]
        return JSONResponse({"subscription_id": subscription_id, "items": items})

    def _blocks(self, request: Request, org_id: str, subscription_id: int) -> Response:
        items = self._sim.store.active_blocks(org_id, subscription_id)
        return JSONResponse({"subscription_id": subscription_id, "items": items})

    # writes

    async def _write(self, request: Request, kind: Kind) -> Response:
        # Logged and counted in flight from arrival, before the body is even read.
        sim = self._sim
        now = sim.clock()
        record = _record(request, kind, now)
        sim.journal.append(record)
        target = f"{record.org_id}/{record.subscription_id}/{kind}/{record.item_id}"
        sim.stats.write_started(target, now)
        arrived = asyncio.get_running_loop().time()
        try:
            record.body = await read_body(request.receive)
            return await self._answer_write(request, record, target, arrived)
        finally:
            sim.stats.write_finished(target)

    async def _answer_write(
        self, request: Request, record: WriteRecord, target: str, arrived: float
    ) -> Response:
        fault, early = await self._inject(request, write=True, target=target)
        record.fault = fault
        if early is not None:
            record.status = None if isinstance(early, CutResponse) else early.status_code
            return early
        gone = False
        if fault == LATE_APPLY:
            # Held (and counted in flight) until applied, whether the client waits or not.
            due = arrived + self._sim.faults.late_s - asyncio.get_running_loop().time()
            gone = await _wait_noting_departure(request.receive, due)
        try:
            self._apply(request, record)
        except ApiError as exc:
            response = exc.response()
        else:
            response = Response(status_code=201)
        if fault == LOST_RESPONSE:
            return DroppedResponse()
        if gone:
            return AbandonedResponse()
        record.status = response.status_code
        return response

    def _apply(self, request: Request, record: WriteRecord) -> None:
        self._authenticate(request)
        key = self._target(request.path_params, record.kind)
        active, reason = parse_write_body(record.body, record.kind)
        if record.kind == "service" and not SERVICES[key[3]].changeable:
            raise ApiError(400, f"service {key[3]} is not changeable")
        sim = self._sim
        now = sim.clock()
        sim.store.apply(key, active, reason, now)
        record.applied = True
        record.applied_at = now
        sim.stats.write_applied(record.idempotency_key)

    # shared steps

    async def _inject(
        self, request: Request, *, write: bool, target: str | None = None
    ) -> tuple[str | None, Response | None]:
        """Injected delay and fault: the fault, and its answer unless the request goes on."""
        faults = self._sim.faults
        delay = faults.delay_s()
        if delay:
            await asyncio.sleep(delay)
        fault = faults.pick(write, target)
        if fault is None or fault in (LOST_RESPONSE, LATE_APPLY):
            return fault, None
        if fault == DROP:
            return fault, DroppedResponse()
        if fault == SLOW:
            gone = await _client_left_within(request.receive, faults.slow_s)
            return fault, AbandonedResponse() if gone else None
        status, headers = faults.http_fault(fault, self._sim.clock())
        return fault, error_response(status, "Injected fault", f"simulated {status}", headers)

    def _authenticate(self, request: Request) -> None:
        if not self._sim.auth.authorized(request.headers.get("authorization")):
            raise ApiError(401, "missing, invalid or expired bearer token")

    def _subscription(self, params: dict[str, str]) -> tuple[str, int]:
        org_id, subscription_id = params["org_id"], parse_id(params["subscription_id"])
        if subscription_id is None:
            raise ApiError(400, "subscriptionId must be a positive integer")
        if not self._sim.store.has_subscription(org_id, subscription_id):
            raise ApiError(404, f"no subscription {subscription_id} in org {org_id}")
        return org_id, subscription_id

    def _target(self, params: dict[str, str], kind: str) -> TargetKey:
        item_id = parse_id(params["item_id"])
        if kind == "block":
            if item_id not in BLOCKS:
                raise ApiError(400, "blockId must be 1 or 2")
            org_id, subscription_id = self._subscription(params)
            return (org_id, subscription_id, "block", item_id)
        if item_id is None:
            raise ApiError(400, "serviceId must be a positive integer")
        org_id, subscription_id = self._subscription(params)
        if item_id not in SERVICES:
            raise ApiError(404, f"no service {item_id} on this subscription")
        return (org_id, subscription_id, "service", item_id)


def parse_id(raw: str) -> int | None:
    """A path id as an int64, or None if it is not a non-negative decimal integer."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_ID_DIGITS:
        return None
    value = int(raw)
    return value if value <= _MAX_ID else None


def parse_write_body(body: bytes, kind: str) -> tuple[bool, str | None]:
    """``(active, reason)`` from a ``ServiceStatus`` or ``BlockStatus`` body, or ApiError 400."""
    try:
        document = json.loads(body)
    except ValueError:
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(document, dict):
        raise ApiError(400, "body must be a JSON object")
    active = document.get("active")
    if type(active) is not bool:
        raise ApiError(400, "'active' is required and must be a boolean")
    reason = document.get("reason") if kind == "block" else None
    if reason is not None and not isinstance(reason, str):
        raise ApiError(400, "'reason' must be a string")
    return active, reason


def parse_services_query(raw: str | None) -> set[bool] | None:
    """The ``active`` values a ``query`` parameter selects (None: all), or ApiError 400."""
    if raw is None:
        return None
    try:
        query = json.loads(raw)
    except ValueError:
        raise ApiError(400, "query must be a JSON object") from None
    if not isinstance(query, dict) or set(query) - {"filter", "include"}:
        raise ApiError(400, 'query takes only "filter" and "include"')
    for name in ("filter", "include"):
        values = query.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ApiError(400, f'query "{name}" must be a list of strings')
    unknown = set(query.get("filter", [])) - set(_QUERY_FILTERS)
    if unknown:
        raise ApiError(400, f"unknown filter(s) {sorted(unknown)}")
    filters = query.get("filter", [])
    return {_QUERY_FILTERS[name] for name in filters} if filters else None


async def read_body(receive: Receive) -> bytes:
    """The whole request body (cheaper than Starlette's streaming reader for tiny bodies)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _client_left_within(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds``; True as soon as the client disconnects instead."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def _wait_noting_departure(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds`` in full; True if the client disconnected meanwhile."""
    end = asyncio.get_running_loop().time() + seconds
    gone = await _client_left_within(receive, max(0.0, seconds))
    if gone:
        await asyncio.sleep(max(0.0, end - asyncio.get_running_loop().time()))
    return gone


def _record(request: Request, kind: Kind, now: float) -> WriteRecord:
    params = request.path_params
    headers = request.headers
    target = (
        params["org_id"],
        parse_id(params["subscription_id"]),
        kind,
        parse_id(params["item_id"]),
    )
    extras = (
        headers.get("idempotency-key"),
        headers.get("x-request-id"),
        headers.get("x-auth-roles"),
    )
    return WriteRecord(
        now, request.method, request.scope["path"], target=target, body=b"", headers=extras
    )
