"""The log of every PATCH attempt, applied or not, in arrival order.

A record is appended when the request arrives (``time``) and completed when it is answered,
so a record with ``status`` null and ``fault`` null is still in flight; ``applied_at`` is
when the write changed the state (null if it never did), which for a late-applied write
can be long after its client gave up. Records hold on to
objects the server already allocated (the path string, the raw body), which keeps a
million of them affordable; the JSON view is built only when the admin API asks.
"""

from __future__ import annotations

import json
from collections import deque
from itertools import islice


class WriteRecord:
    """One PATCH attempt."""

    __slots__ = (
        "applied",
        "applied_at",
        "auth_roles",
        "body",
        "fault",
        "idempotency_key",
        "item_id",
        "kind",
        "method",
        "org_id",
        "path",
        "request_id",
        "seq",
        "status",
        "subscription_id",
        "time",
    )

    def __init__(
        self,
        time: float,
        method: str,
        path: str,
        *,
        target: tuple[str, int | None, str, int | None],
        body: bytes,
        headers: tuple[str | None, str | None, str | None],
    ) -> None:
        self.seq = 0
        self.time = time
        self.method = method
        self.path = path
        self.org_id, self.subscription_id, self.kind, self.item_id = target
        self.body = body
        self.idempotency_key, self.request_id, self.auth_roles = headers
        self.status: int | None = None
        self.applied = False
        self.applied_at: float | None = None
        self.fault: str | None = None

    def to_json(self) -> dict[str, object]:
        """The record as ``GET /admin/writes`` shows it."""
        return {
            "seq": self.seq,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "org_id": self.org_id,
            "subscription_id": self.subscription_id,
            "kind": self.kind,
            "id": self.item_id,
            "body": _decode_body(self.body),
            "idempotency_key": self.idempotency_key,
            "request_id": self.request_id,
            "auth_roles": self.auth_roles,
            "status": self.status,
            "applied": self.applied,
            "applied_at": self.applied_at,
            "fault": self.fault,
        }


class WriteLog:
    """A bounded, append-only log; the oldest records go first when it is full.

    Sequence numbers start at 1 and keep counting across :meth:`clear`, so a reader
    polling with ``since`` never mistakes new records for ones it has seen.
    """

    def __init__(self, cap: int) -> None:
        self._records: deque[WriteRecord] = deque(maxlen=cap)
        self._last_seq = 0

    def append(self, record: WriteRecord) -> None:
        """Number the record and keep it."""
        self._last_seq += 1
        record.seq = self._last_seq
        self._records.append(record)

    def page(self, since: int, limit: int) -> tuple[list[WriteRecord], int]:
        """Up to ``limit`` records with ``seq > since``, and the ``since`` for the next page."""
        records = self._records
        if not records or since >= self._last_seq:
            return [], min(since, self._last_seq)
        start = max(0, since - records[0].seq + 1)
        found = list(islice(records, start, start + limit))
        return found, found[-1].seq if found else since

    def clear(self) -> None:
        """Forget every record (the sequence goes on)."""
        self._records.clear()


def _decode_body(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")
