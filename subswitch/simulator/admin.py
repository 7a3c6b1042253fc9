"""The admin view: state, write log, stats, faults, reset, token revocation (no auth).

Shapes (all JSON):

- ``GET /healthz`` -> ``{"status": "ok"}``
- ``GET /admin/state`` -> ``{"targets": [Target...]}`` for every target an applied write
  changed; ``GET /admin/state/{org_id}/{subscription_id}/{kind}/{id}`` -> one ``Target``
  (the seed state if never written; 404 if no such target). ``Target`` is
  ``{"org_id", "subscription_id", "kind", "id", "active", "reason",
  "date_last_modified", "writes_applied"}``.
- ``GET /admin/writes?since=SEQ&limit=N`` -> ``{"writes": [Write...], "next": SEQ}``:
  every PATCH attempt with ``seq > since`` in arrival order (``limit`` defaults to
  10,000, at most 100,000); pass ``next`` as ``since`` to go on. ``Write`` is
  ``{"seq", "time", "method", "path", "org_id", "subscription_id", "kind", "id", "body",
  "idempotency_key", "request_id", "auth_roles", "status", "applied", "applied_at",
  "fault"}``; ``status`` is null when no answer was delivered (drop, lost_response, a
  slow or late answer the client gave up on) or while still in flight; ``applied_at``
  is when the write changed the state (null if it did not); ``fault`` is one of
  ``drop``, ``lost_response``, ``late_apply``, ``http_429``, ``http_500``,
  ``http_502``, ``http_503``, ``http_504``, ``slow`` or null.
- ``GET /admin/stats`` -> ``{"writes_total", "writes_applied",
  "max_in_flight_per_target": {"org/sub/kind/id": n}, "max_in_flight_any",
  "max_in_flight_total", "in_flight_now", "applied_per_idempotency_key_max",
  "duplicate_applies": {key: n}, "writes_per_second": {"<epoch s>": n},
  "max_writes_in_any_second", "started_at"}``; ``max_in_flight_any`` is the largest
  per-target value, ``max_in_flight_total`` counts all targets together.
- ``GET /admin/faults`` -> the faults; ``PUT /admin/faults`` merges a partial object.
- ``POST /admin/reset[?faults=1]`` and ``POST /admin/tokens/revoke``.
- ``POST /admin/targets/{org_id}/{subscription_id}/{kind}/{id}`` with ``{"active": bool,
  "reason": str | null}`` -> the ``Target`` as it now is: another system changed it behind
  subswitch's back (for drift, ``subswitch reconcile``). Not a write: it is not logged,
  counted in the stats or in ``writes_applied``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from subswitch.simulator.api import parse_id
from subswitch.simulator.config import Faults
from subswitch.simulator.errors import ApiError
from subswitch.simulator.runtime import Simulator
from subswitch.simulator.store import TargetKey, as_kind

DEFAULT_PAGE = 10_000
MAX_PAGE = 100_000
_TRUE = {"1", "true", "yes", "on"}


class AdminApi:
    """Admin route handlers, bound to one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def routes(self) -> list[Route]:
        """Every admin route plus ``/healthz``."""
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/admin/state", self.state, methods=["GET"]),
            Route("/admin/state/{org_id}/{subscription_id}/{kind}/{item_id}", self.target),
            Route(
                "/admin/targets/{org_id}/{subscription_id}/{kind}/{item_id}",
                self.change_behind,
                methods=["POST"],
            ),
            Route("/admin/writes", self.writes, methods=["GET"]),
            Route("/admin/stats", self.stats, methods=["GET"]),
            Route("/admin/faults", self.faults, methods=["GET"]),
            Route("/admin/faults", self.set_faults, methods=["PUT"]),
            Route("/admin/reset", self.reset, methods=["POST"]),
            Route("/admin/tokens/revoke", self.revoke_tokens, methods=["POST"]),
        ]

    async def healthz(self, request: Request) -> Response:
        """Liveness."""
        return JSONResponse({"status": "ok"})

    async def state(self, request: Request) -> Response:
        """Every target an applied write changed."""
        store = self._sim.store
        return JSONResponse({"targets": [store.describe(key) for key in store.written()]})

    async def target(self, request: Request) -> Response:
        """One target's current state."""
        try:
            key = self._target_key(request.path_params)
        except ApiError as exc:
            return exc.response()
        return JSONResponse(self._sim.store.describe(key))

    async def change_behind(self, request: Request) -> Response:
        """Change one target as another system would: no write, no log, no stats."""
        try:
            key = self._target_key(request.path_params)
            active, reason = _behind_change(await request.body())
        except ApiError as exc:
            return exc.response()
        self._sim.store.change_behind(key, active, reason, self._sim.clock())
        return JSONResponse(self._sim.store.describe(key))

    def _target_key(self, params: dict[str, str]) -> TargetKey:
        kind = as_kind(params["kind"])
        subscription_id, item_id = parse_id(params["subscription_id"]), parse_id(params["item_id"])
        if kind is None:
            raise ApiError(404, "kind must be 'service' or 'block'")
        if subscription_id is None or item_id is None:
            raise ApiError(404, "ids must be integers")
        key: TargetKey = (params["org_id"], subscription_id, kind, item_id)
        if not self._sim.store.has_target(key):
            raise ApiError(404, "no such target")
        return key

    async def writes(self, request: Request) -> Response:
        """A page of the write log."""
        try:
            since = _int_param(request, "since", 0, 0, 2**63)
            limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        except ApiError as exc:
            return exc.response()
        records, following = self._sim.journal.page(since, limit)
        return JSONResponse({"writes": [r.to_json() for r in records], "next": following})

    async def stats(self, request: Request) -> Response:
        """Counters since start or the last reset."""
        return JSONResponse(self._sim.stats.snapshot())

    async def faults(self, request: Request) -> Response:
        """The faults in force."""
        return JSONResponse(self._sim.faults.faults.model_dump())

    async def set_faults(self, request: Request) -> Response:
        """Merge a partial faults object into the faults in force."""
        try:
            changes = _json_object(await request.body())
            self._sim.faults.faults = merge_faults(self._sim.faults.faults, changes)
        except ApiError as exc:
            return exc.response()
        return JSONResponse(self._sim.faults.faults.model_dump())

    async def reset(self, request: Request) -> Response:
        """Seed state, empty log and stats; ``?faults=1`` clears the faults too."""
        clear_faults = request.query_params.get("faults", "").lower() in _TRUE
        self._sim.reset(faults=clear_faults)
        return JSONResponse({"status": "ok", "faults": self._sim.faults.faults.model_dump()})

    async def revoke_tokens(self, request: Request) -> Response:
        """Invalidate every access token issued so far."""
        return JSONResponse({"status": "ok", "generation": self._sim.auth.revoke_all()})


def merge_faults(current: Faults, changes: dict[str, Any]) -> Faults:
    """``current`` with ``changes`` applied, or ApiError 400 naming what is wrong."""
    unknown = sorted(set(changes) - set(Faults.model_fields))
    if unknown:
        known = ", ".join(Faults.model_fields)
        raise ApiError(400, f"unknown fault option(s) {unknown}; known: {known}")
    try:
        return Faults.model_validate({**current.model_dump(), **changes})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ApiError(400, f"invalid faults: {problems}") from None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(document, dict):
        raise ApiError(400, "body must be a JSON object")
    return document


def _behind_change(body: bytes) -> tuple[bool, str | None]:
    change = _json_object(body)
    unknown = sorted(set(change) - {"active", "reason"})
    if unknown:
        raise ApiError(400, f"unknown field(s) {unknown}; known: active, reason")
    active, reason = change.get("active"), change.get("reason")
    if not isinstance(active, bool):
        raise ApiError(400, "active must be true or false")
    if reason is not None and not isinstance(reason, str):
        raise ApiError(400, "reason must be a string or null")
    return active, reason


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer in {low}..{high}")
    return value
