"""Retry policy: when a failed attempt is tried again, and after how long.

The one place that decides. Delays use exponential backoff with full jitter,
honour the upstream's ``Retry-After``, and never exceed ``max_delay_s``, which is
kept well inside the broker's redelivery window: a delayed retry waits unacked in a
worker, and a wait longer than the window would make the broker hand the message to
another worker as well.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from worker.upstream.errors import TransientError

#: Fraction of the broker's redelivery window a retry delay may use at the most;
#: the rest covers the attempt itself and the time the message waited in a prefetch.
WINDOW_SHARE = 0.25


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and ``not_after``.

    ``max_attempts`` comes from ``Settings.max_attempts``.
    """

    max_attempts: int
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0
    #: How long a delivery that found its target busy waits before looking again.
    busy_delay_s: float = 0.2
    #: How long an older command waits before looking again at a target where a newer
    #: command's result is unknown (it retries, settles, or its delivery died).
    unresolved_delay_s: float = 1.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def within_window(cls, *, max_attempts: int, redelivery_window_s: float) -> RetryPolicy:
        """A policy whose delays stay inside the broker's redelivery window."""
        return cls(
            max_attempts=max_attempts, max_delay_s=min(60.0, redelivery_window_s * WINDOW_SHARE)
        )

    def backoff(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        delay = self.rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_delay_s)

    def next_delay(
        self,
        attempt: int,
        error: TransientError,
        *,
        now: datetime,
        not_after: datetime | None,
        held_s: float = 0.0,
    ) -> float | None:
        """Seconds until the next delivery, or ``None`` when there is to be no attempt.

        ``held_s``: the target is held that long (a lost answer settling), so the next
        attempt cannot come sooner; the delivery itself still returns within
        ``max_delay_s`` and waits again if the hold is longer.
        """
        if attempt >= self.max_attempts:
            return None
        delay = max(self.backoff(attempt, retry_after=error.retry_after), held_s)
        if not_after is not None and now + timedelta(seconds=delay) > not_after:
            return None
        return min(delay, self.max_delay_s)

    def settle_delay(self, remaining_s: float) -> float:
        """Seconds to wait for a settling target: its remaining hold (plus a little
        jitter, so waiters spread), never beyond ``max_delay_s``."""
        return min(remaining_s + self.rng.uniform(0.0, self.busy_delay_s), self.max_delay_s)

    def unresolved_delay(self) -> float:
        """Seconds an older command waits for a newer one's unknown result (jittered)."""
        return self.rng.uniform(0.5 * self.unresolved_delay_s, 1.5 * self.unresolved_delay_s)

    def busy_delay(self) -> float:
        """Seconds to wait before looking at a busy target again (jittered)."""
        return self.rng.uniform(0.5 * self.busy_delay_s, 1.5 * self.busy_delay_s)
