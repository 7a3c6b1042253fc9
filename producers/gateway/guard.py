"""Problem answers (RFC 9457), and the guard that refuses a body the gateway will not
read: not JSON (``415``) or larger than the limit (``413``), before FastAPI parses it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM_TYPE: Final = "application/problem+json"
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """An ``application/problem+json`` answer; extensions that are ``None`` are left out."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update({name: value for name, value in extensions.items() if value is not None})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_TYPE)


def is_json(content_type: str | None) -> bool:
    """Whether ``content_type`` is ``application/json`` or ``application/*+json``."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyGuard:
    """Reads the body of a request to ``path`` (at most ``max_body_bytes``) before the
    app does, answering ``415`` for a body that is not JSON and ``413`` for one that is
    too large; the app then reads the same bytes."""

    def __init__(self, app: ASGIApp, *, path: str, max_body_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check, buffer and replay the body; pass every other request on."""
        if (
            scope["type"] != "http"
            or scope["path"] != self.path
            or scope["method"] not in _BODY_METHODS
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not is_json(headers.get("content-type")):
            detail = "send the commands as application/json"
            await problem_response(415, "Unsupported media type", detail)(scope, receive, send)
            return
        body = await self._read(headers, receive)
        if body is None:
            detail = f"the body is larger than {self.max_body_bytes:,} bytes"
            await problem_response(413, "Request too large", detail)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, headers: Headers, receive: Receive) -> bytes | None:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body in one message, then the client's own messages (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
