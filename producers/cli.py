"""``subswitch`` commands of the producers side: enqueue commands, follow result events.

Every error is one line on stderr, never a traceback; the exit status is one of
:class:`subswitch.commandline.ExitCode` (0 enqueued, or with ``--wait`` applied or
superseded; 1 failed, rejected or expired; 2 bad input, nothing enqueued; 3 broker
unreachable; 4 no result event within ``--timeout``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Annotated, Final

import typer
from rich.console import Console

from producers.commands import (
    Envelope,
    block_status_command,
    service_status_command,
    time_bounds,
)
from producers.events import EventStream
from producers.producer import CommandProducer, store_for
from producers.publisher import CeleryPublisher
from producers.render import EventTable, json_line, summary
from subswitch.commandline import ExitCode, OneLineErrors, fail, read_settings
from subswitch.contract import AnyCommand, Lane, Outcome, ResultEvent
from subswitch.settings import Settings
from subswitch.signing import producer_signer
from subswitch.urls import resolve_broker_url

SUCCESSFUL_OUTCOMES: Final = frozenset({Outcome.APPLIED, Outcome.SUPERSEDED})

_SEND_EPILOG: Final = (
    "Exit status: 0 enqueued (with --wait: applied or superseded); "
    "1 failed, rejected or expired (--wait); "
    "2 bad input or configuration (nothing enqueued); "
    "3 broker unreachable; "
    "4 no result within --timeout (--wait; it is enqueued)."
)
_EVENTS_EPILOG: Final = (
    "Exit status: 0 done (--count reached or --timeout over); 2 bad option or "
    "configuration; 3 broker unreachable; 4 --timeout over before --count events; "
    "130 interrupted."
)

OrgArg = Annotated[str, typer.Argument(help="Organisation id (goes into the upstream URL).")]
SubscriptionArg = Annotated[int, typer.Argument(help="Subscription id, 1 to 2^63-1.")]
ServiceArg = Annotated[int, typer.Argument(help="Service id, 1 to 2^63-1.")]
BlockOpt = Annotated[int, typer.Option("--block-id", help="Barring: 1 or 2.")]
ReasonOpt = Annotated[str | None, typer.Option(help="Why, up to 255 characters.")]
PriorityOpt = Annotated[Lane | None, typer.Option(help="Lane: urgent, normal (default) or bulk.")]
CommandIdOpt = Annotated[
    str | None, typer.Option(help="Idempotency key; a UUID4 unless given.", show_default=False)
]
IssuedAtOpt = Annotated[
    str | None, typer.Option(help="RFC 3339 timestamp with offset; default now.")
]
NotAfterOpt = Annotated[str | None, typer.Option(help="RFC 3339 timestamp: not applied after it.")]
SourceOpt = Annotated[
    str | None, typer.Option(help="Who issues it; default $SUBSWITCH_SOURCE, else subswitch.")
]
CorrelationOpt = Annotated[str | None, typer.Option(help="Your own reference (case id...).")]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="Wait for the result event and print it: exit 0 applied or superseded, "
        "1 failed, rejected or expired, 4 no result within --timeout.",
    ),
]
TimeoutOpt = Annotated[float, typer.Option(min=0, help="Seconds --wait waits.")]


def register(app: typer.Typer) -> None:
    """Add this side's commands to the ``subswitch`` CLI."""
    for name, function in (
        ("block", block),
        ("unblock", unblock),
        ("activate", activate),
        ("deactivate", deactivate),
    ):
        app.command(name, cls=OneLineErrors, epilog=_SEND_EPILOG)(function)
    app.command("events", cls=OneLineErrors, epilog=_EVENTS_EPILOG)(events)


def _block_command(*, active: bool, doc: str) -> Callable[..., None]:
    """The ``block`` (``active=True``) or ``unblock`` command; ``doc`` is its help text."""

    def command(
        *,
        org_id: OrgArg,
        subscription_id: SubscriptionArg,
        block_id: BlockOpt,
        reason: ReasonOpt = None,
        priority: PriorityOpt = None,
        command_id: CommandIdOpt = None,
        issued_at: IssuedAtOpt = None,
        not_after: NotAfterOpt = None,
        source: SourceOpt = None,
        correlation_id: CorrelationOpt = None,
        wait: WaitOpt = False,
        timeout: TimeoutOpt = 30.0,
    ) -> None:
        envelope = Envelope(
            priority=priority,
            command_id=command_id,
            issued_at=issued_at,
            not_after=not_after,
            source=source,
            correlation_id=correlation_id,
        )
        raise typer.Exit(
            _submit(
                lambda default_source: block_status_command(
                    org_id=org_id,
                    subscription_id=subscription_id,
                    block_id=block_id,
                    active=active,
                    reason=reason,
                    default_source=default_source,
                    **envelope,
                ),
                wait=wait,
                timeout=timeout,
            )
        )

    command.__doc__ = doc
    return command


def _service_command(*, active: bool, doc: str) -> Callable[..., None]:
    """The ``activate`` (``active=True``) or ``deactivate`` command; ``doc`` is its help text."""

    def command(
        *,
        org_id: OrgArg,
        subscription_id: SubscriptionArg,
        service_id: ServiceArg,
        priority: PriorityOpt = None,
        command_id: CommandIdOpt = None,
        issued_at: IssuedAtOpt = None,
        not_after: NotAfterOpt = None,
        source: SourceOpt = None,
        correlation_id: CorrelationOpt = None,
        wait: WaitOpt = False,
        timeout: TimeoutOpt = 30.0,
    ) -> None:
        envelope = Envelope(
            priority=priority,
            command_id=command_id,
            issued_at=issued_at,
            not_after=not_after,
            source=source,
            correlation_id=correlation_id,
        )
        raise typer.Exit(
            _submit(
                lambda default_source: service_status_command(
                    org_id=org_id,
                    subscription_id=subscription_id,
                    service_id=service_id,
                    active=active,
                    default_source=default_source,
                    **envelope,
                ),
                wait=wait,
                timeout=timeout,
            )
        )

    command.__doc__ = doc
    return command


block = _block_command(
    active=True, doc="Put a barring on a subscription (ChangeBlockStatus, active=true)."
)
unblock = _block_command(
    active=False, doc="Lift a barring from a subscription (ChangeBlockStatus, active=false)."
)
activate = _service_command(
    active=True, doc="Activate a service of a subscription (ChangeServiceStatus, active=true)."
)
deactivate = _service_command(
    active=False,
    doc="Deactivate a service of a subscription (ChangeServiceStatus, active=false).",
)


def events(
    *,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead of a table.")
    ] = False,
    outcome: Annotated[
        list[Outcome] | None, typer.Option(help="Only these outcomes (repeatable).")
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after N events.")] = None,
    timeout: Annotated[float | None, typer.Option(min=0, help="Stop after S seconds.")] = None,
) -> None:
    """Follow result events as the workers publish them (from now on)."""
    settings = read_settings()
    show = _print_json if as_json else EventTable(Console(highlight=False)).add
    raise typer.Exit(_follow(settings, show, outcome, count, timeout))


def _submit(build: Callable[[str], AnyCommand], *, wait: bool, timeout: float) -> int:
    """Build the command from the default source and enqueue it; the exit status.

    Settings are read first; an invalid command (``InvalidCommandError``) exits
    2 with nothing enqueued, an unreachable broker 3 (both through ``OneLineErrors``).
    """
    settings = read_settings()
    command = build(settings.source)
    return _send(settings, command, wait=wait, timeout=timeout)


def _send(settings: Settings, command: AnyCommand, *, wait: bool, timeout: float) -> int:
    """Send ``command`` (bound to the events first when waiting); the exit status."""
    broker_url = resolve_broker_url(settings)
    with ExitStack() as stack:
        stream = stack.enter_context(EventStream(broker_url=broker_url)) if wait else None
        publisher = CeleryPublisher(
            broker_url=broker_url,
            visibility_timeout=settings.visibility_timeout,
            queue_type=settings.rabbitmq_queue_type,
            delivery_limit=settings.delivery_limit,
            max_message_bytes=settings.max_message_bytes,
            signer=producer_signer(settings),
        )
        producer = stack.enter_context(
            CommandProducer(
                publisher=publisher,
                default_source=settings.source,
                time_bounds=time_bounds(settings),
                store=store_for(settings),
            )
        )
        producer.send(command)
        typer.echo(command.command_id)
        if stream is None:
            return ExitCode.OK
        return _await_result(stream, command.command_id, timeout)


def _await_result(stream: EventStream, command_id: str, timeout: float) -> int:
    event = stream.wait_for({command_id}, timeout).get(command_id)
    if event is None:
        fail(
            f"no result for {command_id} within {timeout:g} s; it is enqueued: "
            f"follow it with `subswitch status {command_id}`",
            ExitCode.TIMEOUT,
        )
    Console(highlight=False, soft_wrap=True).print(summary(event))
    return ExitCode.OK if event.outcome in SUCCESSFUL_OUTCOMES else ExitCode.FAILED


def _follow(
    settings: Settings,
    show: Callable[[ResultEvent], None],
    outcomes: list[Outcome] | None,
    count: int | None,
    timeout: float | None,
) -> int:
    """Print events until ``count`` of them or ``timeout`` s; the exit status."""
    seen = 0
    with EventStream(broker_url=resolve_broker_url(settings), outcomes=outcomes) as stream:
        for event in stream.iter(timeout=timeout):
            show(event)
            seen += 1
            if seen == count:
                return ExitCode.OK
    if count is not None:
        fail(f"{seen} of {count} events within {timeout:g} s", ExitCode.TIMEOUT)
    return ExitCode.OK


def _print_json(event: ResultEvent) -> None:
    typer.echo(json_line(event))  # click.echo flushes: each event shows at once
