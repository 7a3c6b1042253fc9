"""The first run of each batch, remembered so that a re-run keeps its ``issued_at``.

A row without ``issued_at`` is stamped with one time for the whole batch. Were a
re-run stamped anew, its rows would be the newest intent on their targets and win over
everything issued since the first run (a fraud block among them). So the first run's
time is kept in a small file under the data directory, one per batch id (which names
the batch's command ids: same ids, same time), and a re-run reuses it.

Once that time is older than the retention window, a re-run is refused: the worker
would no longer recognise its commands as duplicates, nor accept them (contract §2.6).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from subswitch.contract import TimeBounds
from subswitch.errors import InvalidInput

_DIRECTORY: Final = "batches"


class BatchExpiredError(InvalidInput):
    """The batch was first run longer ago than the retention window; one line."""


@dataclass(frozen=True)
class BatchRun:
    """When a batch was first run, and whether this is that first run."""

    issued_at: datetime
    first: bool


def first_run(data_dir: Path, batch_id: str, *, now: datetime, bounds: TimeBounds) -> BatchRun:
    """The batch's first-run time: recorded now if this is the first run, else read.

    Raises:
        BatchExpiredError: the first run is older than ``bounds.retention_s``.
        OSError: the record cannot be written or read.
    """
    path = data_dir / _DIRECTORY / f"{batch_id}.json"
    run = _create(path, now) or _read(path)
    if bounds.violation(run.issued_at, now=now) is not None:
        raise BatchExpiredError(
            f"batch {batch_id} was first run at {run.issued_at.isoformat(timespec='seconds')}, "
            f"more than {bounds.retention_s:g} s ago (SUBSWITCH_RETENTION_SECONDS): re-applied "
            "now, its rows would override newer commands; nothing enqueued (to apply the "
            "file again as new commands, give it another --batch-id)"
        )
    return run


def _create(path: Path, now: datetime) -> BatchRun | None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    draft = path.with_suffix(f".{os.getpid()}.tmp")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"issued_at": now.isoformat()}, handle)
    try:
        # A link is created whole or not at all: of two first runs at once, one
        # records its time and the other reads it.
        os.link(draft, path)
    except FileExistsError:
        return None
    finally:
        draft.unlink()
    return BatchRun(issued_at=now, first=True)


def _read(path: Path) -> BatchRun:
    try:
        issued_at = datetime.fromisoformat(json.loads(path.read_text())["issued_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise OSError(f"{path} is not a batch record ({exc}); remove it to start afresh") from None
    return BatchRun(issued_at=issued_at, first=False)
