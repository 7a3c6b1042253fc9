"""``subswitch dead list|show|replay|purge``: the messages kept in ``subswitch.dead``.

Reading removes nothing and reorders nothing; a letter leaves the queue only once the
action on it succeeded (its replay confirmed by the broker, or its purge asked for).
Exit status: 0 done; 1 a letter was refused (``replay``: still invalid, left in
place); 2 bad input (an unknown or ambiguous id, ``purge`` without ``--yes`` and no
terminal to ask on); 3 broker or store unreachable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from producers.commands import time_bounds
from producers.publisher import CeleryPublisher
from subswitch.commandline import ExitCode, OneLineErrors, fail, read_settings
from subswitch.contract import Lane
from subswitch.dead_operations import DeadLetterOperator, RedisReplayMarks, Replay
from subswitch.deadletters import (
    DeadLetter,
    SignedCommand,
    counts_by_reason,
    describe_body,
    open_dead_letter_queue,
)
from subswitch.redis_client import redis_client
from subswitch.settings import Settings
from subswitch.text import safe_line
from subswitch.urls import resolve_broker_url, resolve_endpoints

_EPILOG: Final = (
    "Exit status: 0 done; 1 a letter refused (replay: still invalid, left in place); "
    "2 bad input (unknown id; purge without --yes off a terminal); "
    "3 broker or store unreachable."
)

_PIPED_WIDTH: Final = 200

JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document instead of a table.")]
IdsArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dead letter ids (as `dead list` shows them, or a unique prefix).",
                   show_default=False),
]  # fmt: skip
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter.")]

dead_app = typer.Typer(
    name="dead",
    help="List, show, replay or purge the messages kept in subswitch.dead.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add ``subswitch dead`` to the ``subswitch`` CLI."""
    for name, function in (("list", list_), ("show", show), ("replay", replay), ("purge", purge)):
        dead_app.command(name, cls=OneLineErrors, epilog=_EPILOG)(function)
    app.add_typer(dead_app, name="dead")


@contextmanager
def _operator(settings: Settings, broker_url: str | None = None) -> Iterator[DeadLetterOperator]:
    queue = open_dead_letter_queue(broker_url or resolve_broker_url(settings))
    try:
        yield DeadLetterOperator(queue=queue, bounds=time_bounds(settings))
    finally:
        queue.close()


def list_(as_json: JsonOpt = False) -> None:
    """Every dead letter, oldest first: id, command id, reason, when, size; counts by reason."""
    with _operator(read_settings()) as operator:
        letters = operator.letters()
    counts = counts_by_reason(letters)
    if as_json:
        document = {"letters": [letter.summary() for letter in letters], "by_reason": counts}
        typer.echo(json.dumps(document, indent=2))
        return
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:  # piped: whole lines (scripts use --json)
        console = Console(highlight=False, width=_PIPED_WIDTH)
    table = Table(box=None)
    for column in ("ID", "COMMAND_ID", "DEAD SINCE", "SIZE"):
        table.add_column(column, no_wrap=True, justify="right" if column == "SIZE" else "left")
    table.add_column("REASON")
    for letter in letters:
        when = f"{letter.dead_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}" if letter.dead_at else "-"
        cells = (letter.id, letter.command_id or "-", when, f"{letter.size:,}", letter.reason)
        table.add_row(*(Text(safe_line(cell)) for cell in cells))  # never markup
    console.print(table)
    by_reason = ", ".join(f"{kind} {count}" for kind, count in counts.items())
    total = f"{len(letters)} dead letter(s)" + (f": {by_reason}" if by_reason else "")
    console.print(Text(safe_line(total)))


def show(letter_id: Annotated[str, typer.Argument(help="Dead letter id or prefix.")],
         as_json: JsonOpt = False) -> None:  # fmt: skip
    """One dead letter: its headers and its body (indented when it is JSON)."""
    with _operator(read_settings()) as operator:
        letter = operator.find(letter_id)
    if as_json:
        typer.echo(json.dumps(_shown(letter), indent=2, default=str))
        return
    console = Console(highlight=False, soft_wrap=True)
    for label, value in (
        ("id", letter.id), ("command_id", letter.command_id or "-"), ("reason", letter.reason),
        ("size", f"{letter.size:,} bytes"), ("content type", letter.content_type or "-"),
    ):  # fmt: skip
        console.print(f"{label}: {safe_line(value)}", markup=False)
    console.print("headers:")
    for name, value in sorted(letter.headers.items()):
        console.print(f"  {name}: {_header(value)}", markup=False)
    console.print("body:")
    console.print(describe_body(letter), markup=False)


def replay(ids: IdsArg = None, every: AllOpt = False, as_json: JsonOpt = False) -> None:
    """Send dead letters' commands back to their lane, unchanged (same command id).

    A letter still invalid (by the contract, or too old to be told from a duplicate)
    is refused with the reason and stays; a replayed one leaves subswitch.dead once
    the broker confirmed it.
    """
    chosen = _chosen(ids, every)
    settings = read_settings()
    endpoints = resolve_endpoints(settings)  # the store's marks must be cleared too
    store = redis_client(endpoints.store_url, timeout_s=5)
    publisher = CeleryPublisher.from_settings(settings)
    try:
        with _operator(settings, endpoints.broker_url) as operator, _progress(as_json) as tick:
            results = operator.replay(
                chosen, publish=_counted(_publisher_of(publisher), tick),
                marks=RedisReplayMarks(client=store),
            )  # fmt: skip
    finally:
        publisher.close()
        store.close()
    _report_replays(results, as_json=as_json)
    if any(not result.replayed for result in results):
        raise typer.Exit(ExitCode.FAILED)


def purge(
    ids: IdsArg = None,
    every: AllOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters for good (asks first, unless --yes)."""
    chosen = _chosen(ids, every)
    with _operator(read_settings()) as operator:
        if not yes:
            _confirm(operator, chosen)
        removed = operator.purge(chosen)
    if as_json:
        typer.echo(json.dumps({"purged": [letter.id for letter in removed]}, indent=2))
        return
    typer.echo(f"purged {len(removed)} dead letter(s)")


def _chosen(ids: list[str] | None, every: bool) -> list[str] | None:
    if every and ids:
        fail("give dead letter ids or --all, not both", ExitCode.BAD_INPUT)
    if not every and not ids:
        fail("give one or more dead letter ids, or --all", ExitCode.BAD_INPUT)
    return None if every else ids


def _confirm(operator: DeadLetterOperator, chosen: list[str] | None) -> None:
    console = Console()
    if not console.is_terminal or not console.is_interactive:
        fail("purge asks for confirmation: no terminal to ask on, so give --yes", 2)
    count = len(operator.letters()) if chosen is None else len(chosen)
    if not typer.confirm(f"Delete {count} dead letter(s) for good?", default=False):
        fail("nothing purged", ExitCode.FAILED)


def _publisher_of(publisher: CeleryPublisher) -> Callable[[Sequence[SignedCommand]], None]:
    def publish(commands: Sequence[SignedCommand]) -> None:
        # A chunk nobody signed goes back as a chunk; signed commands keep their own
        # signatures (a chunk's signature would be this operator's, not the producer's).
        unsigned = all(signed.signature is None for signed in commands)
        if unsigned and len(commands) > 1 and all(c.command.lane is Lane.BULK for c in commands):
            publisher.publish_batch([signed.command for signed in commands])
            return
        for command, signature in commands:
            publisher.publish(command, signature=signature)

    return publish


def _counted(
    publish: Callable[[Sequence[SignedCommand]], None], tick: Callable[[], None]
) -> Callable[[Sequence[SignedCommand]], None]:
    def counted(commands: Sequence[SignedCommand]) -> None:
        publish(commands)
        tick()

    return counted


@contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[], None]]:
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(),
        console=console, disable=quiet or not console.is_terminal, transient=True,
    )  # fmt: skip
    with progress:
        task = progress.add_task("replay", total=None)
        yield lambda: progress.advance(task)


def _report_replays(results: list[Replay], *, as_json: bool) -> None:
    if as_json:
        rows = [
            {"id": r.letter.id, "command_ids": list(r.command_ids), "replayed": r.replayed,
             "refused": r.refused}
            for r in results
        ]  # fmt: skip
        typer.echo(json.dumps({"replays": rows}, indent=2))
        return
    for result in results:
        if result.replayed:
            typer.echo(f"replayed {result.letter.id}: {', '.join(result.command_ids)}")
        else:
            typer.echo(f"refused {result.letter.id}: {result.refused} (left in subswitch.dead)")
    done = sum(result.replayed for result in results)
    typer.echo(f"{done} replayed, {len(results) - done} refused")


def _shown(letter: DeadLetter) -> dict[str, Any]:
    try:
        body: Any = json.loads(letter.body)
    except ValueError:
        body = letter.body.decode("utf-8", "backslashreplace")
    return {**letter.summary(), "content_type": letter.content_type,
            "headers": dict(letter.headers), "body": body}  # fmt: skip


def _header(value: Any) -> str:
    # Header values come from whoever sent the message: one escaped line each.
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return safe_line(text)
