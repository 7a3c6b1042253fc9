"""Log output: text (the default) or one JSON object per line (``SUBSWITCH_LOG_FORMAT``).

Configured once per process at its entry point (:func:`configure_logging`; the worker
through Celery's ``setup_logging`` signal, so Celery does not install handlers of its
own). While a command is handled, :func:`log_context` puts its ``command_id``,
``correlation_id``, ``lane`` and ``target`` (and, as they become known, ``attempt``
and ``outcome``) on every line logged in that thread: as JSON keys, or as
``key=value`` pairs after a text line. Every line is passed through
:func:`~subswitch.redact.redact_text` last, so a secret that slipped into a message
is masked in either format.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TextIO

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from subswitch.redact import redact_text


class LogFormat(StrEnum):
    """What a log line looks like."""

    TEXT = "text"
    JSON = "json"


#: The per-command fields, in the order a text line shows them.
FIELDS: Final = ("command_id", "correlation_id", "lane", "target", "attempt", "outcome")
#: Celery's own default line, so text logs look as they always did.
TEXT_FORMAT: Final = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
HANDLER_NAME: Final = "subswitch"
_EMPTY: Final[MappingProxyType[str, Any]] = MappingProxyType({})
_context: ContextVar[MappingProxyType[str, Any]] = ContextVar("subswitch_log", default=_EMPTY)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (``None`` values left out) to every line logged inside the block."""
    token = _context.set(_merged(fields))
    try:
        yield
    finally:
        _context.reset(token)


def add_log_context(**fields: Any) -> None:
    """Add ``fields`` to the current :func:`log_context` (until that block ends)."""
    _context.set(_merged(fields))


def current_log_context() -> dict[str, Any]:
    """The fields lines get now (a copy)."""
    return dict(_context.get())


def _merged(fields: dict[str, Any]) -> MappingProxyType[str, Any]:
    merged = dict(_context.get())
    merged.update((key, value) for key, value in fields.items() if value is not None)
    return MappingProxyType(merged)


class ContextFilter(logging.Filter):
    """Puts the current :func:`log_context` fields on each record (``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record."""
        for key, value in _context.get().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """Celery's text line, then ``[command_id=... lane=...]`` where the fields apply."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """One line (a traceback keeps its own lines), secrets masked."""
        line = super().format(record)
        fields = record.__dict__
        pairs = " ".join(f"{key}={fields[key]}" for key in FIELDS if key in fields)
        if pairs:
            head, newline, rest = line.partition("\n")
            line = f"{head} [{pairs}]{newline}{rest}"
        return redact_text(line)


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the
    command's fields where they apply, ``exc_info`` for a traceback; secrets masked."""

    def __init__(self) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "processName", "message"],
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "processName": "process",
            },
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """RFC 3339 in UTC with milliseconds, e.g. ``2026-12-01T23:59:59.123Z``."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        """The JSON object, secrets masked."""
        return redact_text(super().format(record))


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (it may be swapped after setup)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""


def formatter(fmt: LogFormat) -> logging.Formatter:
    """The formatter of ``fmt``."""
    return JsonFormatter() if fmt is LogFormat.JSON else TextFormatter()


def configure_logging(
    fmt: LogFormat, *, level: int | str | None = None, logfile: Path | str | None = None
) -> logging.Handler:
    """Send the root logger's lines, in ``fmt``, to stderr (or ``logfile``) at ``level``
    (``None`` keeps the root logger's level: WARNING unless something set another).

    Replaces the handler an earlier call installed (and no other), so calling it again,
    as the worker does once Celery knows the level, is harmless.
    """
    handler: logging.Handler = (
        logging.FileHandler(logfile, encoding="utf-8") if logfile else StderrHandler()
    )
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level)
    # Warnings (Celery's SecurityWarning, deprecations) become log lines too.
    logging.captureWarnings(True)
    return handler
