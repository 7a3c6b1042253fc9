"""The HTTP gateway as an ASGI app (FastAPI): ``POST /v1/commands``, ``GET
/v1/commands/{command_id}``, ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``.

Every error is ``application/problem+json`` (RFC 9457): the gateway's own refusals,
FastAPI's validation errors, unknown routes and methods, and the unexpected.

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations,
which name local dependencies, at run time.)
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol

from fastapi import Body, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from producers.gateway.errors import (
    Accepted,
    Item,
    NotAccepted,
    RequestRefused,
    Unauthenticated,
)
from producers.gateway.guard import BodyGuard, problem_response
from producers.gateway.intake import Caller, Intake
from producers.gateway.metrics import GatewayMetrics, MetricsMiddleware
from producers.gateway.models import (
    UNION_TAGS,
    AcceptedBatch,
    AcceptedCommand,
    CommandBatch,
    CommandsRequest,
    Health,
    Problem,
)
from subswitch import __version__
from subswitch.contract import COMMAND_ID_PATTERN
from subswitch.errors import SubswitchError, UnavailableError
from subswitch.policy import Policy
from subswitch.status import CommandStatus

log = logging.getLogger(__name__)

COMMANDS_PATH: Final = "/v1/commands"
STATUS_PATH: Final = "/v1/commands/{command_id}"
#: Routes whose label the metrics keep even when a request never reached the router.
FIXED_ROUTES: Final = frozenset({COMMANDS_PATH, "/healthz", "/readyz", "/metrics"})


class StatusSource(Protocol):
    """Where a command is (``subswitch.status.StatusReader``)."""

    def status(self, command_id: str) -> CommandStatus:
        """The command's status; ``unknown`` for an id nobody has seen."""
        ...


@dataclass(frozen=True)
class GatewayParts:
    """Everything the app needs, built at the entry point.

    ``probes`` are the readiness checks by name (``broker``, ``store``): each raises
    an error of the tree when its service does not answer.
    """

    intake: Intake
    status: StatusSource
    probes: Mapping[str, Callable[[], None]]
    metrics: GatewayMetrics
    max_body_bytes: int
    retry_after_s: int


_bearer = HTTPBearer(auto_error=False, description="An API key of a producer of the policy.")


def _problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem, "description": _REASONS[code]} for code in codes}


_REASONS: Final = {
    400: "The body is not JSON.",
    401: "No API key, or an unknown one.",
    403: "The key's producer (or the gateway) may not send a command; the rule is named.",
    404: "No such route.",
    409: "A command_id is already used for another command.",
    413: "The body is larger than SUBSWITCH_GATEWAY_MAX_BODY_BYTES.",
    415: "The body is not application/json.",
    422: "A command is invalid, or a batch holds more than 1,000: each problem names its "
    "index and field.",
    503: "The broker or the store is not reachable: nothing was accepted (see accepted).",
}

_REQUEST_EXAMPLES: Final = {
    "block": {
        "summary": "One urgent fraud block",
        "value": {
            "type": "ChangeBlockStatus",
            "command_id": "fraud-case-8812-block",
            "org_id": "telco",
            "subscription_id": 214748364,
            "block_id": 1,
            "active": True,
            "reason": "stolen",
            "priority": "urgent",
        },
    },
    "batch": {
        "summary": "A batch on the bulk lane",
        "value": {
            "commands": [
                {
                    "type": "ChangeServiceStatus",
                    "org_id": "telco",
                    "subscription_id": n,
                    "service_id": 3,
                    "active": True,
                    "priority": "bulk",
                    "source": "batch:roaming-2026-12",
                }
                for n in (1, 2)
            ]
        },
    },
}


def create_app(parts: GatewayParts) -> FastAPI:
    """The gateway app for ``parts``."""
    app = FastAPI(
        title="subswitch gateway",
        version=__version__,
        description="Enqueue subswitch commands over HTTP and follow their status.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    _add_routes(app, parts)
    _add_error_handlers(app, parts)
    app.add_middleware(BodyGuard, path=COMMANDS_PATH, max_body_bytes=parts.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=parts.metrics, routes=FIXED_ROUTES)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _authenticator(intake: Intake) -> Callable[..., Caller]:
    def authenticate(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        if credentials is None:
            raise Unauthenticated("an API key is required: Authorization: Bearer <API key>")
        producer = intake.policy.producer_for_api_key(credentials.credentials)
        if producer is None:
            raise Unauthenticated("this API key is not known")
        return Caller(producer)

    return authenticate


def _add_routes(app: FastAPI, parts: GatewayParts) -> None:
    _add_command_routes(app, parts)
    _add_probe_routes(app, parts)


def _add_command_routes(app: FastAPI, parts: GatewayParts) -> None:
    authenticate = _authenticator(parts.intake)

    @app.post(
        COMMANDS_PATH,
        status_code=202,
        response_model=AcceptedCommand | AcceptedBatch,
        responses=_problem_responses(400, 401, 403, 409, 413, 415, 422, 503),
        summary="Enqueue one command, or a batch of up to 1,000",
    )
    async def post_commands(
        caller: Annotated[Caller, Depends(authenticate)],
        body: Annotated[CommandsRequest, Body(openapi_examples=_REQUEST_EXAMPLES)],
    ) -> Response:
        """Accept every command or none: ``202`` with ``Location`` (one command) or a
        list of ids and locations (a batch). The same command again gets the same
        answer; a ``command_id`` known with another payload gets ``409``."""
        batch = isinstance(body, CommandBatch)
        posted = body.commands if isinstance(body, CommandBatch) else [body]
        accepted = await run_in_threadpool(parts.intake.submit, caller, posted, batch=batch)
        return _accepted_response(accepted, batch=batch)

    @app.get(
        STATUS_PATH,
        response_model=CommandStatus,
        responses=_problem_responses(401, 422, 503),
        summary="Where a command is (contract §7)",
    )
    async def get_command(
        caller: Annotated[Caller, Depends(authenticate)],
        command_id: Annotated[str, Path(pattern=f"^{COMMAND_ID_PATTERN}$")],
    ) -> CommandStatus:
        """``queued``, ``waiting``, ``settling``, ``in_flight``, an outcome with its
        event, or ``unknown`` (never an error). A command another producer sent is
        ``unknown`` to this key."""
        status = await run_in_threadpool(parts.status.status, command_id)
        return _visible(status, caller, parts.intake.policy)


def _add_probe_routes(app: FastAPI, parts: GatewayParts) -> None:
    @app.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz() -> Health:
        """Always ``ok`` while the process serves requests."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": Problem, "description": "The broker or the store is away."}},
        summary="The broker and the store answer",
    )
    async def readyz() -> Response:
        """``200`` when every probe (broker, store) answers, else ``503`` naming it."""
        checks = await run_in_threadpool(_run_probes, parts.probes)
        away = sorted(name for name, value in checks.items() if value != "ok")
        if not away:
            return JSONResponse(Health(status="ok", checks=checks).model_dump())
        detail = f"not reachable: {', '.join(away)}"
        headers = {"Retry-After": str(parts.retry_after_s)}
        return problem_response(503, "Not ready", detail, headers=headers, checks=checks)

    @app.get("/metrics", summary="Prometheus metrics of the gateway", response_class=Response)
    async def metrics() -> Response:
        """The text exposition format."""
        return Response(generate_latest(parts.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _accepted_response(accepted: Sequence[Accepted], *, batch: bool) -> Response:
    if not batch:
        (only,) = accepted
        body = AcceptedCommand(command_id=only.command_id, location=only.location)
        return JSONResponse(body.model_dump(), 202, headers={"Location": only.location})
    items = [
        {"index": item.index, "command_id": item.command_id, "location": item.location}
        for item in accepted
    ]
    return JSONResponse({"accepted": len(items), "commands": items}, 202)


def _visible(status: CommandStatus, caller: Caller, policy: Policy) -> CommandStatus:
    """``status``, or ``unknown`` when its event names a source the key may not speak
    for (no producer reads another's commands)."""
    event = status.event
    source = event.data.source if event is not None else None
    if source is None or policy.may_speak_for(caller.producer, source):
        return status
    return CommandStatus(command_id=status.command_id, state="unknown")


def _run_probes(probes: Mapping[str, Callable[[], None]]) -> dict[str, str]:
    checks = {}
    for name, probe in probes.items():
        try:
            probe()
        except SubswitchError as exc:
            log.warning("gateway: not ready: %s", exc)  # hosts go to the log only
            checks[name] = "unavailable"
        else:
            checks[name] = "ok"
    return checks


def _add_error_handlers(app: FastAPI, parts: GatewayParts) -> None:
    retry_after = str(parts.retry_after_s)

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestRefused)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
        return problem_response(
            exc.status, exc.title, exc.detail, errors=_items(exc.items), headers=headers
        )

    async def not_accepted(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, NotAccepted)
        accepted = [
            {"index": a.index, "command_id": a.command_id, "location": a.location}
            for a in exc.accepted
        ]
        # The reason names internal hosts: it goes to the log, not to the client.
        log.warning("gateway: request not accepted: %s", exc.detail)
        detail = (
            "the broker or the store did not answer: not accepted"
            + (" (but the commands under accepted were)" if accepted else "")
            + f"; retry in {retry_after} s"
        )
        return problem_response(
            503,
            "Service unavailable",
            detail,
            headers={"Retry-After": retry_after},
            accepted=accepted or None,
        )

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.warning("gateway: %s", exc)
        detail = f"the store did not answer; retry in {retry_after} s"
        return problem_response(
            503, "Service unavailable", detail, headers={"Retry-After": retry_after}
        )

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _validation_problem(exc.errors())

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        title = _HTTP_TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(exc.status_code, title, detail, headers=exc.headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("gateway: unexpected error")
        return problem_response(500, "Internal server error", "see the gateway's log")

    app.add_exception_handler(RequestRefused, refused)
    app.add_exception_handler(NotAccepted, not_accepted)
    app.add_exception_handler(UnavailableError, unavailable)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


_HTTP_TITLES: Final = {404: "Not found", 405: "Method not allowed", 401: "Unauthenticated"}


def _validation_problem(errors: Sequence[Any]) -> Response:
    items = [_validation_item(error) for error in errors]
    if any(error.get("type") == "json_invalid" for error in errors):
        return problem_response(400, "Malformed request", "the body is not JSON")
    indexes = {item.index for item in items}
    count = len(indexes)
    detail = f"{count} invalid {'command' if count == 1 else 'commands'}; nothing was enqueued"
    return problem_response(422, "Invalid command", detail, errors=_items(items))


def _validation_item(error: Mapping[str, Any]) -> Item:
    """``error``'s command index (in a batch) and field path, without FastAPI's
    ``body`` and the unions' tags."""
    loc = [part for part in error.get("loc", ()) if part not in UNION_TAGS]
    if loc and loc[0] in {"body", "path", "query", "header"}:
        loc = loc[1:]
    index = None
    if len(loc) >= 2 and loc[0] == "commands" and isinstance(loc[1], int):
        index, loc = loc[1], loc[2:]
    field = ".".join(str(part) for part in loc) or None
    return Item(index, field, str(error.get("msg", "invalid")))


def _items(items: Sequence[Item]) -> list[dict[str, Any]] | None:
    if not items:
        return None
    return [
        {"index": i.index, "field": i.field, "message": i.message, "command_id": i.command_id}
        for i in items
    ]


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with error answers as ``application/problem+json``."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if code[0] in "45" and "application/json" in content:
                    content["application/problem+json"] = content.pop("application/json")
    app.openapi_schema = schema
    return schema
