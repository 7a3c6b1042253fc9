"""Taking result events off ``subswitch.events``, fast enough to keep up.

An ``EventStream`` (the SDK) declares a private queue bound to the exchange; the
events are then read straight off that queue in Redis, up to 500 per round trip,
decoding only what the benchmark needs. ``EventStream``'s own per-message path
(one BRPOP, a kombu message and a pydantic model per event) costs this machine about
0.8 ms of CPU per event, enough to fall behind the workers when they saturate both
cores, which would time the reader instead of subswitch.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import redis

from bench.config import BROKER_URL
from producers.events import EventStream

BATCH = 500


@dataclass
class Seen:
    """When each command's first event arrived here, and its worker-side time."""

    received: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0

    @property
    def count(self) -> int:
        """Commands with an event."""
        return len(self.received)

    def last_received(self) -> float | None:
        """Wall time of the last first-event received."""
        return max(self.received.values(), default=None)

    def add(self, raw: bytes, now: float) -> None:
        """Record one kombu message (a CloudEvent, base64 in a JSON envelope)."""
        event = json.loads(base64.b64decode(json.loads(raw)["body"]))
        data = event["data"]
        command_id = data.get("command_id") or event["id"]
        if command_id in self.received:
            self.duplicates += 1
            return
        self.received[command_id] = now
        self.completed[command_id] = datetime.fromisoformat(data["completed_at"]).timestamp()
        self.outcomes[data["outcome"]] = self.outcomes.get(data["outcome"], 0) + 1


class EventReader:
    """Reads the events that an open ``EventStream``'s queue receives."""

    def __init__(self, stream: EventStream) -> None:
        self._queue = stream.queue_name
        self._redis = redis.Redis.from_url(BROKER_URL)

    def poll(self, seen: Seen) -> int:
        """Take what is there (oldest first) into ``seen``; how many were taken."""
        raw: list[bytes] | None = self._redis.rpop(self._queue, BATCH)  # type: ignore[assignment]
        now = time.time()
        for message in raw or []:
            seen.add(message, now)
        return len(raw or [])


def collect(
    stream: EventStream, seen: Seen, *, until: Callable[[Seen], bool], timeout: float
) -> bool:
    """Take events into ``seen`` until ``until(seen)`` or ``timeout``; True if satisfied."""
    reader = EventReader(stream)
    deadline = time.monotonic() + timeout
    while not until(seen):
        if time.monotonic() > deadline:
            return False
        if not reader.poll(seen):
            time.sleep(0.002)  # an empty queue: poll again soon, bounded by the deadline
    return True
