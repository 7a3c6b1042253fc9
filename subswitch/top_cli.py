"""``subswitch top``: a live view of the lanes, the upstream traffic and the breaker.

It reads the broker and the store directly (:mod:`subswitch.top`), so it works
without Prometheus, wherever the worker's two URLs are set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.live import Live

from subswitch.backlog import BrokerBacklog
from subswitch.commandline import OneLineErrors, read_settings
from subswitch.redis_client import redis_client
from subswitch.settings import Settings
from subswitch.top import LiveSource, TopSource, TopView, render, summarise
from subswitch.urls import resolve_endpoints

TOP_EPILOG: Final = (
    "Exit status: 0 done (Ctrl-C ends the live view); 2 bad option or configuration; "
    "3 broker or store unreachable."
)
_STORE_TIMEOUT_S: Final = 2.0


def top(
    once: Annotated[
        bool, typer.Option("--once", help="Print one view (rates over --interval) and exit.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON: one object per view (with --once, just one).")
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.2, max=60.0, help="Seconds between views (rates)."),
    ] = 1.0,
) -> None:
    """Show lanes, outcomes per second, in flight, settling, rate limit, breaker, dead letters."""
    settings = read_settings()
    with live_source(settings) as source:
        views = follow(source, rate_limit=settings.rate_limit, interval_s=interval)
        if once:
            views = iter([next(views)])
        show(views, console=Console(), as_json=as_json)


@contextmanager
def live_source(settings: Settings) -> Iterator[LiveSource]:
    """The broker and the store of ``settings``, closed on exit."""
    endpoints = resolve_endpoints(settings)
    client = redis_client(endpoints.store_url, timeout_s=_STORE_TIMEOUT_S)
    with BrokerBacklog(broker_url=endpoints.broker_url) as backlog:
        try:
            yield LiveSource(backlog=backlog, client=client, store_url=endpoints.store_url)
        finally:
            client.close()


def follow(
    source: TopSource,
    *,
    rate_limit: float | None,
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[TopView]:
    """A view every ``interval_s``, each with the rates since the one before."""
    before = source.read()
    while True:
        sleep(interval_s)
        after = source.read()
        yield summarise(before, after, rate_limit=rate_limit)
        before = after


def show(views: Iterator[TopView], *, console: Console, as_json: bool) -> None:
    """Print each view: JSON lines, a live table on a terminal, else a table each time."""
    try:
        if as_json:
            for view in views:
                typer.echo(json.dumps(view.model_dump(mode="json")))
        elif console.is_terminal:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                for view in views:
                    live.update(render(view), refresh=True)
        else:
            for view in views:
                console.print(render(view))
    except KeyboardInterrupt:
        return  # Ctrl-C is how a live view ends


def register(app: typer.Typer) -> None:
    """Add ``top`` to the ``subswitch`` CLI."""
    app.command("top", cls=OneLineErrors, epilog=TOP_EPILOG)(top)
