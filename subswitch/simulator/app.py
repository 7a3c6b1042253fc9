"""The simulator as a Starlette ASGI app."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from subswitch.simulator.admin import AdminApi
from subswitch.simulator.api import V2Api
from subswitch.simulator.config import SimulatorConfig
from subswitch.simulator.errors import http_exception
from subswitch.simulator.oauth import oauth_routes
from subswitch.simulator.runtime import Simulator


def create_app(config: SimulatorConfig, *, clock: Callable[[], float] | None = None) -> Starlette:
    """A simulator app for ``config``; ``clock`` (epoch seconds) replaces ``time.time``.

    The clock dates writes, buckets them per second and decides token expiry; injected
    delays always take real time. ``simulator_of(app)`` reaches the state behind it.
    Raises ValueError if a configured service-account file cannot be used.
    """
    sim = Simulator.build(config, clock)
    routes = [*V2Api(sim).routes(), *oauth_routes(sim), *AdminApi(sim).routes()]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_exception})
    app.state.simulator = sim
    return app


def simulator_of(app: Starlette) -> Simulator:
    """The state behind an app made by :func:`create_app`."""
    sim = app.state.simulator
    assert isinstance(sim, Simulator)
    return sim
