"""The default way to enqueue a CSV file: one ``delay()`` per row.

Run: ``python -m bench.baseline.enqueue_csv FILE``. ``csv.DictReader`` streams the
file; each row becomes the command dict the default task takes, sent as its own
message on the ``celery`` queue. No validation beyond ``int()``/``bool``.
"""

from __future__ import annotations

import csv
import sys
import uuid
from datetime import UTC, datetime

from bench.baseline.default_task import change_status


def main(path: str) -> int:
    """Enqueue every row of ``path``; print how many."""
    sent = 0
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            change_status.delay(
                {
                    "type": "ChangeBlockStatus",
                    "command_id": str(uuid.uuid4()),
                    "org_id": row["org_id"],
                    "subscription_id": int(row["subscription_id"]),
                    "block_id": int(row["block_id"]),
                    "active": row["active"] == "true",
                    "reason": row["reason"] or None,
                    "issued_at": datetime.now(UTC).isoformat(),
                }
            )
            sent += 1
    print(f"enqueued {sent} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
