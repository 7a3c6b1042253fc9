"""``subswitch worker``: run Celery workers on the lanes' queues.

Celery does not drain one queue before another, and a busy slot serves no queue at
all. So when a worker serves the urgent lane together with others, urgent commands
get consumers of their own: ``subswitch worker`` then supervises two Celery worker
processes, one for ``subswitch.urgent`` (``--urgent-concurrency`` slots) and one for
the other lanes (``--concurrency`` slots). An urgent command starts as soon as it
arrives, however deep the bulk backlog and however busy the bulk slots.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Final

import typer
from celery import Celery
from celery.bin.celery import celery as celery_command

from subswitch.broker import check_broker_url
from subswitch.commandline import OneLineErrors, read_settings
from subswitch.contract import Lane
from subswitch.logs import LogFormat
from subswitch.settings import Settings
from subswitch.urls import resolve_endpoints
from worker.bootstrap import DEFAULT_CONCURRENCY, check_runtime, create_app, start_or_refuse
from worker.observing import Serving, start_supervisor

DEFAULT_URGENT_CONCURRENCY = 8
WORKER_EPILOG: Final = (
    "Exit status: 0 stopped; 2 bad option or configuration (nothing started); "
    "3 the embedded broker and store could not start; else the Celery worker's own."
)
_PR_SET_PDEATHSIG = 1
#: The normal/bulk worker yields the CPU to the urgent one: on a busy machine an
#: urgent command must not queue for a core behind bulk work either. The scheduler
#: weighs threads, not processes: at nice 10 (weight 110 against 1024 at 0) even nine
#: runnable bulk threads weigh less than the urgent one.
_MAIN_NICENESS = 10


#: Celery's log levels (any case on the command line).
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class ConsumerPlan:
    """One Celery worker process: its name suffix, lanes and slots."""

    suffix: str | None
    lanes: tuple[Lane, ...]
    concurrency: int


def parse_lanes(value: str) -> list[Lane]:
    """``"urgent,bulk"`` to lanes; a one-line error names an unknown lane."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    known = {lane.value: lane for lane in Lane}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        choices = ", ".join(known)
        raise typer.BadParameter(
            f"unknown lane(s) {', '.join(unknown) or '(none)'}; use {choices}",
            param_hint="'--lanes'",
        )
    return [known[name] for name in dict.fromkeys(names)]


def parse_loglevel(value: str) -> str:
    """``"info"`` to ``"INFO"``; a one-line error names an unknown level (Celery's own
    check would end in a traceback)."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise typer.BadParameter(
            f"unknown level {value!r}; use {', '.join(LOG_LEVELS)}", param_hint="'--loglevel'"
        )
    return level


def plan_consumers(
    lanes: list[Lane], *, concurrency: int, urgent_concurrency: int
) -> list[ConsumerPlan]:
    """Urgent gets a process of its own whenever it shares a worker with other lanes."""
    others = tuple(lane for lane in lanes if lane is not Lane.URGENT)
    if Lane.URGENT not in lanes or not others:
        return [ConsumerPlan(None, tuple(lanes), concurrency)]
    return [
        ConsumerPlan("urgent", (Lane.URGENT,), urgent_concurrency),
        ConsumerPlan("main", others, concurrency),
    ]


def worker(
    *,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Threads for the normal/bulk lanes.")
    ] = DEFAULT_CONCURRENCY,
    urgent_concurrency: Annotated[
        int,
        typer.Option(min=1, help="Threads reserved for the urgent lane (when it shares a worker)."),
    ] = DEFAULT_URGENT_CONCURRENCY,
    lanes: Annotated[
        str, typer.Option("--lanes", help="Comma-separated lanes to serve: urgent,normal,bulk.")
    ] = "urgent,normal,bulk",
    loglevel: Annotated[
        str,
        typer.Option(
            "--loglevel", "-l", callback=parse_loglevel, help=f"Log level: {', '.join(LOG_LEVELS)}."
        ),
    ] = "INFO",
    hostname: Annotated[
        str | None, typer.Option("--hostname", "-n", help="Node name, e.g. w1@%h.")
    ] = None,
    metrics_dir: Annotated[
        Path | None,
        typer.Option(
            "--metrics-dir", hidden=True, help="(Supervised child) where metrics are written."
        ),
    ] = None,
    events: Annotated[
        bool,
        typer.Option(
            "--events",
            "-E",
            help="Send Celery task events (Flower sees the tasks); as SUBSWITCH_TASK_EVENTS=true.",
        ),
    ] = False,
) -> None:
    """Run a worker (Celery, threads pool) that applies commands upstream."""
    plans = plan_consumers(
        parse_lanes(lanes), concurrency=concurrency, urgent_concurrency=urgent_concurrency
    )
    # Checked here, once, before any child process could report the same mistake twice.
    settings = read_settings()
    if events:
        settings = settings.model_copy(update={"task_events": True})
    if settings.broker_url:
        check_broker_url(settings.broker_url)
    if len(plans) == 1:
        _run_celery(
            plans[0], settings, loglevel=loglevel, hostname=hostname, metrics_dir=metrics_dir
        )
        return
    # Check once here, so a worker that cannot start says so in one line, not one per
    # child; each child still builds (and checks) its own runtime.
    start_or_refuse(lambda: check_runtime(settings))
    raise typer.Exit(_supervise(plans, settings, loglevel=loglevel, hostname=hostname))


def _run_celery(
    plan: ConsumerPlan,
    settings: Settings,
    *,
    loglevel: str,
    hostname: str | None,
    metrics_dir: Path | None = None,
) -> None:
    # One INFO line per HTTP request, and Celery's two per task ("received",
    # "succeeded"), drown the worker's own log and cost CPU at hundreds of commands a
    # second; the result events say the same. --loglevel DEBUG brings them back.
    if loglevel.upper() != "DEBUG":
        for name in ("httpx", "celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)
    app = start_or_refuse(lambda: create_app(settings, metrics_dir=metrics_dir))
    queues = ",".join(lane.queue for lane in plan.lanes)
    # Celery's banner is not a log line: JSON logs stay one object per line without it.
    argv = ["--quiet"] if settings.log_format is LogFormat.JSON else []
    argv += [
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(plan.concurrency),
        "--queues",
        queues,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    if settings.task_events:
        argv.append("--task-events")
    status = _start_celery(app, argv)
    if status:
        raise typer.Exit(status)


def _start_celery(app: Celery, argv: list[str]) -> int:
    """``app.worker_main(argv)``, returning the worker's exit status.

    ``worker_main`` (``app.start``) drops it, so a worker that refused to start would
    exit 0 under a supervisor that trusts the status.
    """
    celery_command.params[0].default = app
    try:
        status = celery_command.main(args=argv, standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    return status if isinstance(status, int) else 0


def child_hostname(hostname: str | None, suffix: str) -> str:
    """``w1@%h`` and ``urgent`` give ``w1-urgent@%h``; no hostname gives ``subswitch-urgent@%h``."""
    name, _, host = (hostname or "subswitch@%h").partition("@")
    return f"{name}-{suffix}@{host or '%h'}"


def _supervise(
    plans: list[ConsumerPlan], settings: Settings, *, loglevel: str, hostname: str | None
) -> int:
    """Run one child per plan until one ends; with a metrics port, serve for both."""
    events = settings.task_events
    if settings.metrics_port is None:
        return _watch(
            [_spawn(plan, loglevel=loglevel, hostname=hostname, events=events) for plan in plans]
        )
    # The children's metrics (prometheus_client's multiprocess mode) and readiness go
    # to a directory of this invocation's own, removed when it ends.
    metrics_dir = Path(tempfile.mkdtemp(prefix="subswitch-metrics-"))
    children: list[subprocess.Popen[bytes]] = []
    try:
        observing = start_or_refuse(
            lambda: start_supervisor(
                serving=Serving(settings.metrics_host, settings.metrics_port or 0),
                metrics_dir=metrics_dir,
                endpoints=resolve_endpoints(settings),
                children=lambda: _states(plans, children),
            )
        )
        try:
            children.extend(
                _spawn(
                    plan,
                    loglevel=loglevel,
                    hostname=hostname,
                    events=events,
                    metrics_dir=metrics_dir,
                )
                for plan in plans
            )
            return _watch(children)
        finally:
            observing.stop()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _states(
    plans: list[ConsumerPlan], children: list[subprocess.Popen[bytes]]
) -> list[tuple[str, int, bool]]:
    """``(name, pid, running)`` per planned child; one not spawned yet has pid 0 (and so
    no readiness report)."""
    states = []
    for index, plan in enumerate(plans):
        child = children[index] if index < len(children) else None
        running = child is None or child.poll() is None
        states.append((plan.suffix or "worker", child.pid if child else 0, running))
    return states


def _watch(children: list[subprocess.Popen[bytes]]) -> int:
    """Forward stop signals to the children; when one ends, end the others."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    # SIGHUP: each worker re-reads its policy file (SUBSWITCH_POLICY_FILE).
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(signum, forward)
    # When one worker ends, so does the whole: a supervisor restarts both as one unit.
    _, status = os.wait()
    forward(signal.SIGTERM, None)
    for child in children:
        child.wait()
    return os.waitstatus_to_exitcode(status) or max(child.returncode or 0 for child in children)


def _spawn(
    plan: ConsumerPlan,
    *,
    loglevel: str,
    hostname: str | None,
    events: bool,
    metrics_dir: Path | None = None,
) -> subprocess.Popen[bytes]:
    lanes = ",".join(lane.value for lane in plan.lanes)
    argv = [
        sys.executable,
        "-m",
        "subswitch",
        "worker",
        "--lanes",
        lanes,
        "--concurrency",
        str(plan.concurrency),
        "--loglevel",
        loglevel,
        "--hostname",
        child_hostname(hostname, plan.suffix or "worker"),
    ]
    env = None
    if metrics_dir is not None:
        argv += ["--metrics-dir", str(metrics_dir)]
        # prometheus_client reads it at import: each child writes its own files there.
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    if events:
        argv.append("--events")
    niceness = 0 if Lane.URGENT in plan.lanes else _MAIN_NICENESS
    return subprocess.Popen(argv, env=env, preexec_fn=lambda: _prepare_child(niceness))  # noqa: S603, PLW1509


def _prepare_child(niceness: int) -> None:
    with contextlib.suppress(OSError):
        os.nice(niceness)
    # Linux: a SIGKILLed supervisor takes its workers along instead of orphaning them.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def register(app: typer.Typer) -> None:
    """Add ``worker`` to the ``subswitch`` CLI."""
    app.command("worker", cls=OneLineErrors, epilog=WORKER_EPILOG)(worker)
