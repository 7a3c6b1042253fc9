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
from producers.dead_cli import register as register_dead_commands
from producers.gateway_cli import register as register_gateway_command
from producers.publisher import CeleryPublisher
from producers.retry_cli import register as register_retry_command
from subswitch import __version__
from subswitch.archive.cli import register as register_archive_commands
from subswitch.commandline import (
    EXIT_STATUS_HELP,
    OneLineErrors,
    OneLineGroup,
    read_process_settings,
    read_settings,
)
from subswitch.demo import run_demo
from subswitch.logs import configure_logging
from subswitch.simulator.cli import register as register_simulator_commands
from subswitch.status import configured_archive
from subswitch.status_cli import register as register_status_command
from subswitch.top_cli import register as register_top_command
from subswitch.tracing import configure_tracing
from subswitch.trust_cli import register as register_trust_commands
from worker.cli import register as register_worker_commands
from worker.reconcile_cli import register as register_reconcile_command

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
    # Every process is configured here, once: its log format (the worker's level
    # follows once Celery knows it) and, when OTEL_* asks for it, tracing.
    process = read_process_settings()
    configure_logging(process.log_format)
    configure_tracing(process)


register_worker_commands(app)
register_producer_commands(app)
register_batch_command(app)
register_dead_commands(app)
register_gateway_command(app)
# Repairs are enqueued through the producers' publisher, so they take every guarantee.
register_reconcile_command(
    app, open_enqueuer=CeleryPublisher.from_settings, open_archive=configured_archive
)
register_simulator_commands(app)
register_top_command(app)
register_status_command(app)
register_retry_command(app)
register_trust_commands(app)
register_archive_commands(app)


@app.command("demo", cls=OneLineErrors, epilog="Exit status: 0 every outcome as shown; 1 not.")
def demo() -> None:
    """Run simulator, worker and producer together and print each result event."""
    raise typer.Exit(run_demo(read_settings(), Console()))


def main() -> None:
    """Console-script entry point."""
    app()
