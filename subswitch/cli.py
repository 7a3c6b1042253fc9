"""The ``subswitch`` command line: one typer app assembled from each role's commands."""

from __future__ import annotations

import typer

from producers.cli import register as register_producer_commands
from simulator.cli import register as register_simulator_commands
from worker.cli import register as register_worker_commands

app = typer.Typer(
    name="subswitch",
    help="Switch telecom subscriptions' barrings and services on and off, reliably.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register_worker_commands(app)
register_producer_commands(app)
register_simulator_commands(app)


def main() -> None:
    """Console-script entry point."""
    app()
