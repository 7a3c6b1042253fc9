"""``subswitch worker``: run a Celery worker on the lanes' queues."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from contract import Lane
from subswitch.settings import Settings
from worker.factory import DEFAULT_CONCURRENCY, create_app


def parse_lanes(value: str) -> list[Lane]:
    """``"urgent,bulk"`` to lanes; a one-line error names an unknown lane."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    known = {lane.value: lane for lane in Lane}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        choices = ", ".join(known)
        raise typer.BadParameter(f"unknown lane(s) {', '.join(unknown) or '(none)'}; use {choices}")
    return [known[name] for name in dict.fromkeys(names)]


def worker(
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Threads in this worker process.")
    ] = DEFAULT_CONCURRENCY,
    lanes: Annotated[
        str, typer.Option("--lanes", help="Comma-separated lanes to serve: urgent,normal,bulk.")
    ] = "urgent,normal,bulk",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO",
    hostname: Annotated[str | None, typer.Option("--hostname", "-n", help="Node name.")] = None,
) -> None:
    """Run a worker (Celery, threads pool) that applies commands upstream."""
    queues = ",".join(lane.queue for lane in parse_lanes(lanes))
    # One INFO line per HTTP request drowns the worker's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(Settings())
    argv = [
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "--queues",
        queues,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    app.worker_main(argv=argv)


def register(app: typer.Typer) -> None:
    """Add ``worker`` to the ``subswitch`` CLI."""
    app.command("worker")(worker)
