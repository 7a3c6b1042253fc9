"""The ``subswitch`` command line: one typer app assembled from each role's commands.

Its root (:class:`~subswitch.commandline.OneLineGroup`) ends every user mistake and
every error of the tree with one line, ``error: <what>``, and the documented exit
status (:class:`~subswitch.commandline.ExitCode`).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from producers.batch_cli import register as register_batch_command
from producers.cli import register as register_producer_commands
from subswitch import __version__
from subswitch.archive.cli import register as register_archive_commands
from subswitch.commandline import EXIT_STATUS_HELP, OneLineErrors, OneLineGroup, read_settings
from subswitch.demo import run_demo
from subswitch.simulator.cli import register as register_simulator_commands
from worker.cli import register as register_worker_commands

app = typer.Typer(
    name="subswitch",
    cls=OneLineGroup,
    help="Switch telecom subscriptions' barrings and services on and off, reliably.",
    epilog=EXIT_STATUS_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"subswitch {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Switch telecom subscriptions' barrings and services on and off, reliably."""


register_worker_commands(app)
register_producer_commands(app)
register_batch_command(app)
register_simulator_commands(app)
register_archive_commands(app)


@app.command("demo", cls=OneLineErrors, epilog="Exit status: 0 every outcome as shown; 1 not.")
def demo() -> None:
    """Run simulator, worker and producer together and print each result event."""
    raise typer.Exit(run_demo(read_settings(), Console()))


def main() -> None:
    """Console-script entry point."""
    app()
