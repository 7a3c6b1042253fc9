"""``subswitch simulator``: serve the local MasStack stand-in.

With neither ``--token`` nor ``--service-account-file`` it accepts requests without a
token, and every subscription id exists unless ``--subscriptions`` says otherwise, so a
worker and the CLI with no ``SUBSWITCH_*`` variables set work with it out of the box;
given a token or an account, it checks every request's bearer token.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Final, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from subswitch.commandline import ExitCode, OneLineErrors, fail
from subswitch.simulator.accounts import generate_service_account
from subswitch.simulator.config import MAX_ID, Faults, SimulatorConfig
from subswitch.simulator.server import serve

FAULTS_PANEL = "Faults (all /v2 requests; probabilities 0..1)"
AUTH_PANEL = "Authentication"
SIMULATOR_EPILOG: Final = "Exit status: 0 stopped; 2 bad option, or the port cannot be used."
M = TypeVar("M", Faults, SimulatorConfig)


class LogLevel(enum.StrEnum):
    """uvicorn log levels."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


def _fault(field: str, *names: str, **limits: float) -> typer.models.OptionInfo:
    description = Faults.model_fields[field].description
    option: typer.models.OptionInfo = typer.Option(
        *names,
        help=description,
        rich_help_panel=FAULTS_PANEL,
        **limits,  # type: ignore[arg-type]
    )
    return option


def register(app: typer.Typer) -> None:
    """Add this side's commands to the ``subswitch`` CLI."""
    app.command("simulator", cls=OneLineErrors, no_args_is_help=False, epilog=SIMULATOR_EPILOG)(
        simulator
    )


def simulator(
    *,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one (the URL is printed).")
    ] = 8080,
    orgs: Annotated[str, typer.Option(help="Comma-separated org ids.")] = "telco,acme",
    subscriptions: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_ID,
            help="Subscription ids 1..N per org; by default every id the contract allows.",
        ),
    ] = MAX_ID,
    token: Annotated[
        list[str] | None,
        typer.Option(
            help="Static bearer token to accept (repeatable). With no --token and no "
            "--service-account-file, requests need no token.",
            rich_help_panel=AUTH_PANEL,
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Accept requests without a token even with --token or --service-account-file.",
            rich_help_panel=AUTH_PANEL,
        ),
    ] = False,
    service_account_file: Annotated[
        list[Path] | None,
        typer.Option(
            help="Trust this service account (repeatable); created if missing, in a folder "
            "that exists.",
            rich_help_panel=AUTH_PANEL,
        ),
    ] = None,
    token_ttl: Annotated[
        int, typer.Option(min=1, help="Access token lifetime (s).", rich_help_panel=AUTH_PANEL)
    ] = 3600,
    token_audience: Annotated[
        str | None,
        typer.Option(help="Require this assertion audience.", rich_help_panel=AUTH_PANEL),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault random stream.")] = None,
    write_log_cap: Annotated[int, typer.Option(min=1, help="Write-log entries kept.")] = 1_000_000,
    log_level: Annotated[LogLevel, typer.Option(help="Server log level.")] = LogLevel.info,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request (slow).")
    ] = False,
    latency_ms: Annotated[float, _fault("latency_ms", min=0)] = 0.0,
    jitter_ms: Annotated[float, _fault("jitter_ms", min=0)] = 0.0,
    p_429: Annotated[float, _fault("p_429", min=0, max=1)] = 0.0,
    p_429_retry_after: Annotated[float, _fault("p_429_retry_after", min=0, max=1)] = 1.0,
    retry_after_s: Annotated[int, _fault("retry_after_s", min=0)] = 1,
    retry_after_http_date: Annotated[
        bool, _fault("retry_after_http_date", "--retry-after-http-date")
    ] = False,
    p_500: Annotated[float, _fault("p_500", min=0, max=1)] = 0.0,
    p_502: Annotated[float, _fault("p_502", min=0, max=1)] = 0.0,
    p_503: Annotated[float, _fault("p_503", min=0, max=1)] = 0.0,
    p_504: Annotated[float, _fault("p_504", min=0, max=1)] = 0.0,
    p_slow: Annotated[float, _fault("p_slow", min=0, max=1)] = 0.0,
    slow_ms: Annotated[float, _fault("slow_ms", min=0)] = 15_000.0,
    p_drop: Annotated[float, _fault("p_drop", min=0, max=1)] = 0.0,
    p_lost_response: Annotated[float, _fault("p_lost_response", min=0, max=1)] = 0.0,
    p_late_apply: Annotated[float, _fault("p_late_apply", min=0, max=1)] = 0.0,
    late_apply_ms: Annotated[float, _fault("late_apply_ms", min=0)] = 5_000.0,
    late_apply_targets: Annotated[
        list[str] | None, _fault("late_apply_targets", "--late-apply-target")
    ] = None,
) -> None:
    """Serve the local MasStack customers API stand-in (with fault injection)."""
    # One option per Faults field, named like it: pass them all on by name.
    options = dict(locals())
    options["late_apply_targets"] = tuple(late_apply_targets or ())
    faults = _build(Faults, **{name: options[name] for name in Faults.model_fields})
    config = _build(
        SimulatorConfig,
        orgs=tuple(org.strip() for org in orgs.split(",") if org.strip()),
        subscriptions=subscriptions,
        tokens=tuple(token or ()),
        # Tokens are checked only when someone said which to accept.
        auth=bool(token or service_account_file) and not no_auth,
        service_account_files=tuple(_ensure_account(path) for path in service_account_file or ()),
        token_ttl=token_ttl,
        token_audience=token_audience,
        seed=seed,
        faults=faults,
        write_log_cap=write_log_cap,
    )
    _serve(config, host, port, log_level.value, access_log)


def _build(model: type[M], **fields: object) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        _fail(f"invalid {where}: {first['msg']}")


def _ensure_account(path: Path) -> Path:
    if not path.exists() and not path.parent.is_dir():
        # A typo in the folder would otherwise make a new key nobody else holds.
        _fail(f"--service-account-file: no folder {path.parent}; nothing created")
    if not path.exists():
        try:
            generate_service_account(path)
        except OSError as exc:
            _fail(f"cannot create {path}: {exc.strerror or exc}")
        typer.echo(f"generated a new service account in {path} (keep it secret)")
    return path


def _serve(config: SimulatorConfig, host: str, port: int, log_level: str, access_log: bool) -> None:
    try:
        serve(config, host=host, port=port, log_level=log_level, access_log=access_log)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    except ValueError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    fail(message, ExitCode.BAD_INPUT)
