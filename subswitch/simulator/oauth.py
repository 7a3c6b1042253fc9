"""``POST /oauth/token``: the JWT-bearer grant of the AuthN service (no faults here)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from subswitch.simulator.auth import GrantError
from subswitch.simulator.runtime import Simulator

TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path, not a secret
_FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_routes(sim: Simulator) -> list[Route]:
    """The token endpoint, bound to ``sim``."""

    async def token(request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith(_FORM):
            return _refusal(GrantError("invalid_request", f"content type must be {_FORM}"))
        body = (await request.body()).decode("utf-8", errors="replace")
        form = dict(parse_qsl(body, keep_blank_values=True))
        try:
            answer = sim.auth.grant(form)
        except GrantError as exc:
            return _refusal(exc)
        return JSONResponse(answer, headers=_NO_STORE)

    return [Route(TOKEN_PATH, token, methods=["POST"])]


def _refusal(exc: GrantError) -> Response:
    body = {"error": exc.error, "error_description": exc.description}
    return JSONResponse(body, status_code=400, headers=_NO_STORE)
