"""Fault injection: which fault (if any) a request gets, and how it is delivered.

Dropping a connection from an ASGI app: the app cannot close the socket, so a dropped
answer sends a status line promising a one-byte body and then raises
:class:`InjectedDrop`; the server closes the connection and any client reading the
answer sees a transport error (httpx: ``RemoteProtocolError``), never a usable status.
The status line says 502 so that even a client acting on headers alone cannot take a
drop for a success. ``simulator.server`` filters these exceptions out of the log.
"""

from __future__ import annotations

import random
from email.utils import formatdate

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from subswitch.errors import TransientError
from subswitch.simulator.config import Faults

DROP = "drop"
LOST_RESPONSE = "lost_response"
LATE_APPLY = "late_apply"
SLOW = "slow"
#: Faults that only ever hit writes; a read drawing one gets no fault.
_WRITE_ONLY = frozenset({LOST_RESPONSE, LATE_APPLY})
HTTP_FAULTS: dict[str, int] = {
    "http_429": 429,
    "http_500": 500,
    "http_502": 502,
    "http_503": 503,
    "http_504": 504,
}
_DRAW_ORDER: tuple[tuple[str, str], ...] = (
    (DROP, "p_drop"),
    (LOST_RESPONSE, "p_lost_response"),
    (LATE_APPLY, "p_late_apply"),
    ("http_429", "p_429"),
    ("http_500", "p_500"),
    ("http_502", "p_502"),
    ("http_503", "p_503"),
    ("http_504", "p_504"),
    (SLOW, "p_slow"),
)


class InjectedDrop(TransientError):
    """Raised after a deliberately incomplete answer so the server drops the connection."""


class CutResponse(Response):
    """An answer the client never gets in full; its status is not a real outcome."""


class DroppedResponse(CutResponse):
    """Start an answer, then make the server drop the connection."""

    def __init__(self) -> None:
        super().__init__(status_code=502)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send a head that promises a body which never comes."""
        headers = [(b"content-length", b"1"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 502, "headers": headers})
        raise InjectedDrop


class AbandonedResponse(CutResponse):
    """Nothing to send: the client has already gone."""

    def __init__(self) -> None:
        super().__init__(status_code=499)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send nothing; the server sees the client is gone and closes quietly."""


class FaultInjector:
    """Draws faults and delays from one seeded random stream."""

    def __init__(self, faults: Faults, seed: int | None) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self.faults = faults

    @property
    def faults(self) -> Faults:
        """The faults in force."""
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._faults = faults
        self._fixed_s = faults.latency_ms / 1000.0
        self._jitter_s = faults.jitter_ms / 1000.0
        self.slow_s = faults.slow_ms / 1000.0
        self.late_s = faults.late_apply_ms / 1000.0
        self._late_targets = frozenset(faults.late_apply_targets)
        self._table = [(name, getattr(faults, field)) for name, field in _DRAW_ORDER]
        self._any = any(p > 0.0 for _, p in self._table)

    def reseed(self) -> None:
        """Restart the random stream, so a reset simulator repeats the same faults."""
        self._rng.seed(self._seed)

    def delay_s(self) -> float:
        """The injected delay for one request, in seconds."""
        if self._jitter_s:
            return self._fixed_s + self._jitter_s * self._rng.random()
        return self._fixed_s

    def pick(self, write: bool, target: str | None = None) -> str | None:
        """The fault for one request, or None; lost_response and late_apply hit writes only.

        ``target`` (``org/subscription/kind/id``) of a write on one of the
        ``late_apply_targets`` always gets late_apply, without a draw.
        """
        if write and target in self._late_targets:
            return LATE_APPLY
        if not self._any:
            return None
        draw = self._rng.random()
        for name, probability in self._table:
            if draw < probability:
                return name if write or name not in _WRITE_ONLY else None
            draw -= probability
        return None

    def http_fault(self, name: str, now: float) -> tuple[int, dict[str, str]]:
        """Status and headers of an HTTP-level fault (Retry-After on some 429s)."""
        status = HTTP_FAULTS[name]
        faults = self._faults
        if status != 429 or self._rng.random() >= faults.p_429_retry_after:
            return status, {}
        if faults.retry_after_http_date:
            return status, {"Retry-After": formatdate(now + faults.retry_after_s, usegmt=True)}
        return status, {"Retry-After": str(faults.retry_after_s)}
