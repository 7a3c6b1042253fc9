"""Batch files: read CSV or JSON Lines as a stream, validate every row as a command, chunk.

Nothing here talks to a broker. A batch file is read twice, from disk, a line at a
time (memory stays flat whatever its size):

1. ``check_file`` validates every row, counts them and hashes the bytes: the hash is
   the batch id, so a re-run of the same file yields the same command ids (nothing
   is applied twice) and an edited file yields new ones;
2. ``BatchSource.rows`` reads it again and yields each row's command (or its error),
   which ``chunked`` groups for one broker message each.

A row is validated by the contract's own models: this module only turns text cells
into the values a model expects (``"yes"`` into ``True``, ``"7"`` into ``7``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Final, TypeAlias, TypeVar

from pydantic import ValidationError

from subswitch.contract import (
    AnyCommand,
    ChangeBlockStatus,
    ChangeServiceStatus,
    Lane,
    TimeBounds,
    describe_validation_error,
)
from subswitch.errors import InvalidInput

#: Every column (CSV header) or key (JSON Lines) a row may have.
COLUMNS: Final = (
    "type",
    "org_id",
    "subscription_id",
    "block_id",
    "service_id",
    "active",
    "reason",
    "command_id",
    "issued_at",
    "not_after",
    "source",
    "correlation_id",
    "priority",
    "schema_version",
)
REQUIRED_COLUMNS: Final = ("type", "org_id", "subscription_id", "active")
#: Row errors kept in memory (and printed); the rest are only counted.
MAX_KEPT_ERRORS: Final = 1000
DEFAULT_CHUNK_SIZE: Final = 100
#: Line numbers are zero-padded in generated command ids so that, on one target, the
#: contract's tie-break (``issued_at``, then ``command_id``) follows the file's order.
LINE_DIGITS: Final = 9
BATCH_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

_MODELS: Final[dict[str, type[AnyCommand]]] = {
    "block": ChangeBlockStatus,
    "changeblockstatus": ChangeBlockStatus,
    "service": ChangeServiceStatus,
    "changeservicestatus": ChangeServiceStatus,
}
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})
_BULK: Final = Lane.BULK.value
_KNOWN: Final = frozenset(COLUMNS)
_PROGRESS_EVERY: Final = 1024  # rows between progress callbacks: cheap enough, smooth enough
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")

_T = TypeVar("_T")


class BatchFormat(StrEnum):
    """How a batch file is written."""

    CSV = "csv"
    JSONL = "jsonl"


class BatchFileError(InvalidInput):
    """The file as a whole cannot be used (empty, not UTF-8, bad header...); one line."""


@dataclass(frozen=True, slots=True)
class RowError:
    """Why the row starting on ``line`` is not a valid command."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


#: One data row: its first line number, and its command or why it has none.
Row: TypeAlias = tuple[int, AnyCommand | RowError]
#: Raw fields of one data row, or a reason it could not even be split into fields.
_Record: TypeAlias = tuple[int, dict[str, Any] | str]


def detect_format(path: Path) -> BatchFormat:
    """CSV or JSON Lines, by extension (``.csv``, ``.jsonl``, ``.ndjson``), else by the
    first non-blank byte (``{`` means JSON Lines)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return BatchFormat.CSV
    if suffix in {".jsonl", ".ndjson"}:
        return BatchFormat.JSONL
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return BatchFormat.JSONL if head.startswith(b"{") else BatchFormat.CSV


def file_identity(path: Path) -> tuple[int, int]:
    """``(size, mtime_ns)``: changes when the file is written to."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def generated_command_id(batch_id: str, line: int) -> str:
    """The command id of a row that gives none: ``batch-<batch id>-<line, 9 digits>``."""
    return f"batch-{batch_id}-{line:0{LINE_DIGITS}d}"


class BatchSource:
    """One streaming read of a batch file: UTF-8 lines, hashed and counted as read.

    Each pass over the file is a new ``BatchSource`` (its digest covers one read).
    """

    def __init__(self, path: Path, fmt: BatchFormat | None = None) -> None:
        self.path = path
        self.format = fmt or detect_format(path)
        #: Bytes read so far (for progress).
        self.bytes_read = 0
        self._sha256 = hashlib.sha256()
        self._opened = False
        #: ``(size, mtime_ns)`` of the file when opened: a later pass checks it is the same.
        self.identity: tuple[int, int] | None = None

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the bytes read so far: of the whole file once read."""
        return self._sha256.hexdigest()

    def records(self) -> Iterator[_Record]:
        """Each data row's first line number and fields (or why it has none).

        Raises:
            BatchFileError: empty file, not UTF-8, malformed CSV, bad header.
            RuntimeError: this source was read already.
        """
        if self._opened:
            raise RuntimeError("a BatchSource is read once: make a new one for another pass")
        self._opened = True
        with self.path.open("rb") as handle:
            self.identity = file_identity(self.path)
            lines = self._lines(handle)
            if self.format is BatchFormat.CSV:
                yield from self._csv_records(lines)
            else:
                yield from _jsonl_records(lines)

    def rows(self, builder: RowBuilder) -> Iterator[Row]:
        """Each data row as ``(line, command or RowError)``; see ``records``."""
        for line, fields in self.records():
            if isinstance(fields, str):
                yield line, RowError(line, fields)
            else:
                yield line, builder.build(line, fields)

    def _lines(self, handle: IO[bytes]) -> Iterator[str]:
        for number, raw in enumerate(handle, start=1):
            self._sha256.update(raw)
            try:
                text = raw.decode()
            except UnicodeDecodeError as exc:
                raise BatchFileError(self._not_utf8(number, raw, exc)) from None
            self.bytes_read += len(raw)
            # A BOM (Excel writes one) is not part of the first column's name.
            yield text[1:] if number == 1 and text.startswith("\ufeff") else text

    def _not_utf8(self, number: int, raw: bytes, exc: UnicodeDecodeError) -> str:
        offset = self.bytes_read + exc.start
        hint = " (it looks like UTF-16)" if number == 1 and raw[:2] in _UTF16_BOMS else ""
        return (
            f"{self.path.name} is not UTF-8{hint}: line {number}, byte {offset} "
            f"(0x{raw[exc.start]:02x}); save it as UTF-8"
        )

    def _csv_records(self, lines: Iterator[str]) -> Iterator[_Record]:
        reader = csv.reader(lines, strict=True)
        try:
            header = _csv_header(next(reader, None), self.path)
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(cell.strip() for cell in cells):
                    continue  # blank line
                if len(cells) != len(header):
                    yield line, f"expected {len(header)} fields as in the header, got {len(cells)}"
                else:
                    yield line, dict(zip(header, cells, strict=True))
        except csv.Error as exc:
            raise BatchFileError(f"line {reader.line_num}: malformed CSV: {exc}") from None


def _csv_header(cells: list[str] | None, path: Path) -> list[str]:
    if cells is None or not any(cell.strip() for cell in cells):
        raise BatchFileError(
            f"{path.name} is empty: expected a header line ({','.join(REQUIRED_COLUMNS)},...) "
            "and one command per line"
        )
    header = [cell.strip().lower() for cell in cells]
    expected = f"expected columns: {', '.join(COLUMNS)}"
    if not _KNOWN.intersection(header):
        raise BatchFileError(f"line 1 is not a header (no known column name); {expected}")
    unknown = [name for name in header if name not in _KNOWN]
    if unknown:
        raise BatchFileError(f"line 1: unknown column(s) {', '.join(unknown)}; {expected}")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise BatchFileError(f"line 1: duplicated column(s) {', '.join(duplicated)}")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise BatchFileError(f"line 1: the header lacks column(s) {', '.join(missing)}")
    return header


def _jsonl_records(lines: Iterator[str]) -> Iterator[_Record]:
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            fields = json.loads(text)
        except ValueError as exc:
            yield line, f"not JSON: {exc}"
            continue
        if not isinstance(fields, dict):
            yield line, f"expected a JSON object, got {type(fields).__name__}"
            continue
        unknown = sorted(name for name in fields if name not in _KNOWN)
        if unknown:
            yield line, f"unknown field(s) {', '.join(unknown)}; expected: {', '.join(COLUMNS)}"
        else:
            yield line, fields


@dataclass(frozen=True)
class RowBuilder:
    """Turns a row's fields into a validated bulk command (the contract's models decide).

    ``batch_id`` names the commands of rows without a ``command_id``; ``source`` and
    ``issued_at`` (the run's time) fill the rows that leave them empty. With
    ``bounds``, a row whose ``issued_at`` lies outside them at the run's time is an
    error.
    """

    batch_id: str
    source: str
    issued_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    bounds: TimeBounds | None = None

    def build(self, line: int, fields: dict[str, Any]) -> AnyCommand | RowError:
        """The command of the row on ``line``, or why it is not one."""
        data = _cells(fields)
        model = _MODELS.get(str(data.pop("type", "")).lower())
        if model is None:
            return RowError(line, _bad_type(fields.get("type")))
        priority = data.pop("priority", _BULK)
        if str(priority).lower() != _BULK:
            return RowError(line, f"priority: batches go on the bulk lane only, got {priority!r}")
        data["priority"] = Lane.BULK
        if "command_id" not in data:
            data["command_id"] = generated_command_id(self.batch_id, line)
        data.setdefault("issued_at", self.issued_at)
        data.setdefault("source", self.source)
        try:
            command = model.model_validate(data)
        except ValidationError as exc:
            return RowError(line, describe_validation_error(exc))
        violation = self.bounds and self.bounds.violation(command.issued_at, now=self.issued_at)
        return RowError(line, violation) if violation else command


def _cells(fields: dict[str, Any]) -> dict[str, Any]:
    """The row's fields as the model expects them; empty or null means absent.

    Text that is no boolean or integer stays text, so the model's own message names
    the field. (One plain loop: this runs for every cell of a million-row file.)
    """
    data: dict[str, Any] = {}
    for name, raw in fields.items():
        if raw.__class__ is str:
            value = raw.strip()
            if not value:
                continue
            data[name] = _CONVERTERS[name](value) if name in _CONVERTERS else value
        elif raw is not None:
            # JSON's 1 and 0 are booleans for `active`, as "1" and "0" are in a CSV.
            is_flag = name == "active" and raw.__class__ is int and raw in {0, 1}
            data[name] = bool(raw) if is_flag else raw
    return data


def _to_bool(text: str) -> bool | str:
    lowered = text.lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else text


def _to_int(text: str) -> int | str:
    digits = text[1:] if text[0] in "+-" else text
    return int(text) if digits.isascii() and digits.isdigit() else text


_CONVERTERS: Final[dict[str, Callable[[str], Any]]] = {
    "active": _to_bool,
    **dict.fromkeys(("subscription_id", "block_id", "service_id", "schema_version"), _to_int),
}


def _bad_type(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return "type: Field required"
    return f"type: expected block, service, ChangeBlockStatus or ChangeServiceStatus, got {value!r}"


@dataclass
class BatchCheck:
    """What the validation pass found."""

    digest: str = ""
    identity: tuple[int, int] | None = None
    rows: int = 0
    invalid: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def valid(self) -> int:
        """Rows that are valid commands."""
        return self.rows - self.invalid

    @property
    def batch_id(self) -> str:
        """The default batch id: the first 16 hex digits of the file's SHA-256."""
        return self.digest[:16]


def check_file(
    source: BatchSource,
    *,
    builder: RowBuilder,
    on_invalid: Callable[[RowError], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_kept: int = MAX_KEPT_ERRORS,
) -> BatchCheck:
    """Validate every row of ``source`` (streaming); hash it for the batch id.

    The ``builder``'s batch id does not matter here (any well-formed one will do).
    ``on_invalid`` sees every bad row, kept or not; ``on_progress`` gets the bytes
    read so far, now and then.

    Raises:
        BatchFileError: the file cannot be used at all, or has no rows.
        OSError: the file cannot be read.
    """
    check = BatchCheck()
    for _, result in source.rows(builder):
        check.rows += 1
        if isinstance(result, RowError):
            check.invalid += 1
            if len(check.errors) < max_kept:
                check.errors.append(result)
            if on_invalid is not None:
                on_invalid(result)
        if on_progress is not None and check.rows % _PROGRESS_EVERY == 0:
            on_progress(source.bytes_read)
    if check.rows == 0:
        raise BatchFileError(f"{source.path.name} has no rows: nothing to enqueue")
    check.digest = source.digest
    check.identity = source.identity
    return check


def chunked(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of ``size`` (the last may be shorter), lazily."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
