"""Serving the simulator over HTTP with uvicorn (uvloop and httptools when installed).

The listening socket is bound before uvicorn starts, so port 0 works: the bound URL is
known, and announced, before the first request can arrive. Connections made between the
announcement and the server's start wait in the listen backlog.
"""

from __future__ import annotations

import copy
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOGGING_CONFIG

from subswitch.simulator.app import create_app
from subswitch.simulator.config import SimulatorConfig
from subswitch.simulator.faults import InjectedDrop

ANNOUNCEMENT = "simulator listening on "
BACKLOG = 2048


class InjectedDropFilter(logging.Filter):
    """Silences uvicorn's traceback for connections the simulator drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except one carrying an :class:`InjectedDrop`."""
        exc_info = record.exc_info
        return not (exc_info and isinstance(exc_info[1], InjectedDrop))


def logging_config() -> dict[str, Any]:
    """uvicorn's own logging setup plus :class:`InjectedDropFilter` on ``uvicorn.error``."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"injected_drops": {"()": InjectedDropFilter}}
    config["loggers"]["uvicorn.error"]["filters"] = ["injected_drops"]
    return config


def uvicorn_config(
    app: Starlette,
    *,
    log_level: str = "info",
    access_log: bool = False,
    graceful_shutdown_s: int = 5,
) -> uvicorn.Config:
    """How the simulator is served; the access log is off by default for speed."""
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        log_config=logging_config(),
        lifespan="off",
        backlog=BACKLOG,
        proxy_headers=False,  # nothing sits in front of it; saves work on every request
        timeout_graceful_shutdown=graceful_shutdown_s,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: any free port)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def socket_url(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def describe(config: SimulatorConfig) -> str:
    """A one-line summary of what is served (never a token or key)."""
    if config.auth:
        trusted = len(config.service_account_files)
        auth = f"{len(config.tokens)} static token(s), {trusted} service account(s)"
    else:
        auth = "off (requests need no token)"
    changed = config.faults.model_dump(exclude_defaults=True)
    faults = ", ".join(f"{name}={value}" for name, value in changed.items()) or "none"
    orgs = ", ".join(config.orgs)
    return f"orgs {orgs}; subscriptions 1..{config.subscriptions}; auth {auth}; faults {faults}"


def _print_flushed(line: str) -> None:
    print(line, flush=True)


def serve(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    access_log: bool = False,
    announce: Callable[[str], None] = _print_flushed,
) -> None:
    """Serve a simulator until interrupted.

    Announces ``simulator listening on URL`` first, then a summary of the configuration.
    """
    app = create_app(config)
    with bind_socket(host, port) as sock:
        announce(ANNOUNCEMENT + socket_url(sock))
        announce(describe(config))
        server = uvicorn.Server(uvicorn_config(app, log_level=log_level, access_log=access_log))
        server.run(sockets=[sock])
