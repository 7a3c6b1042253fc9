"""Upstream-shaped error answers: the ``ErrorMessage`` body and the 405 without one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from subswitch.errors import PermanentError

MESSAGES = {
    400: "Invalid request",
    401: "Authentication required",
    404: "Resource not found",
}
_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class ApiError(PermanentError):
    """Raised inside a handler to answer with an ``ErrorMessage``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail

    def response(self) -> Response:
        """The error as an HTTP answer (a 401 also carries a Bearer challenge)."""
        headers = _CHALLENGE if self.status == HTTPStatus.UNAUTHORIZED else None
        return error_response(self.status, MESSAGES[self.status], self.detail, headers)


def error_response(
    status: int, message: str, detail: str, headers: Mapping[str, str] | None = None
) -> Response:
    """An ``ErrorMessage`` answer: ``{"code", "status", "message", "detailMsg"}``."""
    body = {
        "code": status,
        "status": HTTPStatus(status).phrase,
        "message": message,
        "detailMsg": detail,
    }
    return Response(
        json.dumps(body).encode(), status, headers=headers, media_type="application/json"
    )


async def http_exception(request: Request, exc: Exception) -> Response:
    """Routing errors the upstream way: 405 without a body, anything else as ErrorMessage."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        return Response(status_code=exc.status_code, headers=exc.headers)
    phrase = HTTPStatus(exc.status_code).phrase
    if exc.status_code == HTTPStatus.NOT_FOUND:
        return error_response(exc.status_code, phrase, f"no resource at {request.url.path}")
    return error_response(exc.status_code, phrase, exc.detail)
