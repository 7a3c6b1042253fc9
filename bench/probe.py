"""A thread that sends one urgent command at a steady rate and notes when each went."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Prober:
    """Calls ``send(number)`` ``rate`` times a second until stopped; keeps send times.

    ``sent[command_id]`` is the wall time just before the send began: the latency of
    a command is measured from there.
    """

    def __init__(self, send: Callable[[int], str], rate: float, *, limit: int = 100_000) -> None:
        self._send = send
        self._interval = 1.0 / rate
        self._limit = limit
        self._stop = threading.Event()
        self.sent: dict[str, float] = {}
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="urgent-prober", daemon=True)

    def start(self) -> None:
        """Begin sending."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sending and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        next_at = time.monotonic()
        for number in range(self._limit):
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            began = time.time()
            try:
                self.sent[self._send(number)] = began
            except Exception as exc:  # keep probing; the scenario reports the errors
                self.errors.append(repr(exc))
            next_at += self._interval
