"""The ``subswitch`` command line: one typer app assembled from each role's commands."""

from __future__ import annotations

import typer

from producers.cli import register as register_producer_commands
from subswitch.simulator.cli import register as register_simulator_commands
from worker.cli import register as register_worker_commands

app = typer.Typer(
    name="subswitch",
    help="Switch telecom subscriptions' barrings and services on and off, reliably.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Switch telecom subscriptions' barrings and services on and off, reliably."""


register_worker_commands(app)
register_producer_commands(app)
register_simulator_commands(app)


@app.command("demo")
def demo() -> None:
    """Run simulator, worker and producer together and print each result event."""
    from rich.console import Console  # noqa: PLC0415 - keep CLI start-up light

    from subswitch.demo import run_demo  # noqa: PLC0415
    from subswitch.settings import Settings  # noqa: PLC0415

    raise typer.Exit(run_demo(Settings(), Console()))


def main() -> None:
    """Console-script entry point."""
    app()
