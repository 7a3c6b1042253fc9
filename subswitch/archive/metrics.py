"""The archive process's own Prometheus metrics (served by whoever serves ``/metrics``).

- ``subswitch_archive_events_total{result}``: events consumed: ``stored`` (new),
  ``duplicate`` (that event id was archived already), ``skipped`` (not a result event).
- ``subswitch_archive_lag_seconds``: now minus the ``completed_at`` of the newest
  archived event (NaN before the first); a growing lag under traffic means the archive
  falls behind.
- ``subswitch_archive_deleted_total``: events deleted by retention.
- ``subswitch_archive_batch_seconds``: time to write one batch.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

EVENTS: Final = Counter(
    "subswitch_archive_events",
    "Result events the archive consumed, by result (stored, duplicate, skipped).",
    ["result"],
)
for _result in ("stored", "duplicate", "skipped"):
    EVENTS.labels(result=_result)  # exported at 0 from the start, so rates have a base
LAG: Final = Gauge(
    "subswitch_archive_lag_seconds",
    "Now minus the completed_at of the newest archived event.",
)
DELETED: Final = Counter(
    "subswitch_archive_deleted", "Archived events deleted after the retention period."
)
BATCH_SECONDS: Final = Histogram(
    "subswitch_archive_batch_seconds",
    "Time to write one batch of events to the archive.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
