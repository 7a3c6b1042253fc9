"""What every ``subswitch`` command shares: exit codes, one-line errors, reading settings.

A user mistake (an unknown command or option, a bad value, a bad ``SUBSWITCH_*``
variable) and every error of the tree (:mod:`subswitch.errors`) end a command with one
line, ``error: <what>``, on stderr, and the exit status below; never a traceback or a
boxed panel. :class:`OneLineGroup` does it at the CLI's root, :class:`OneLineErrors` for
each command (so a role's commands behave the same when mounted elsewhere); both
through :func:`exit_for`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click
import typer
from pydantic import ValidationError
from typer._click.exceptions import NoArgsIsHelpError
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import Abort, TyperException

from subswitch.errors import (
    ConfigurationError,
    InvalidInput,
    PermanentError,
    SubswitchError,
    UnavailableError,
    settings_error,
)
from subswitch.settings import ProcessSettings, Settings

if TYPE_CHECKING:
    # typer >= 0.2x vendors click: its commands take and make typer's own Context.
    from typer._click import Context as ClickContext


class ExitCode(IntEnum):
    """The exit status of every ``subswitch`` command."""

    #: Done (with ``--wait``: the outcome is ``applied`` or ``superseded``).
    OK = 0
    #: With ``--wait``: an outcome is ``failed``, ``rejected`` or ``expired``; or
    #: another error that is neither bad input nor an unreachable service.
    FAILED = 1
    #: Bad input: an unknown command or option, a bad value or configuration; nothing done.
    BAD_INPUT = 2
    #: The broker or the store could not be reached, or the connection was lost.
    UNAVAILABLE = 3
    #: Timed out waiting (``--wait``, ``events --count``); what was sent stays enqueued.
    TIMEOUT = 4
    #: Interrupted (Ctrl-C).
    INTERRUPTED = 130


#: One line for epilogs and the README.
EXIT_STATUS_HELP: Final = (
    "Exit status: 0 done; 1 failed, rejected or expired (--wait); 2 bad input or "
    "configuration (nothing done); 3 broker or store unreachable; 4 timed out waiting "
    "(still enqueued); 130 interrupted."
)

# typer's vendored click raises TyperException subclasses; click's own (inside Celery's
# worker command, or an older typer) raises click's.
_USAGE_ERRORS: Final = (TyperException, click.ClickException)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(text.split())


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def read_process_settings() -> ProcessSettings:
    """How this process logs and traces; a bad variable raises :class:`ConfigurationError`."""
    try:
        return ProcessSettings()
    except ValidationError as exc:
        raise settings_error(exc) from None


def read_settings() -> Settings:
    """The ``SUBSWITCH_*`` settings; a bad variable raises :class:`ConfigurationError`."""
    try:
        return Settings()
    except ValidationError as exc:
        raise settings_error(exc) from None


def exit_for(exc: SubswitchError) -> tuple[str, ExitCode]:
    """The one-line message and exit status of an error of the tree."""
    if isinstance(exc, ConfigurationError):
        return f"invalid configuration: {exc}", ExitCode.BAD_INPUT
    if isinstance(exc, InvalidInput):
        return str(exc), ExitCode.BAD_INPUT
    if isinstance(exc, UnavailableError):
        return str(exc), ExitCode.UNAVAILABLE
    if isinstance(exc, PermanentError):
        return str(exc), ExitCode.FAILED
    return str(exc), ExitCode.UNAVAILABLE


def _usage_exit(exc: TyperException | click.ClickException) -> int:
    """Show a usage error as one line (a bare ``subswitch`` shows the help instead)."""
    if isinstance(exc, NoArgsIsHelpError):
        exc.show()
        return exc.exit_code
    typer.echo(f"error: {one_line(exc.format_message())}", err=True)
    return exc.exit_code


class OneLineErrors(TyperCommand):
    """A command whose usage errors and errors of the tree are one line on stderr."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: ClickContext | None = None,
        **extra: Any,
    ) -> ClickContext:
        """Parse arguments; a usage error ends the process with one line."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _USAGE_ERRORS as exc:
            raise typer.Exit(_usage_exit(exc)) from None

    def invoke(self, ctx: ClickContext) -> Any:
        """Run the command; an error of the tree ends it with one line."""
        try:
            return super().invoke(ctx)
        except SubswitchError as exc:
            fail(*exit_for(exc))


class OneLineGroup(TyperGroup):
    """The CLI's root: whatever a command or the parser raises for a user mistake, or
    any error of the tree, ends the process with one line and its exit status."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; exits (``standalone_mode``) or returns the exit status."""
        code = self._run(args, prog_name, complete_var, windows_expand_args, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        windows_expand_args: bool,
        **extra: Any,
    ) -> int:
        try:
            result = super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )
        except _USAGE_ERRORS as exc:
            return _usage_exit(exc)
        except SubswitchError as exc:
            message, code = exit_for(exc)
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            message, code = exit_for(settings_error(exc))
        except (Abort, click.exceptions.Abort, KeyboardInterrupt):
            message, code = "interrupted", ExitCode.INTERRUPTED
        else:
            return result if isinstance(result, int) else ExitCode.OK
        typer.echo(f"error: {one_line(message)}", err=True)
        return code
