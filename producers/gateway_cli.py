"""``subswitch gateway``: the HTTP gateway (contract §9) for producers that are not
Python."""

from __future__ import annotations

import logging
from typing import Annotated, Final

import typer

from producers.gateway.server import build_gateway, serve
from subswitch.commandline import OneLineErrors, read_settings

_EPILOG: Final = (
    "Exit status: 0 stopped; 2 bad configuration (no policy, no usable signing key, "
    "a key that is no gateway's of the policy)."
)


def register(app: typer.Typer) -> None:
    """Add ``gateway`` to the ``subswitch`` CLI."""
    app.command("gateway", cls=OneLineErrors, epilog=_EPILOG)(gateway)


def gateway(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default SUBSWITCH_GATEWAY_HOST).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port (default SUBSWITCH_GATEWAY_PORT, 8000)."),
    ] = None,
) -> None:
    """Serve the HTTP API: POST /v1/commands, GET /v1/commands/{id}, /readyz, /metrics."""
    settings = read_settings()
    built = build_gateway(settings)
    # The process's own lines (ready, batches, reloads) at INFO, in SUBSWITCH_LOG_FORMAT
    # (the root callback installed the handler).
    logging.getLogger().setLevel(logging.INFO)
    serve(
        built,
        host=host or settings.gateway_host,
        port=settings.gateway_port if port is None else port,
    )
